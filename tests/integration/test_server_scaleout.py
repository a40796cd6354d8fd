"""Scale-out: two Zustelldienst **processes** on one fresh PostgreSQL database (PostgreSQL blob
store, workers on), one public base URL, concurrent senders and subscribers spread over both
nodes, callbacks to real receivers. Nothing may be lost or duplicated:

* every submission's event log holds exactly one ``create-submission``, one
  ``submit-submission``, at most one ``notify-submission`` per notify type and exactly one
  ``accept-submission`` (two subscribers race for it), every SET verifies (ZD SETs with the JWKS
  of the *other* node, receiver SETs with the destination's key), no ``jti`` twice;
* every callback is delivered exactly once per event: NEW_SUBMISSIONS once per submission to the
  destination; NEW_EVENTS to the sender once per event it did not make itself (each
  ``notify-submission`` and the ``accept-submission``) — the receivers' records are compared with
  the event logs, and every outbox row is ``delivered`` after exactly one attempt;
* status is derived from the event log: every submission's stored ``submissions.status`` is the
  status :func:`~fitconnect_kit.protocol.events.derive_state` gives for its verified log
  (``accepted``).

:func:`run_scenario` is shared with ``bench/scaleout.py`` (bigger numbers, figures printed).
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import func, select

from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.callbacks import CallbackType, parse_callback_body
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK
from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    SecurityEventToken,
    build_set_claims,
    derive_state,
    parse_set,
    sign_set,
    submission_subject,
    verify_set,
    verify_set_with_jwks,
)
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import private_key_from_jwk
from fitconnect_kit.protocol.keygen import GeneratedKeySet, generate_key_set
from fitconnect_kit.server import admin
from fitconnect_kit.server.config import config_from_mapping
from fitconnect_kit.server.server_keys import ensure_server_keys
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.models import CallbackDelivery, Submission
from tests.keycache import rsa_key
from tests.support.callback_receiver import CallbackReceiver
from tests.support.db import DbBackend, stored_status
from tests.support.live import (
    ServerProcess,
    bind_loopback_socket,
    preset_server_keys,
    write_config_file,
)
from tests.support.seed import DESTINATION_KEY_INDEXES, service

#: Submissions one subscriber works on at the same time.
RECEIVING_CONCURRENCY = 8
DEST_SECRET = "scaleout-destination-secret-0123456789"
SENDER_SECRET = "scaleout-sender-secret-9876543210"
_DELIVERED_LINE = re.compile(r"callback \d+ \(([a-z-]+)\) delivered")


# --- the cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """Nodes, receivers and the seeded clients/destination of one scale-out run."""

    public_url: str
    nodes: list[ServerProcess]
    database_url: str
    destination_id: str
    keys: GeneratedKeySet
    sender: admin.CreatedClient
    subscribers: list[admin.CreatedClient]
    dest_rx: CallbackReceiver
    sender_rx: CallbackReceiver

    @property
    def urls(self) -> list[str]:
        return [node.base_url for node in self.nodes]

    @functools.cached_property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The destination's signing key (loading a JWK private key costs ~0.3 s: once)."""
        return private_key_from_jwk(self.keys.signing_private)


async def _seed(
    backend: DbBackend, public_url: str, dest_rx: CallbackReceiver, subscribers: int
) -> tuple[str, GeneratedKeySet, admin.CreatedClient, list[admin.CreatedClient]]:
    config = config_from_mapping(backend.config(base_url=public_url))
    database = await admin.open_admin_database(config)  # migrates the fresh database
    try:
        # The keys every node will load (no RSA-4096 generation while the nodes start).
        await ensure_server_keys(database, SYSTEM_CLOCK, preset=preset_server_keys())
        cached = iter([rsa_key(i) for i in DESTINATION_KEY_INDEXES])
        keys = generate_key_set(clock=SYSTEM_CLOCK, key_factory=lambda: next(cached))
        destination = await admin.create_destination(
            database,
            config,
            services=[service()],
            encryption_key=keys.encryption_public,
            signing_key=keys.signing_public,
            callback_url=dest_rx.url,
            callback_secret=DEST_SECRET,
        )
        sender = await admin.create_client(database, kind="sender")
        receivers = []
        for _ in range(subscribers):
            created = await admin.create_client(database, kind="subscriber")
            await admin.link_client(
                database, client_id=created.client_id, destination_id=destination.destination_id
            )
            receivers.append(created)
        return destination.destination_id, keys, sender, receivers
    finally:
        await database.dispose()


@contextmanager
def cluster(
    backend: DbBackend, tmp_path: Path, *, nodes: int = 2, subscribers: int = 2
) -> Iterator[Cluster]:
    """``nodes`` server processes on ``backend`` (one public URL), receivers, seeded data."""
    sockets = [bind_loopback_socket() for _ in range(nodes)]
    public_url = f"http://127.0.0.1:{sockets[0].getsockname()[1]}"
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=SYSTEM_CLOCK, path="/fachverfahren") as dest_rx,
        CallbackReceiver(secret=SENDER_SECRET, clock=SYSTEM_CLOCK, path="/onlinedienst") as snd_rx,
    ):
        destination_id, keys, sender, receivers = asyncio.run(
            _seed(backend, public_url, dest_rx, subscribers)
        )
        processes = []
        for index, sock in enumerate(sockets):
            port = sock.getsockname()[1]
            config = backend.config(
                base_url=public_url,  # the same iss on every node
                port=port,
                log_level="info",
                workers={
                    "enabled": True,
                    "callback_interval": 0.2,
                    "deadline_interval": 3600,
                    "cleanup_interval": 3600,
                },
                rate_limit={"burst": 1_000_000, "anonymous_burst": 1_000_000},
            )
            config_file = write_config_file(tmp_path / f"node-{index}.json", config)
            processes.append(ServerProcess(config_file, sock=sock))
        for process in processes:
            process.start(wait=False)
        try:
            for process in processes:
                process.wait_ready()
            yield Cluster(
                public_url=public_url,
                nodes=processes,
                database_url=backend.database_url,
                destination_id=destination_id,
                keys=keys,
                sender=sender,
                subscribers=receivers,
                dest_rx=dest_rx,
                sender_rx=snd_rx,
            )
        finally:
            for process in processes:
                process.stop()


# --- the scenario --------------------------------------------------------------------------------


@dataclass
class Report:
    submissions: dict[str, str] = field(default_factory=dict)  # submission id -> case id
    accepted_by: dict[str, int] = field(default_factory=dict)  # submission id -> subscriber
    accept_conflicts: int = 0
    fetches: int = 0
    uploaded_bytes: int = 0
    send_seconds: float = 0.0
    receive_seconds: float = 0.0
    settle_seconds: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # per node URL


def _last_segment(token: str) -> str:
    return token.strip().rsplit(".", 1)[1]


async def _token(http: httpx.AsyncClient, url: str, client: admin.CreatedClient) -> str:
    form = {
        "grant_type": "client_credentials",
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    }
    response = await http.post(f"{url}/token", data=form)
    response.raise_for_status()
    token: str = response.json()["access_token"]
    return token


async def _send_one(
    http: httpx.AsyncClient,
    c: Cluster,
    auth: dict[str, str],
    index: int,
    attachment: bytes,
    report: Report,
) -> None:
    first, second = c.urls[index % len(c.urls)], c.urls[(index + 1) % len(c.urls)]
    attachment_id = new_id()
    announce = {
        "destinationId": c.destination_id,
        "announcedAttachments": [attachment_id],
        "serviceType": {"name": "Testleistung", "identifier": service()["identifier"]},
        "callback": {"url": c.sender_rx.url, "secret": SENDER_SECRET},
    }
    created = await http.post(f"{first}/v1/submissions", json=announce, headers=auth)
    assert created.status_code == 201, created.text
    ids = created.json()
    key = c.keys.encryption_public
    part = await asyncio.to_thread(jwe.encrypt, attachment, key, cty="application/pdf")
    body = part.token.encode("ascii")
    uploaded = await http.put(
        f"{second}/v1/submissions/{ids['submissionId']}/attachments/{attachment_id}",
        content=body,
        headers={**auth, "Content-Type": "application/jose"},
    )
    assert uploaded.status_code == 204, uploaded.text
    metadata = jwe.encrypt(b'{"contentStructure": {}}', key, cty="application/json").token
    data = jwe.encrypt(b'{"antrag": %d}' % index, key, cty="application/json").token
    submitted = await http.put(
        f"{first}/v1/submissions/{ids['submissionId']}",
        json={"encryptedMetadata": metadata, "encryptedData": data},
        headers=auth,
    )
    assert submitted.status_code == 202, submitted.text
    report.submissions[ids["submissionId"]] = ids["caseId"]
    report.uploaded_bytes += len(body)
    report.requests.update([first, second, first])


async def _receive_one(
    http: httpx.AsyncClient,
    c: Cluster,
    url: str,
    auth: dict[str, str],
    subscriber: int,
    submission_id: str,
    report: Report,
) -> None:
    fetched = await http.get(f"{url}/v1/submissions/{submission_id}", headers=auth)
    report.requests[url] += 1
    if fetched.status_code == 409:  # already decided and gone: nothing to do
        return
    assert fetched.status_code == 200, fetched.text
    submission = fetched.json()
    report.fetches += 1
    attachments = {}
    for attachment_id in submission["attachments"]:
        download = await http.get(
            f"{url}/v1/submissions/{submission_id}/attachments/{attachment_id}", headers=auth
        )
        assert download.status_code == 200, download.text
        attachments[attachment_id] = _last_segment(download.text)
        report.requests[url] += 1
    tags = AuthenticationTags(
        metadata=_last_segment(submission["encryptedMetadata"]),
        data=_last_segment(submission["encryptedData"]),
        attachments=attachments,
    )
    claims = build_set_claims(
        Event.ACCEPT_SUBMISSION,
        issuer=c.destination_id,
        subject=submission_subject(submission_id),
        case_id=submission["caseId"],
        payload={"authenticationTags": tags},
    )
    token = sign_set(claims, c.signing_key, c.keys.signing_kid)
    posted = await http.post(
        f"{url}/v1/cases/{submission['caseId']}/events",
        content=token.encode("ascii"),
        headers={**auth, "Content-Type": "application/jose"},
    )
    report.requests[url] += 1
    if posted.status_code == 204:
        report.accepted_by[submission_id] = subscriber
    else:  # the other subscriber was faster
        assert posted.status_code == 409, posted.text
        assert posted.json()["type"].endswith("/submission-state-invalid"), posted.text
        report.accept_conflicts += 1


async def _subscriber_loop(
    http: httpx.AsyncClient,
    c: Cluster,
    subscriber: int,
    expected: int,
    report: Report,
    deadline: float,
) -> None:
    url = c.urls[subscriber % len(c.urls)]
    auth = {"Authorization": f"Bearer {await _token(http, url, c.subscribers[subscriber])}"}
    gate = asyncio.Semaphore(RECEIVING_CONCURRENCY)

    async def receive(submission_id: str) -> None:
        async with gate:
            if submission_id not in report.accepted_by:
                await _receive_one(http, c, url, auth, subscriber, submission_id, report)

    while len(report.accepted_by) < expected:
        assert time.monotonic() < deadline, f"only {len(report.accepted_by)} of {expected} accepted"
        listed = await http.get(
            f"{url}/v1/submissions",
            params={"destinationId": c.destination_id, "limit": 50},
            headers=auth,
        )
        report.requests[url] += 1
        assert listed.status_code == 200, listed.text
        waiting = [s["submissionId"] for s in listed.json()["submissions"]]
        # A receiving system works on several submissions at once.
        await asyncio.gather(*(receive(submission_id) for submission_id in waiting))
        if not waiting:
            await asyncio.sleep(0.05)


async def _pending_deliveries(database: Database) -> int:
    async with database.sessions() as session:
        count = await session.scalar(
            select(func.count())
            .select_from(CallbackDelivery)
            .where(CallbackDelivery.status == "pending")
        )
    return int(count or 0)


async def run_scenario(
    c: Cluster,
    *,
    submissions: int,
    concurrency: int,
    attachment_size: int,
    time_limit: float = 120.0,
) -> Report:
    """Send ``submissions`` (``concurrency`` at once) while the subscribers receive and accept
    them; then wait until the callback outbox is empty."""
    report = Report()
    deadline = time.monotonic() + time_limit
    limits = httpx.Limits(max_connections=concurrency + 4 * len(c.subscribers))
    attachment = os.urandom(attachment_size)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:
        auth = {"Authorization": f"Bearer {await _token(http, c.urls[-1], c.sender)}"}
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()

        async def send(index: int) -> None:
            async with gate:
                await _send_one(http, c, auth, index, attachment, report)

        async def send_all() -> None:
            await asyncio.gather(*(send(i) for i in range(submissions)))
            report.send_seconds = time.monotonic() - started

        await asyncio.gather(
            send_all(),
            *(
                _subscriber_loop(http, c, index, submissions, report, deadline)
                for index in range(len(c.subscribers))
            ),
        )
        report.receive_seconds = time.monotonic() - started

    settle_started = time.monotonic()
    database = Database(c.database_url)
    try:
        while await _pending_deliveries(database):
            assert time.monotonic() < deadline, "callbacks did not settle in time"
            await asyncio.sleep(0.1)
    finally:
        await database.dispose()
    # A delivery is recorded after the receiver answered: nothing is still on the wire.
    report.settle_seconds = time.monotonic() - settle_started
    return report


# --- checking ------------------------------------------------------------------------------------


@dataclass
class Verified:
    events: dict[str, list[str]]  # submission id -> event names in log order
    expected_new_events: dict[str, int]  # submission id -> events the sender did not make
    total_events: int
    deliveries: Counter[str]  # status -> count
    attempts: Counter[int]


async def _stored_deliveries(database_url: str) -> list[CallbackDelivery]:
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            return list(await session.scalars(select(CallbackDelivery)))
    finally:
        await database.dispose()


async def _stored_statuses(database_url: str) -> dict[str, str]:
    """``submissions.status`` by submission id, straight from the shared database."""
    database = Database(database_url)
    try:
        async with database.sessions() as session:
            rows = await session.execute(select(Submission.submission_id, Submission.status))
            return {row.submission_id: row.status for row in rows}
    finally:
        await database.dispose()


def check_scenario(c: Cluster, report: Report, submissions: int) -> Verified:
    """Every assertion of the module docstring; returns the figures."""
    assert len(report.submissions) == submissions
    assert sorted(report.accepted_by) == sorted(report.submissions)

    # Event logs, read through the nodes in turn; SETs verified with the other node's JWKS.
    jwks = httpx.get(f"{c.urls[-1]}/.well-known/jwks.json", timeout=30).json()
    assert jwks == httpx.get(f"{c.urls[0]}/.well-known/jwks.json", timeout=30).json()
    signing_public = c.keys.signing_public
    events: dict[str, list[str]] = {}
    derived: dict[str, SubmissionStatus] = {}
    expected_new_events: dict[str, int] = {}
    jtis: set[str] = set()
    with httpx.Client(timeout=30) as http:
        auth = {}
        for index, url in enumerate(c.urls):
            form = {
                "grant_type": "client_credentials",
                "client_id": c.subscribers[index % len(c.subscribers)].client_id,
                "client_secret": c.subscribers[index % len(c.subscribers)].client_secret,
            }
            token = http.post(f"{url}/token", data=form).json()["access_token"]
            auth[url] = {"Authorization": f"Bearer {token}"}
        for position, (submission_id, case_id) in enumerate(sorted(report.submissions.items())):
            url = c.urls[position % len(c.urls)]
            log = http.get(
                f"{url}/v1/submissions/{submission_id}/events",
                params={"limit": 500},
                headers=auth[url],
            )
            assert log.status_code == 200, log.text
            names = []
            notify_types = []
            verified: list[SecurityEventToken] = []
            for token in log.json()["eventLog"]:
                st = parse_set(token)
                if st.issued_by_zustelldienst:
                    st = verify_set_with_jwks(
                        token, jwks, expected_case_id=case_id, expected_issuer=c.public_url
                    )
                else:
                    st = verify_set(
                        token,
                        signing_public,
                        expected_case_id=case_id,
                        expected_issuer=c.destination_id,
                    )
                assert st.submission_id == submission_id
                assert st.jti not in jtis, "an event is in the log twice"
                jtis.add(st.jti)
                verified.append(st)
                names.append(st.event.short_name)
                if st.event is Event.NOTIFY_SUBMISSION:
                    assert st.notify_type is not None
                    notify_types.append(st.notify_type.value)
            counts = Counter(names)
            assert names[:2] == ["create-submission", "submit-submission"], names
            assert counts["create-submission"] == 1, names
            assert counts["submit-submission"] == 1, names
            assert counts["accept-submission"] == 1, names
            assert len(notify_types) == len(set(notify_types)), names  # ≤ 1 per notify type
            assert set(counts) <= {
                "create-submission",
                "submit-submission",
                "notify-submission",
                "accept-submission",
            }, names
            events[submission_id] = names
            derived[submission_id] = derive_state(verified, submission_id=submission_id).status
            # The sender made create and submit; notify(s) and accept are news to it.
            expected_new_events[submission_id] = counts["notify-submission"] + 1

    # Status is derived from the event log: what every node stored agrees with the verified log.
    assert set(derived.values()) == {SubmissionStatus.ACCEPTED}, derived
    stored = asyncio.run(_stored_statuses(c.database_url))
    assert {sid: stored.get(sid) for sid in derived} == {
        sid: stored_status(status) for sid, status in derived.items()
    }

    # Callbacks: exactly once per event, every one with a valid HMAC.
    dest_received = c.dest_rx.received
    sender_received = c.sender_rx.received
    assert all(r.verified for r in dest_received + sender_received)
    new_submissions: Counter[str] = Counter()
    for received in dest_received:
        body = parse_callback_body(received.body)
        assert body.type == CallbackType.NEW_SUBMISSIONS.value
        new_submissions.update(s.submission_id for s in body.submissions)
    assert new_submissions == Counter(dict.fromkeys(report.submissions, 1))
    new_events: Counter[str] = Counter()
    for received in sender_received:
        body = parse_callback_body(received.body)
        assert body.type == CallbackType.NEW_EVENTS.value
        new_events.update(s.submission_id for s in body.submissions)
    assert new_events == Counter(expected_new_events)

    # The outbox agrees: one row per callback received, all delivered. (A row may have needed
    # a retry — a failed attempt that never reached the receiver — but none reached it twice.)
    rows = asyncio.run(_stored_deliveries(c.database_url))
    deliveries = Counter(row.status for row in rows)
    attempts = Counter(row.attempts for row in rows)
    assert deliveries == Counter(delivered=len(dest_received) + len(sender_received))

    return Verified(
        events=events,
        expected_new_events=expected_new_events,
        total_events=len(jtis),
        deliveries=deliveries,
        attempts=attempts,
    )


def delivered_per_node(c: Cluster) -> list[Counter[str]]:
    """Callback deliveries each node logged (call after the nodes stopped)."""
    return [Counter(_DELIVERED_LINE.findall(node.output())) for node in c.nodes]


# --- the test ------------------------------------------------------------------------------------

SUBMISSIONS = 12
CONCURRENCY = 12


@pytest.mark.slow
@pytest.mark.postgres
def test_two_nodes_lose_and_duplicate_nothing(postgres_backend: DbBackend, tmp_path: Path) -> None:
    started = time.monotonic()
    with cluster(postgres_backend, tmp_path) as c:
        ready = time.monotonic() - started
        report = asyncio.run(
            run_scenario(
                c, submissions=SUBMISSIONS, concurrency=CONCURRENCY, attachment_size=64 * 1024
            )
        )
        verified = check_scenario(c, report, SUBMISSIONS)
    print(
        f"nodes ready {ready:.1f} s, sent {report.send_seconds:.1f} s, all accepted "
        f"{report.receive_seconds:.1f} s, callbacks settled +{report.settle_seconds:.1f} s, "
        f"{verified.total_events} events, {sum(verified.deliveries.values())} callbacks, "
        f"{report.accept_conflicts} accept races lost, total {time.monotonic() - started:.1f} s"
    )
    per_node = delivered_per_node(c)
    print(f"callbacks delivered per node: {[dict(n) for n in per_node]}")
    # Together the nodes delivered exactly the outbox (each row by one of them).
    assert sum(sum(n.values()) for n in per_node) == sum(verified.deliveries.values())
    for node in c.nodes:
        assert "Traceback" not in node.output(), node.output()[-3000:]
    # Both nodes served requests (senders and subscribers alternate between them).
    assert all(report.requests[url] > SUBMISSIONS for url in c.urls), report.requests
    assert verified.total_events >= 4 * SUBMISSIONS
