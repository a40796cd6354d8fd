"""The sender SDK (``AsyncSender`` / ``Sender``) against our real Zustelldienst over loopback.

One live server per backend (SQLite, PostgreSQL) for the whole module; every test makes its own
clients (and, where it needs them, destinations). The SDK shares the server's ``ManualClock``.
The receiving side is written here with the protocol functions only (``jwe.decrypt``, SHA-512,
``events.sign_set``) and plain HTTP, so the sender is checked against an independent receiver:

* happy paths (0, 1 and several attachments, JSON and XML, async and sync): the receiver
  decrypts, checks every hash and the Zustelldienst's tags and accepts; ``status``/``wait``
  report ``accepted`` with every SET verified and the tags compared;
* pre-encrypted Fachdaten and attachments (token and file) delivered untouched;
* every destination check failing against real destinations — nothing is announced; a stricter
  size limit of the Zustelldienst as a typed 413 error;
* token expiry after 30 minutes (the SDK sees it on the shared clock) and refresh-once-on-401;
* real 429s with ``RateLimit-*`` headers from a server with a low rate limit, retried;
* 503s (with and without ``Retry-After``) on the destination lookup and an upload, retried;
* tampered event logs: a SET signed with a wrong key, a receiver accept with other tags than
  were sent, a ``submit-submission`` with other tags than were sent (ciphertext swapped on the
  way to the Zustelldienst);
* the presets pin: the same application code against ``Environment.local(...)`` and
  ``Environment.test()`` (FITKO's hostnames routed to the live server) differs only in the
  environment name and the credentials;
* an unfetched submission rejected (day 14) and deleted (day 21) by the Zustelldienst, as the
  sender sees it.
"""

from __future__ import annotations

import asyncio
import io
import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from sqlalchemy import func, select, update

from fitconnect_kit.client import (
    AsyncSender,
    Credentials,
    Environment,
    Sender,
    SubmissionBuilder,
)
from fitconnect_kit.client.errors import (
    DataSchemaNotOfferedError,
    DestinationCheckError,
    DestinationInactiveError,
    EncryptionKeyRejectedError,
    EventLogVerificationError,
    InvalidRequestError,
    MetadataVersionNotSupportedError,
    ReplyChannelNotOfferedError,
    ServiceNotOfferedError,
)
from fitconnect_kit.client.sender import SentSubmission, StatusReport
from fitconnect_kit.demo import (
    DEMO_JSON_SCHEMA_URI,
    DEMO_XML_SCHEMA_URI,
    demo_json_data,
    demo_xml_data,
)
from fitconnect_kit.protocol import events
from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, ManualClock
from fitconnect_kit.protocol.events import AuthenticationTags, Event
from fitconnect_kit.protocol.ids import parse_service_identifier
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jws import parse_compact, sign_compact
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.protocol.keygen import generate_key_set
from fitconnect_kit.protocol.metadata import KNOWN_METADATA_VERSIONS
from fitconnect_kit.server.storage.models import Destination, DestinationKey, Submission
from tests.keycache import rsa_key
from tests.support.live import LiveServer
from tests.support.seed import (
    DEFAULT_REGION,
    ClientCredentials,
    SeededDestination,
    shared_live_server,
)

SERVICE_KEY = "99123456760610"
SERVICE = parse_service_identifier(SERVICE_KEY)
OTHER_SERVICE_KEY = "99123456760611"
#: keycache indexes of a second, unrelated CA chain (a trust anchor that is not the destination's).
FOREIGN_KEY_INDEXES = (120, 121, 122)
#: This Zustelldienst is stricter than FIT-Connect's 500 MB (encrypted bytes per attachment).
SERVER_MAX_ATTACHMENT = 5_000_000
#: keycache index of an RSA key that belongs to nobody (for SETs signed with a wrong key).
WRONG_KEY_INDEX = 123

FITKO_TEST_HOSTS = (
    "auth-testing.fit-connect.fitko.dev",
    "submission-api-testing.fit-connect.fitko.dev",
)


# --- the server and its destinations --------------------------------------------------------------


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with shared_live_server(
        request.param,
        tmp_path_factory.mktemp(request.param),
        limits={"max_attachment_size": SERVER_MAX_ATTACHMENT},
    ) as server:
        yield server


def demo_service(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "identifier": SERVICE,
        "submissionSchemas": [
            {"schemaUri": DEMO_JSON_SCHEMA_URI, "mimeType": "application/json"},
            {"schemaUri": DEMO_XML_SCHEMA_URI, "mimeType": "application/xml"},
        ],
        "regions": [DEFAULT_REGION],
        "replyChannels": {"eMail": {}},
    }
    entry.update(changes)
    return entry


def new_destination(live: LiveServer, **options: Any) -> SeededDestination:
    options.setdefault("services", [demo_service()])
    options.setdefault("metadata_versions", KNOWN_METADATA_VERSIONS)
    return live.seed.destination(**options)


@dataclass
class World:
    live: LiveServer
    destination: SeededDestination
    subscriber: ClientCredentials
    _private_keys: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def environment(self) -> Environment:
        return Environment.local(self.live.base_url)

    def private_keys(self, destination: SeededDestination) -> tuple[Any, Any]:
        """Decryption (``kid → key``) and signing key, converted once (RSA checks are slow)."""
        kid = destination.encryption_kid
        if kid not in self._private_keys:
            self._private_keys[kid] = (
                {kid: destination.encryption_private_key},
                destination.signing_private_key,
            )
        return self._private_keys[kid]

    def new_sender_client(self) -> ClientCredentials:
        return self.live.seed.sender()

    def sender(self, creds: ClientCredentials | None = None, **options: Any) -> AsyncSender:
        creds = creds or self.new_sender_client()
        options.setdefault("clock", self.live.clock)
        return AsyncSender(
            options.pop("environment", self.environment),
            Credentials(creds.client_id, creds.client_secret),
            **options,
        )

    def sync_sender(self, creds: ClientCredentials | None = None, **options: Any) -> Sender:
        creds = creds or self.new_sender_client()
        options.setdefault("clock", self.live.clock)
        return Sender(
            options.pop("environment", self.environment),
            Credentials(creds.client_id, creds.client_secret),
            **options,
        )

    def fachverfahren(self, destination: SeededDestination | None = None) -> Fachverfahren:
        destination = destination or self.destination
        decryption, signing = self.private_keys(destination)
        return Fachverfahren(self.live, destination, self.subscriber, decryption, signing)


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    destination = new_destination(live)
    return World(
        live=live,
        destination=destination,
        subscriber=live.seed.subscriber(destination.destination_id),
    )


# --- the receiving side, from protocol functions --------------------------------------------------


@dataclass
class Received:
    submission_id: str
    case_id: str
    metadata: dict[str, Any]
    data: bytes | None
    data_mime_type: str | None
    attachments: dict[str, bytes]
    tags: AuthenticationTags  # of the ciphertexts received
    zd_tags: AuthenticationTags  # of the Zustelldienst's submit-submission


class Fachverfahren:
    """A minimal receiving system: fetch, decrypt, check hashes and tags, post accept."""

    def __init__(
        self,
        live: LiveServer,
        destination: SeededDestination,
        subscriber: ClientCredentials,
        decryption_keys: dict[str, Any],
        signing_key: Any,
    ) -> None:
        self.live = live
        self.destination = destination
        self.subscriber = subscriber
        self.keys = decryption_keys
        self.signing_key = signing_key
        self._token: str | None = None

    def _auth(self) -> dict[str, str]:
        if self._token is None:
            self._token = self.live.seed.token(self.subscriber)
        return {"Authorization": f"Bearer {self._token}"}

    def pending(self) -> list[str]:
        with self.live.client(headers=self._auth()) as http:
            response = http.get(
                "/v1/submissions", params={"destinationId": self.destination.destination_id}
            )
        assert response.status_code == 200, response.text
        return [s["submissionId"] for s in response.json()["submissions"]]

    def receive(self, submission_id: str) -> Received:
        with self.live.client(headers=self._auth()) as http:
            response = http.get(f"/v1/submissions/{submission_id}")
            assert response.status_code == 200, response.text
            body = response.json()
            metadata_part = jwe.decrypt(body["encryptedMetadata"], self.keys)
            assert metadata_part.cty == "application/json"
            metadata = json.loads(metadata_part.plaintext)
            structure = metadata["contentStructure"]
            data: bytes | None = None
            data_mime: str | None = None
            if body.get("encryptedData") is not None:
                data_part = jwe.decrypt(body["encryptedData"], self.keys)
                data, data_mime = data_part.plaintext, data_part.cty
                declared = structure["data"]
                assert declared["hash"] == {"type": "sha512", "content": data_part.plaintext_sha512}
                assert declared["submissionSchema"]["mimeType"] == data_mime
            else:
                assert "data" not in structure
            declared_attachments = {a["attachmentId"]: a for a in structure.get("attachments", [])}
            assert sorted(declared_attachments) == sorted(body["attachments"])
            attachments: dict[str, bytes] = {}
            attachment_jwes: dict[str, str] = {}
            for attachment_id in body["attachments"]:
                download = http.get(f"/v1/submissions/{submission_id}/attachments/{attachment_id}")
                assert download.status_code == 200, download.text
                part = jwe.decrypt(download.text, self.keys)
                entry = declared_attachments[attachment_id]
                assert entry["hash"] == {"type": "sha512", "content": part.plaintext_sha512}
                assert part.cty == entry["mimeType"]
                attachments[attachment_id] = part.plaintext
                attachment_jwes[attachment_id] = download.text
            case_id = body["caseId"]
            log = http.get(f"/v1/cases/{case_id}/events")
            assert log.status_code == 200, log.text
            jwks = http.get("/.well-known/jwks.json").json()
        zd_tags: AuthenticationTags | None = None
        for token in log.json()["eventLog"]:
            st = events.parse_set(token)
            if st.event is Event.SUBMIT_SUBMISSION and st.submission_id == submission_id:
                events.verify_set_with_jwks(token, jwks, expected_issuer=self.live.base_url)
                zd_tags = st.authentication_tags
        assert zd_tags is not None, "no submit-submission in the case's event log"
        tags = AuthenticationTags.from_jwes(
            body["encryptedMetadata"], body.get("encryptedData"), attachment_jwes
        )
        return Received(
            submission_id, case_id, metadata, data, data_mime, attachments, tags, zd_tags
        )

    def post_decision(
        self,
        received: Received,
        *,
        tags: AuthenticationTags | None = None,
        event: Event = Event.ACCEPT_SUBMISSION,
        payload: dict[str, Any] | None = None,
    ) -> str:
        """Post a SET signed with the destination's key (``tags`` default to those received)."""
        body = dict(payload or {})
        body["authenticationTags"] = (tags or received.tags).to_json()
        claims = events.build_set_claims(
            event,
            issuer=self.destination.destination_id,
            subject=events.submission_subject(received.submission_id),
            case_id=received.case_id,
            payload=body,
            clock=self.live.clock,
        )
        token = events.sign_set(claims, self.signing_key, self.destination.signing_kid)
        with self.live.client(headers=self._auth()) as http:
            response = http.post(
                f"/v1/cases/{received.case_id}/events",
                content=token.encode("ascii"),
                headers={"Content-Type": "application/jose"},
            )
        assert response.status_code == 204, response.text
        return token

    def accept(self, submission_id: str) -> Received:
        """Receive with every check and accept with the tags received (which must be the ZD's)."""
        received = self.receive(submission_id)
        assert received.tags == received.zd_tags
        self.post_decision(received)
        return received


# --- server-side facts ----------------------------------------------------------------------------


def submissions_of(live: LiveServer, sender: ClientCredentials) -> int:
    async def run() -> int:
        async with live.zd.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(Submission)
                .where(Submission.sender_client_id == sender.client_id)
            )
            return int(count or 0)

    return live.run(run())


def stored_status(live: LiveServer, submission_id: str) -> str:
    async def run() -> str:
        async with live.zd.sessions() as session:
            row = await session.get(Submission, submission_id)
            assert row is not None
            return row.status

    return live.run(run())


# --- transports -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exchange:
    method: str
    host: str
    path: str
    status: int
    authorization: str | None = field(default=None, repr=False)


class Recorder(httpx.AsyncBaseTransport):
    """Passes requests to the real network transport and notes what was asked and answered.

    ``route`` may rewrite a request before it is sent (e.g. FITKO hostnames → the live server);
    the exchange is recorded with the host the SDK asked for.
    """

    def __init__(self, route: Callable[[httpx.Request], httpx.Request] | None = None) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.route = route
        self.exchanges: list[Exchange] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        asked = request
        if self.route is not None:
            request = self.route(request)
        response = await self.inner.handle_async_request(request)
        self.exchanges.append(
            Exchange(
                asked.method,
                asked.url.host,
                asked.url.path,
                response.status_code,
                asked.headers.get("authorization"),
            )
        )
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def statuses(self, method: str, path_pattern: str) -> list[int]:
        return [
            e.status
            for e in self.exchanges
            if e.method == method and re.fullmatch(path_pattern, e.path)
        ]


def route_to(live: LiveServer) -> Callable[[httpx.Request], httpx.Request]:
    """Send requests for FITKO's test hostnames to the live server (same path and query)."""
    target = httpx.URL(live.base_url)

    def route(request: httpx.Request) -> httpx.Request:
        assert request.url.host in FITKO_TEST_HOSTS, f"unexpected host {request.url.host}"
        url = request.url.copy_with(scheme=target.scheme, host=target.host, port=target.port)
        return httpx.Request(
            request.method,
            url,
            headers=request.headers,
            stream=request.stream,
            extensions=request.extensions,
        )

    return route


# --- building submissions -------------------------------------------------------------------------


def build_submission(
    destination: SeededDestination,
    kind: str,
    attachments: list[tuple[str, bytes]],
    tmp_path: Path,
    *,
    json_schema_uri: str = DEMO_JSON_SCHEMA_URI,
    reply_email: bool = True,
) -> SubmissionBuilder:
    """JSON or XML demo data and attachments from bytes, a file and a stream (in turn)."""
    builder = SubmissionBuilder(destination.destination_id).service(SERVICE_KEY, "Testleistung")
    if kind == "json":
        builder.json_data(demo_json_data(), schema_uri=json_schema_uri)
    else:
        builder.xml_data(demo_xml_data(), schema_uri=DEMO_XML_SCHEMA_URI)
    for index, (name, content) in enumerate(attachments):
        if index % 3 == 0:
            builder.attachment(content, filename=name, purpose="form" if index == 0 else "report")
        elif index % 3 == 1:
            path = tmp_path / name
            path.write_bytes(content)
            builder.attachment(path, description=f"Anlage {index}")
        else:
            builder.attachment(io.BytesIO(content), filename=name)
    return builder.reply_email("erika.mustermann@example.org") if reply_email else builder


def attachment_contents(count: int) -> list[tuple[str, bytes]]:
    names = ["antrag.pdf", "nachweis.txt", "foto.jpg", "anlage.bin"]
    return [
        (names[i % len(names)], (f"Anlage {i} ".encode() * 3000)[: 1000 + 7919 * i])
        for i in range(count)
    ]


def check_accepted(report: StatusReport, sent: SentSubmission, destination_id: str) -> None:
    assert report.status is SubmissionStatus.ACCEPTED
    assert report.is_final
    assert report.tags_checked
    assert report.submission_id == sent.submission_id
    assert report.destination_id == destination_id
    assert report.authentication_tags == sent.authentication_tags
    assert report.receiver_tags == sent.authentication_tags
    names = [e.name for e in report.events]
    assert names[:2] == ["create-submission", "submit-submission"]
    assert names[-1] == "accept-submission"
    assert "notify-submission" in names
    assert {e.signer for e in report.events if e.name != "accept-submission"} == {"zustelldienst"}
    assert report.events[-1].signer == "destination"
    assert report.events[-1].issuer == destination_id


# --- happy paths ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("api", "kind", "count"),
    [("async", "json", 0), ("async", "xml", 3), ("sync", "json", 1), ("sync", "xml", 2)],
)
def test_send_receive_accept_and_verified_status(
    world: World, api: str, kind: str, count: int, tmp_path: Path
) -> None:
    live, dest = world.live, world.destination
    contents = attachment_contents(count)
    submission = build_submission(dest, kind, contents, tmp_path).build()
    progress: dict[str, tuple[int, int]] = {}

    def on_progress(attachment_id: str, done: int, total: int) -> None:
        progress[attachment_id] = (done, total)

    fachverfahren = world.fachverfahren()
    if api == "async":

        async def flow() -> tuple[SentSubmission, StatusReport, StatusReport, StatusReport]:
            async with world.sender() as sender:
                sent = await sender.send(submission, progress=on_progress)
                before = await sender.status(sent)
                await asyncio.to_thread(fachverfahren.accept, sent.submission_id)
                after = await sender.status(sent)
                waited = await sender.wait(sent, timeout=5)
                return sent, before, after, waited

        sent, before, after, waited = asyncio.run(flow())
    else:
        # wait() polls on the system clock while the receiver decides in the background
        with world.sync_sender(clock=SYSTEM_CLOCK) as sender:
            sent = sender.send(submission, progress=on_progress)
            before = sender.status(sent)
            decider = threading.Thread(target=fachverfahren.accept, args=(sent.submission_id,))
            decider.start()
            waited = sender.wait(sent, timeout=30, poll_interval=0.2)
            decider.join()
            after = sender.status(sent)
            by_case = sender.status(sent.case_id)
            by_submission = sender.status(submission_id=sent.submission_id)
        assert by_case.status is SubmissionStatus.ACCEPTED
        assert by_case.destination_id == dest.destination_id  # from the verified receiver SET
        assert by_submission.status is SubmissionStatus.ACCEPTED
        assert by_submission.case_id == sent.case_id

    assert before.status is SubmissionStatus.SUBMITTED
    assert not before.tags_checked
    assert before.authentication_tags == sent.authentication_tags
    check_accepted(after, sent, dest.destination_id)
    check_accepted(waited, sent, dest.destination_id)
    assert stored_status(live, sent.submission_id) == "accepted"
    assert sent.metadata_version == KNOWN_METADATA_VERSIONS[-1]  # the highest common one
    assert len(sent.attachment_ids) == count
    assert set(sent.authentication_tags.attachments) == set(sent.attachment_ids)
    # what the receiver decrypted is exactly what was sent
    received = fachverfahren.receive(sent.submission_id)
    assert [received.attachments[a] for a in sent.attachment_ids] == [c for _, c in contents]
    expected_data = dumps_compact(demo_json_data()) if kind == "json" else demo_xml_data()
    assert received.data == expected_data
    assert received.data_mime_type == f"application/{kind}"
    assert received.metadata["replyChannel"] == {
        "eMail": {"address": "erika.mustermann@example.org"}
    }
    assert received.metadata == sent.metadata
    for attachment_id in sent.attachment_ids:
        done, total = progress[attachment_id]
        assert done == total > 0


def test_pre_encrypted_parts_are_delivered_as_they_are(world: World, tmp_path: Path) -> None:
    """Fachdaten and attachments encrypted elsewhere (e.g. in the browser): token text and a
    file with a trailing newline; the SDK builds and encrypts only the metadata."""
    key = world.destination.keys.encryption_public
    data = dumps_compact(demo_json_data())
    data_jwe = jwe.encrypt(data, key, cty="application/json")
    form, note = b"%PDF-1.4 im Browser verschluesselt " * 50, b"Nachweis " * 500
    form_jwe = jwe.encrypt(form, key, cty="application/pdf")
    note_jwe = jwe.encrypt(note, key, cty="text/plain")
    note_file = tmp_path / "nachweis.jwe"
    note_file.write_text(note_jwe.token + "\n", encoding="ascii")
    submission = (
        SubmissionBuilder(world.destination.destination_id)
        .service(SERVICE_KEY, "Testleistung")
        .encrypted_data(
            data_jwe.token, sha512_hex=data_jwe.plaintext_sha512, schema_uri=DEMO_JSON_SCHEMA_URI
        )
        .encrypted_attachment(
            form_jwe.token,
            sha512_hex=form_jwe.plaintext_sha512,
            mime_type="application/pdf",
            filename="antrag.pdf",
            purpose="form",
        )
        .encrypted_attachment(
            note_file, sha512_hex=note_jwe.plaintext_sha512, mime_type="text/plain"
        )
        .build()
    )
    with world.sync_sender() as sender:
        sent = sender.send(submission)
        received = world.fachverfahren().accept(sent.submission_id)
        report = sender.status(sent)
    check_accepted(report, sent, world.destination.destination_id)
    tags = (form_jwe.authentication_tag, note_jwe.authentication_tag)
    assert sent.authentication_tags == AuthenticationTags(
        metadata=received.tags.metadata,
        data=data_jwe.authentication_tag,  # the ciphertexts went through untouched
        attachments=dict(zip(sent.attachment_ids, tags, strict=True)),
    )
    assert received.data == data
    assert [received.attachments[a] for a in sent.attachment_ids] == [form, note]


async def test_a_stricter_zustelldienst_limit_is_a_typed_error_with_a_note(world: World) -> None:
    """FIT-Connect allows 500 MB; this Zustelldienst only 5 MB: the SDK's check passes, the
    upload gets a 413 problem, and the error says which submission stays incomplete."""
    builder = SubmissionBuilder(world.destination.destination_id).service(SERVICE_KEY, "x")
    builder.attachment(b"\x00" * 4_000_000, filename="gross.bin")  # 5.3 MB encrypted
    creds = world.new_sender_client()
    async with world.sender(creds) as sender:
        with pytest.raises(InvalidRequestError) as info:
            await sender.send(builder.build())
    assert info.value.status == 413
    assert info.value.problem_type is not None
    assert info.value.problem_type.endswith("/attachment-too-large")
    assert "uploading attachment gross.bin" in str(info.value)
    (note,) = info.value.__notes__
    assert "stays incomplete and is deleted by the Zustelldienst after one day" in note
    assert submissions_of(world.live, creds) == 1  # announced, never submitted


# --- destination checks ---------------------------------------------------------------------------


def _foreign_ca(live: LiveServer) -> x509.Certificate:
    """The root of another PKI: a trust anchor the destination's chain does not end in."""
    keys = iter([rsa_key(i) for i in FOREIGN_KEY_INDEXES])
    foreign = generate_key_set(
        common_name="Fremde Verwaltungs-PKI", clock=live.clock, key_factory=lambda: next(keys)
    )
    return foreign.ca_certificate


def _break_key(live: LiveServer, destination: SeededDestination, **changes: Any) -> None:
    """Change the stored encryption JWK behind the server's back (admin would refuse it)."""

    async def run() -> None:
        async with live.zd.sessions() as session, session.begin():
            row = await session.get(
                DestinationKey, (destination.destination_id, destination.encryption_kid)
            )
            assert row is not None
            jwk = dict(row.jwk)
            for name, value in changes.items():
                if value is None:
                    jwk.pop(name, None)
                else:
                    jwk[name] = value
            row.jwk = jwk

    live.run(run())


def _point_encryption_kid(live: LiveServer, destination: SeededDestination, kid: str) -> None:
    async def run() -> None:
        async with live.zd.sessions() as session, session.begin():
            await session.execute(
                update(Destination)
                .where(Destination.destination_id == destination.destination_id)
                .values(encryption_kid=kid)
            )

    live.run(run())


CHECK_CASES = [
    "inactive",
    "service-not-offered",
    "schema-not-offered",
    "metadata-version-unknown",
    "metadata-version-too-old-for-reply-channel",
    "reply-channel-not-offered",
    "key-untrusted-under-strict-policy",
    "key-breaks-rules",
    "key-missing",
]


@pytest.mark.parametrize("case", CHECK_CASES)
async def test_failing_destination_check_announces_nothing(
    world: World, case: str, tmp_path: Path
) -> None:
    live = world.live
    destination = world.destination
    builder = build_submission(
        destination, "json", attachment_contents(1), tmp_path, reply_email=False
    )
    options: dict[str, Any] = {}
    expected: type[DestinationCheckError]
    if case == "inactive":
        destination = new_destination(live, status="inactive")
        builder.destination(destination.destination_id)
        expected, words = DestinationInactiveError, "'inactive'"
    elif case == "service-not-offered":
        builder.service(OTHER_SERVICE_KEY, "Andere Leistung")
        expected, words = ServiceNotOfferedError, "does not offer service"
    elif case == "schema-not-offered":
        builder = build_submission(
            destination, "json", [], tmp_path, json_schema_uri="urn:example:other-schema:1.0"
        )
        expected, words = DataSchemaNotOfferedError, "urn:example:other-schema:1.0"
    elif case == "metadata-version-unknown":
        destination = new_destination(live, metadata_versions=("2.0.0",))
        builder.destination(destination.destination_id)
        expected, words = MetadataVersionNotSupportedError, "2.0.0"
    elif case == "metadata-version-too-old-for-reply-channel":
        destination = new_destination(
            live,
            services=[demo_service(replyChannels={"eMail": {}, "fitConnect": {}})],
            metadata_versions=("1.0.0",),
        )
        builder.destination(destination.destination_id).reply_fitconnect(
            ["urn:example:process-standard"]
        )
        expected, words = MetadataVersionNotSupportedError, "FIT-Connect reply channel"
    elif case == "reply-channel-not-offered":
        builder.reply_demail("erika.mustermann@example.de-mail.de")
        expected, words = ReplyChannelNotOfferedError, "'deMail'"
    elif case == "key-untrusted-under-strict-policy":
        options["environment"] = world.environment.replace(trust="strict").with_trust_anchors(
            _foreign_ca(live)
        )
        expected, words = EncryptionKeyRejectedError, "not acceptable"
    elif case == "key-breaks-rules":
        destination = new_destination(live)
        _break_key(live, destination, alg="RSA-OAEP", x5c=None)
        builder.destination(destination.destination_id)
        expected, words = EncryptionKeyRejectedError, "alg"
    else:
        destination = new_destination(live)
        _point_encryption_kid(live, destination, "no-such-key-0001")
        builder.destination(destination.destination_id)
        expected, words = EncryptionKeyRejectedError, "has no such key"
    creds = world.new_sender_client()
    async with world.sender(creds, **options) as sender:
        with pytest.raises(expected) as info:
            await sender.send(builder.build())
        report = await sender.inspect_destination(destination.destination_id, service=SERVICE_KEY)
    assert words in str(info.value), str(info.value)
    assert info.value.destination_id == destination.destination_id
    assert info.value.cli_exit_code == 3
    assert submissions_of(live, creds) == 0
    if case.startswith("key-"):
        assert not report.key_valid
        assert not report.ok


async def test_strict_policy_accepts_a_chain_to_a_configured_anchor(world: World) -> None:
    """The positive control of the strict case above: the destination's own CA as anchor."""
    environment = world.environment.replace(trust="strict").with_trust_anchors(
        world.destination.keys.ca_certificate
    )
    async with world.sender(environment=environment) as sender:
        checked = await sender.check_destination(
            world.destination.destination_id,
            service=SERVICE_KEY,
            data_schema=(DEMO_JSON_SCHEMA_URI, "application/json"),
            reply_channel="eMail",
        )
    assert checked.encryption_kid == world.destination.encryption_kid


# --- tokens ---------------------------------------------------------------------------------------


async def test_token_expiry_after_30_minutes_is_seen_by_the_sdk(world: World) -> None:
    live = world.live
    recorder = Recorder()
    async with world.sender(transport=recorder) as sender:
        await sender.get_destination(world.destination.destination_id)
        first = [e.authorization for e in recorder.exchanges if e.path.startswith("/v1/")]
        live.manual_clock.advance(timedelta(minutes=31))
        # The server no longer takes the first token ...
        with live.client() as http:
            refused = http.post(
                "/v1/submissions", headers={"Authorization": first[0] or ""}, json={}
            )
        assert refused.status_code == 401
        # ... and the SDK, on the same clock, fetches a new one before its next call.
        report = await sender.status(
            await sender.send(build_submission(world.destination, "json", [], Path()).build())
        )
    assert report.status is SubmissionStatus.SUBMITTED
    assert recorder.statuses("POST", "/token") == [200, 200]
    assert 401 not in [e.status for e in recorder.exchanges]
    later = [e.authorization for e in recorder.exchanges if e.path == "/v1/submissions"]
    assert later
    assert later[0] != first[0]


class ClockJump(Recorder):
    """Moves the server's clock 31 minutes on right after the first answer to ``method path``."""

    def __init__(self, live: LiveServer, method: str, path_pattern: str) -> None:
        super().__init__()
        self.live, self.method, self.path_pattern = live, method, path_pattern
        self.jumped = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if (
            not self.jumped
            and request.method == self.method
            and re.fullmatch(self.path_pattern, request.url.path)
        ):
            self.live.manual_clock.advance(timedelta(minutes=31))
            self.jumped = True
        return response


@pytest.mark.parametrize("refused", ["destination", "attachment-upload"])
async def test_a_refused_token_is_refreshed_once_and_the_call_repeated(
    world: World, refused: str
) -> None:
    """The SDK's own clock says the token is fresh, the server's clock says it expired (clock
    skew): the Zustelldienst answers 401, the SDK fetches a new token once and repeats the call
    — for an attachment upload that means encrypting the stream again."""
    live = world.live
    destination_path = rf"/v1/destinations/{world.destination.destination_id}"
    upload_path = r"/v1/submissions/[^/]+/attachments/[^/]+"
    if refused == "destination":
        recorder = ClockJump(live, "GET", destination_path)
    else:
        recorder = ClockJump(live, "POST", "/v1/submissions")
    sender_clock = ManualClock(live.clock.now())  # does not move
    async with world.sender(transport=recorder, clock=sender_clock) as sender:
        if refused == "destination":
            await sender.get_destination(world.destination.destination_id)
        submission = build_submission(
            world.destination, "xml", [("gross.bin", b"\x00" * 3_000_000)], Path()
        ).build()
        sent = await sender.send(submission)
        report = await sender.status(sent)
    assert report.status is SubmissionStatus.SUBMITTED
    assert report.authentication_tags == sent.authentication_tags  # the retry's ciphertext
    assert recorder.statuses("POST", "/token") == [200, 200]
    if refused == "destination":
        # first call with the first token; after the jump: 401, new token, the same call again
        assert recorder.statuses("GET", destination_path) == [200, 401, 200]
        assert recorder.statuses("PUT", upload_path) == [204]
    else:
        assert recorder.statuses("GET", destination_path) == [200]
        assert recorder.statuses("PUT", upload_path) == [401, 204]
    assert [e.status for e in recorder.exchanges].count(401) == 1


# --- rate limiting --------------------------------------------------------------------------------


def test_real_429_with_ratelimit_headers_is_retried(tmp_path: Path) -> None:
    """A server with a low per-client rate limit (1 request/s, burst 3; in-memory middleware,
    the same for every database backend, so SQLite only). The first three calls (destination,
    key, announce) use up the burst, so the attachment upload — a streamed body — gets a real
    429; the SDK waits as the server says (``Retry-After``), encrypts again and succeeds."""
    settings = {"rate_limit": {"requests_per_second": 1, "burst": 3}}
    with shared_live_server("sqlite", tmp_path, **settings) as live:
        destination = new_destination(live)
        creds = live.seed.sender()
        slept: list[float] = []

        async def sleep(seconds: float) -> None:
            slept.append(seconds)
            await asyncio.sleep(seconds)

        refused: list[tuple[str, httpx.Headers]] = []

        class Watch(Recorder):
            async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
                response = await super().handle_async_request(request)
                if response.status_code == 429:
                    refused.append((request.url.path, response.headers))
                return response

        recorder = Watch()

        async def flow() -> SentSubmission:
            async with AsyncSender(
                Environment.local(live.base_url),
                Credentials(creds.client_id, creds.client_secret),
                transport=recorder,
                clock=live.clock,
                sleep=sleep,
            ) as sender:
                submission = build_submission(
                    destination, "json", attachment_contents(1), tmp_path
                ).build()
                return await sender.send(submission)

        sent = asyncio.run(flow())
        assert stored_status(live, sent.submission_id) == "submitted"
    paths = [path for path, _ in refused]
    assert paths, "the rate limit never struck"
    assert paths[0].endswith(f"/attachments/{sent.attachment_ids[0]}")
    for _, headers in refused:
        assert headers["RateLimit-Limit"] == "3"
        assert headers["RateLimit-Remaining"] == "0"
        assert int(headers["RateLimit-Reset"]) >= 1
    # the SDK waited exactly as long as each answer asked, not its own backoff
    assert slept == [float(headers["Retry-After"]) for _, headers in refused]
    assert recorder.statuses("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+") == [429, 204]


class Unavailable(Recorder):
    """Answers the first request to each ``(method, path pattern)`` itself with a 503 (with
    ``Retry-After`` when given) — a proxy in front of the Zustelldienst that is briefly
    overloaded; every other request goes on to the real server. A refused request body is read
    in full first (the upload happened, the answer was a 503)."""

    def __init__(self, targets: list[tuple[str, str]], retry_after: str | None) -> None:
        super().__init__()
        self.targets = list(targets)
        self.retry_after = retry_after
        self.refused_bodies: dict[str, bytes] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        for method, pattern in self.targets:
            if request.method == method and re.fullmatch(pattern, request.url.path):
                self.targets.remove((method, pattern))
                self.refused_bodies[request.url.path] = await request.aread()
                self.exchanges.append(
                    Exchange(
                        request.method,
                        request.url.host,
                        request.url.path,
                        503,
                        request.headers.get("authorization"),
                    )
                )
                headers = {"Content-Type": "application/problem+json"}
                if self.retry_after is not None:
                    headers["Retry-After"] = self.retry_after
                problem = {
                    "type": "https://schema.fitko.de/fit-connect/submission-api/problems/"
                    "service-unavailable",
                    "title": "Service Unavailable",
                    "status": 503,
                }
                return httpx.Response(503, headers=headers, content=dumps_compact(problem))
        return await super().handle_async_request(request)


@pytest.mark.parametrize("retry_after", [None, "3"], ids=["backoff", "retry-after"])
async def test_503_on_destination_and_upload_is_retried_against_the_live_server(
    world: World, retry_after: str | None, tmp_path: Path
) -> None:
    """The first ``GET /v1/destinations/{id}`` and the first attachment ``PUT`` get a 503 (both
    idempotent, so the SDK repeats them: after ``Retry-After`` if given, else after its
    jittered backoff); the announcement is not repeated, the upload is encrypted again, and the
    submission goes through to ``accepted`` as if nothing had happened."""
    destination_path = rf"/v1/destinations/{world.destination.destination_id}"
    upload_path = r"/v1/submissions/[^/]+/attachments/[^/]+"
    transport = Unavailable([("GET", destination_path), ("PUT", upload_path)], retry_after)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)  # the live server needs no real pause

    creds = world.new_sender_client()
    async with world.sender(creds, transport=transport, sleep=sleep, rand=lambda: 0.5) as sender:
        sent = await sender.send(
            build_submission(world.destination, "json", attachment_contents(1), tmp_path).build()
        )
        submitted = await sender.status(sent)
        await asyncio.to_thread(world.fachverfahren().accept, sent.submission_id)
        accepted = await sender.status(sent)
    assert transport.statuses("GET", destination_path) == [503, 200]
    assert transport.statuses("PUT", upload_path) == [503, 204]
    assert transport.statuses("POST", "/v1/submissions") == [201]  # announced once
    assert [e.status for e in transport.exchanges].count(503) == 2
    # Retry-After (seconds) replaces the backoff; without it: min(30, 0.5 · 2⁰) · rand = 0.25
    expected_delay = float(retry_after) if retry_after is not None else 0.25
    assert slept == [expected_delay, expected_delay]
    assert submissions_of(world.live, creds) == 1
    assert submitted.status is SubmissionStatus.SUBMITTED
    assert submitted.authentication_tags == sent.authentication_tags  # the retry's ciphertext
    check_accepted(accepted, sent, world.destination.destination_id)
    assert stored_status(world.live, sent.submission_id) == "accepted"
    # The refused upload was a complete ciphertext; the retry encrypted afresh.
    (attachment_id,) = sent.attachment_ids
    refused = transport.refused_bodies[
        f"/v1/submissions/{sent.submission_id}/attachments/{attachment_id}"
    ]
    refused_tag = refused.decode("ascii").rsplit(".", 1)[1]
    assert refused_tag != sent.authentication_tags.attachments[attachment_id]


# --- tampered event logs --------------------------------------------------------------------------


class EventLogTamperer(Recorder):
    """Replaces, in ``GET …/events`` answers, the SET of one event by one re-signed with a key
    that is not the issuer's (same header, same claims)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event
        self.replaced = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method != "GET" or not request.url.path.endswith("/events"):
            return response
        body = json.loads(await response.aread())
        await response.aclose()
        tokens = []
        for token in body["eventLog"]:
            if events.parse_set(token).event is self.event:
                parsed = parse_compact(token)
                token = sign_compact(parsed.header, parsed.payload, rsa_key(WRONG_KEY_INDEX))
                self.replaced += 1
            tokens.append(token)
        body["eventLog"] = tokens
        return httpx.Response(200, json=body)


@pytest.mark.parametrize("event", [Event.SUBMIT_SUBMISSION, Event.ACCEPT_SUBMISSION])
async def test_a_set_signed_with_a_wrong_key_is_detected(world: World, event: Event) -> None:
    tamperer = EventLogTamperer(event)
    creds = world.new_sender_client()
    async with world.sender(creds, transport=tamperer) as sender:
        sent = await sender.send(build_submission(world.destination, "json", [], Path()).build())
        await asyncio.to_thread(world.fachverfahren().accept, sent.submission_id)
        with pytest.raises(EventLogVerificationError) as info:
            await sender.status(sent)
        with pytest.raises(EventLogVerificationError):
            await sender.wait(sent, timeout=5)
    assert tamperer.replaced == 2
    assert len(info.value.problems) == 1
    problem = info.value.problems[0]
    assert event.short_name in problem, problem
    assert "signature" in problem.lower(), problem
    assert info.value.cli_exit_code == 3
    # The untouched log verifies: the failure was the tampering, not the submission.
    async with world.sender(creds) as clean:
        assert (await clean.status(sent)).status is SubmissionStatus.ACCEPTED


async def test_receiver_accept_with_other_tags_than_sent_is_detected(world: World) -> None:
    fachverfahren = world.fachverfahren()
    async with world.sender() as sender:
        sent = await sender.send(
            build_submission(world.destination, "json", attachment_contents(1), Path()).build()
        )
        received = await asyncio.to_thread(fachverfahren.receive, sent.submission_id)
        foreign = jwe.encrypt(b"{}", world.destination.keys.encryption_public).authentication_tag
        wrong = AuthenticationTags(
            metadata=foreign, data=received.tags.data, attachments=received.tags.attachments
        )
        # validly signed: the Zustelldienst stores it (it does not compare tags)
        await asyncio.to_thread(fachverfahren.post_decision, received, tags=wrong)
        assert stored_status(world.live, sent.submission_id) == "accepted"
        with pytest.raises(EventLogVerificationError) as info:
            await sender.status(sent)
        with pytest.raises(EventLogVerificationError):
            await sender.wait(sent, timeout=5)
    message = str(info.value)
    assert "accept-submission" in message
    assert "other authentication tags than were sent (metadata)" in message
    assert "not delivered" in message


class SubmitTamperer(Recorder):
    """A man in the middle that swaps the encrypted Fachdaten in the submit request for
    another ciphertext (valid JWE for the destination's key): the Zustelldienst records the tag
    of what it got."""

    def __init__(self, replacement: str) -> None:
        super().__init__()
        self.replacement = replacement

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and re.fullmatch(r"/v1/submissions/[^/]+", request.url.path):
            body = json.loads(await request.aread())
            body["encryptedData"] = self.replacement
            request = httpx.Request(
                "PUT",
                request.url,
                headers={k: v for k, v in request.headers.items() if k != "content-length"},
                content=dumps_compact(body),
                extensions=request.extensions,
            )
        return await super().handle_async_request(request)


async def test_zustelldienst_tags_other_than_sent_are_detected(world: World) -> None:
    replacement = jwe.encrypt(
        dumps_compact(demo_json_data("Max Mustermann")),
        world.destination.keys.encryption_public,
        cty="application/json",
    )
    async with world.sender(transport=SubmitTamperer(replacement.token)) as sender:
        sent = await sender.send(build_submission(world.destination, "json", [], Path()).build())
        with pytest.raises(EventLogVerificationError) as info:
            await sender.status(sent)
    assert "Zustelldienst recorded other authentication tags than this sender sent (data)" in (
        str(info.value)
    )
    # The receiver sees the swapped data: the hash in the metadata gives it away.
    with pytest.raises(AssertionError):
        world.fachverfahren().receive(sent.submission_id)


# --- presets pin ----------------------------------------------------------------------------------


async def send_application(
    environment: Environment, credentials: Credentials, destination_id: str, **hooks: Any
) -> tuple[SentSubmission, StatusReport]:
    """What an Onlinedienst does — written once, run against any environment."""
    async with AsyncSender(environment, credentials, **hooks) as sender:
        sent = await sender.send(
            SubmissionBuilder(destination_id)
            .service(SERVICE_KEY, "Testleistung")
            .json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
            .attachment(b"%PDF-1.4 Antrag", filename="antrag.pdf", purpose="form")
            .reply_email("erika.mustermann@example.org")
            .build()
        )
        return sent, await sender.status(sent)


def _shape(exchanges: list[Exchange]) -> list[tuple[str, str, int]]:
    uuid = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    return [(e.method, uuid.sub("<id>", e.path), e.status) for e in exchanges]


async def test_switching_from_local_to_test_changes_only_name_and_credentials(
    world: World,
) -> None:
    live, dest = world.live, world.destination
    local_client, test_client = live.seed.sender(), live.seed.sender()  # "from the SSP"
    local = Recorder()
    via_fitko = Recorder(route=route_to(live))

    local_sent, local_report = await send_application(
        Environment.local(live.base_url),
        Credentials(local_client.client_id, local_client.client_secret),
        dest.destination_id,
        transport=local,
        clock=live.clock,
    )
    test_sent, test_report = await send_application(
        Environment.test(),
        Credentials(test_client.client_id, test_client.client_secret),
        dest.destination_id,
        transport=via_fitko,
        clock=live.clock,
    )

    assert local_report.status is test_report.status is SubmissionStatus.SUBMITTED
    assert [e.name for e in local_report.events] == [e.name for e in test_report.events]
    assert local_sent.metadata_version == test_sent.metadata_version
    # The same requests in the same order with the same answers; only the hosts differ.
    assert _shape(local.exchanges) == _shape(via_fitko.exchanges)
    assert {e.host for e in local.exchanges} == {"127.0.0.1"}
    assert {(e.host, e.path) for e in via_fitko.exchanges if e.method == "POST"} >= {
        ("auth-testing.fit-connect.fitko.dev", "/token"),
        ("submission-api-testing.fit-connect.fitko.dev", "/v1/submissions"),
    }
    assert ("submission-api-testing.fit-connect.fitko.dev", "/.well-known/jwks.json") in {
        (e.host, e.path) for e in via_fitko.exchanges
    }
    # ... and each ran as its own client.
    assert submissions_of(live, local_client) == submissions_of(live, test_client) == 1


# --- the Zustelldienst decides (keep this last: it moves the module's clock by weeks) -------------


async def test_unfetched_submission_rejected_by_the_zustelldienst_after_14_days(
    world: World,
) -> None:
    live = world.live
    async with world.sender() as sender:
        sent = await sender.send(
            build_submission(world.destination, "json", attachment_contents(1), Path()).build()
        )
        live.manual_clock.advance(timedelta(days=14, minutes=1))
        await asyncio.to_thread(live.run_worker, "deadlines")
        rejected = await sender.status(sent)
        live.manual_clock.advance(timedelta(days=7))
        await asyncio.to_thread(live.run_worker, "deadlines")
        deleted = await sender.wait(sent, timeout=5)
    assert rejected.status is SubmissionStatus.REJECTED
    assert rejected.is_final
    assert [e.name for e in rejected.events][-1] == "reject-submission"
    assert rejected.events[-1].signer == "zustelldienst"  # verified with the ZD's JWKS
    ((problem_type, instance),) = [(p.type, p.instance) for p in rejected.problems]
    assert problem_type.endswith("/submission-expired")
    assert instance == "submission"
    assert not rejected.tags_checked  # no receiver ever confirmed anything
    assert deleted.content_deleted
    assert [e.name for e in deleted.events][-1] == "delete-submission"
