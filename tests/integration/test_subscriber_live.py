"""The subscriber SDK against our real Zustelldienst over loopback (SQLite and PostgreSQL).

* Happy path: the sender SDK sends JSON and XML data with 0, 1 and several attachments; the
  subscriber receives, verifies and accepts; the sender's verified status is ``accepted`` with
  the receiver's tags checked.
* The evil sender (``tests/support/evil_sender.py``) breaks every single check; each breakage
  produces exactly its problem (type + instance), the subscriber posts the rejection, and the
  sender's status (``AsyncSender.status``) shows that rejection with those problems.
* Listing with pagination, the verified event log, and the worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fitconnect_kit.client import (
    AsyncSender,
    AsyncSubscriber,
    Credentials,
    Environment,
    SchemaRegistry,
    SubmissionBuilder,
)
from fitconnect_kit.client.keystore import DecryptionKeys, SigningKey
from fitconnect_kit.client.worker import Stage, SubscriberWorker
from fitconnect_kit.demo import (
    DEMO_JSON_SCHEMA_URI,
    DEMO_XML_SCHEMA_URI,
    demo_json_data,
    demo_xml_data,
)
from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.ids import parse_service_identifier
from fitconnect_kit.protocol.jsonutil import dumps_compact
from tests.support.evil_sender import (
    EXPECTED,
    EvilAttachment,
    EvilPlan,
    EvilSender,
    TamperingTransport,
    build,
    expected_problems,
    problem_pairs,
)
from tests.support.live import LiveServer
from tests.support.seed import (
    DEFAULT_REGION,
    DEFAULT_SERVICE_KEY,
    ClientCredentials,
    SeededDestination,
    shared_live_server,
)

SERVICE = parse_service_identifier(DEFAULT_SERVICE_KEY)
PDF = EvilAttachment(b"%PDF-1.4 Antrag " * 50, "antrag.pdf", "application/pdf", "form")
NACHWEIS = EvilAttachment(b"Nachweis", "nachweis.txt", "text/plain")

SWITCHES: dict[str, dict[str, Any]] = {
    "wrong_data_hash": {"wrong_data_hash": True},
    "swap_attachments": {"swap_attachments": True, "attachments": (PDF, NACHWEIS)},
    "wrong_tag:metadata": {"wrong_tag": "metadata"},
    "wrong_tag:data": {"wrong_tag": "data"},
    "wrong_tag:attachment": {"wrong_tag": "attachment"},
    "metadata_version": {"metadata_version": "1.2.0"},
    "wrong_service": {"wrong_service": "urn:de:fim:leika:leistung:99123456760611"},
    "bad_xml": {
        "bad_xml": True,
        "data_schema_uri": DEMO_XML_SCHEMA_URI,
        "data_mime_type": "application/xml",
    },
    "schema_invalid_json": {"schema_invalid_json": b'{"antragsteller":{"vorname":""}}'},
    # the destination offers the demo schemas only (and this URI is in no registry either)
    "unoffered_data_schema": {"unoffered_data_schema": "urn:example:not-offered-schema:1.0"},
    "metadata_schema_violation": {"metadata_schema_violation": True},
    "broken_submit_set": {"broken_submit_set": True},
    "undecryptable:metadata": {"undecryptable": "metadata"},
    "undecryptable:data": {"undecryptable": "data"},
    "undecryptable:attachment": {"undecryptable": "attachment"},
    "missing_data": {"missing_data": True},
    "reply_channel": {"reply_channel": {"fink": {"finkPostfachRef": "hh/by/12345"}}},
    "extra_attachment_in_metadata": {"extra_attachment_in_metadata": True},
    "missing_attachment_in_metadata": {"missing_attachment_in_metadata": True},
}


_CONVERTED: dict[str, tuple[DecryptionKeys, SigningKey]] = {}


def converted_keys(destination: SeededDestination) -> tuple[DecryptionKeys, SigningKey]:
    """The destination's private keys, converted once (RSA key checks take ~0.3 s each)."""
    keys = destination.keys
    if keys.encryption_kid not in _CONVERTED:
        _CONVERTED[keys.encryption_kid] = (
            DecryptionKeys.load(keys.encryption_private),
            SigningKey.from_jwk(keys.signing_private),
        )
    return _CONVERTED[keys.encryption_kid]


def test_every_switch_is_covered() -> None:
    assert set(SWITCHES) == set(EXPECTED)


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with shared_live_server(request.param, tmp_path_factory.mktemp(request.param)) as live:
        yield live


@dataclass
class Stack:
    live: LiveServer
    destination: SeededDestination
    sender: ClientCredentials
    subscriber: ClientCredentials
    tamper: TamperingTransport

    @property
    def environment(self) -> Environment:
        return Environment.local(self.live.base_url)

    def new_subscriber(self, **options: Any) -> AsyncSubscriber:
        decryption, signing = converted_keys(self.destination)
        options.setdefault("decryption_keys", decryption)
        options.setdefault("signing_key", signing)
        options.setdefault("schemas", SchemaRegistry().add_demo_schemas())
        options.setdefault("destination_id", self.destination.destination_id)
        options.setdefault("transport", self.tamper)
        return AsyncSubscriber(
            self.environment,
            Credentials(self.subscriber.client_id, self.subscriber.client_secret),
            **options,
        )

    def new_sender(self) -> AsyncSender:
        return AsyncSender(
            self.environment, Credentials(self.sender.client_id, self.sender.client_secret)
        )

    def evil(self) -> EvilSender:
        return EvilSender(self.live.base_url, self.sender.client_id, self.sender.client_secret)

    def plan(self, **changes: Any) -> EvilPlan:
        plan = EvilPlan(
            destination_id=self.destination.destination_id,
            encryption_key=self.destination.keys.encryption_public,
            service=SERVICE,
            data=dumps_compact(demo_json_data()),
            data_schema_uri=DEMO_JSON_SCHEMA_URI,
            attachments=(PDF,),
            reply_channel={"eMail": {"address": "erika.mustermann@example.org"}},
        )
        return plan.but(**changes)


@pytest.fixture
async def stack(server: LiveServer) -> AsyncIterator[Stack]:
    destination = server.seed.destination(
        services=[
            {
                "identifier": SERVICE,
                "submissionSchemas": [
                    {"schemaUri": DEMO_JSON_SCHEMA_URI, "mimeType": "application/json"},
                    {"schemaUri": DEMO_XML_SCHEMA_URI, "mimeType": "application/xml"},
                ],
                "regions": [DEFAULT_REGION],
                "replyChannels": {"eMail": {}},
            }
        ],
        metadata_versions=("1.0.0",),
    )
    tamper = TamperingTransport(httpx.AsyncHTTPTransport())
    yield Stack(
        live=server,
        destination=destination,
        sender=server.seed.sender(),
        subscriber=server.seed.subscriber(destination.destination_id),
        tamper=tamper,
    )
    await tamper.aclose()


# --- happy path -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "count"),
    [("json", 0), ("json", 1), ("json", 3), ("xml", 0), ("xml", 1), ("xml", 3)],
)
async def test_sent_by_the_sdk_received_and_accepted(
    stack: Stack, kind: str, count: int, tmp_path: Path
) -> None:
    builder = SubmissionBuilder(stack.destination.destination_id).service(SERVICE, "Testleistung")
    if kind == "json":
        builder.json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
    else:
        builder.xml_data(demo_xml_data(), schema_uri=DEMO_XML_SCHEMA_URI)
    contents = [f"Anlage {i} ".encode() * (i + 1) * 1000 for i in range(count)]
    for i, content in enumerate(contents):
        builder.attachment(content, filename=f"anlage-{i}.txt", purpose="attachment")
    builder.reply_email("erika.mustermann@example.org")
    async with stack.new_sender() as sender, stack.new_subscriber() as subscriber:
        sent = await sender.send(builder.build())
        pending = [s.submission_id for s in await subscriber.pending()]
        assert sent.submission_id in pending
        received = await subscriber.process(sent.submission_id, tmp_path / "in")
        assert received.valid, received.problems
        assert received.decision is not None
        assert received.decision.name == "accept-submission"
        assert [a.path.read_bytes() for a in received.attachments if a.path] == contents
        assert received.data_path is not None
        assert received.data_path.name == f"data.{kind}"
        report = await sender.status(sent)
        assert report.status is SubmissionStatus.ACCEPTED
        assert report.tags_checked
        assert sent.submission_id not in [s.submission_id for s in await subscriber.pending()]
        log = await subscriber.event_log(sent.case_id)
        assert log.status(sent.submission_id) is SubmissionStatus.ACCEPTED


# --- every check broken once ----------------------------------------------------------------------


@pytest.mark.parametrize("switch", sorted(SWITCHES))
async def test_evil_sender_breaks_one_check(stack: Stack, switch: str, tmp_path: Path) -> None:
    built = build(stack.plan(**SWITCHES[switch]))
    await stack.evil().send(built)
    stack.tamper.replace(built)
    sid, case_id = built.submission_id or "", built.case_id or ""
    expected = expected_problems(switch, built)
    async with stack.new_subscriber() as subscriber:
        received = await subscriber.process(sid, tmp_path / "in")
    assert problem_pairs(received.problems) == expected
    if switch == "broken_submit_set":
        assert stack.tamper.resigned >= 1  # the subscriber saw the re-signed SET
    assert received.decision is not None
    assert received.decision.name == "reject-submission"
    async with stack.new_sender() as sender:
        report = await sender.status(
            case_id, submission_id=sid, destination_id=stack.destination.destination_id
        )
    assert report.status is SubmissionStatus.REJECTED
    assert problem_pairs(report.problems) == expected


# --- listing, event log, worker -------------------------------------------------------------------


async def test_listing_pages_and_event_log(stack: Stack, tmp_path: Path) -> None:
    evil = stack.evil()
    ids = []
    for _ in range(3):
        built = await evil.send(build(stack.plan(attachments=())))
        ids.append(built.submission_id)
    async with stack.new_subscriber() as subscriber:
        page = await subscriber.list_submissions(limit=2)
        assert page.count == 2
        assert page.total_count == 3
        assert sorted(
            [s.submission_id async for s in subscriber.iter_submissions(page_size=2)]
        ) == sorted(ids)
        received = await subscriber.process(ids[0] or "", tmp_path / "in")
        log = await subscriber.event_log(received.case_id)
    names = [e.name for e in log.events]
    assert names[:2] == ["create-submission", "submit-submission"]
    assert names[-1] == "accept-submission"
    assert log.status(ids[0]) is SubmissionStatus.ACCEPTED


async def test_worker_against_the_live_server(stack: Stack, tmp_path: Path) -> None:
    evil = stack.evil()
    good = await evil.send(build(stack.plan()))
    bad = await evil.send(build(stack.plan(wrong_data_hash=True)))
    seen: list[str] = []

    class Crash(BaseException):
        pass

    def crash(stage: Stage, submission_id: str) -> None:
        if stage is Stage.DECIDED and submission_id == good.submission_id:
            raise Crash

    first = SubscriberWorker(
        stack.new_subscriber(),
        lambda received: seen.append(received.submission_id),
        state_path=tmp_path / "state.sqlite3",
        out_dir=tmp_path / "inbox",
        on_step=crash,
    )
    with pytest.raises(Crash):
        await first.run_once()
    first.close()
    await first.subscriber.aclose()
    second = SubscriberWorker(
        stack.new_subscriber(),
        lambda received: seen.append(received.submission_id),
        state_path=tmp_path / "state.sqlite3",
        out_dir=tmp_path / "inbox",
    )
    await second.run_once()
    second.close()
    await second.subscriber.aclose()
    assert sorted(seen) == sorted([good.submission_id, bad.submission_id])
    async with stack.new_sender() as sender:
        for built, status in ((good, SubmissionStatus.ACCEPTED), (bad, SubmissionStatus.REJECTED)):
            report = await sender.status(
                built.case_id or "",
                submission_id=built.submission_id,
                destination_id=stack.destination.destination_id,
            )
            assert report.status is status
