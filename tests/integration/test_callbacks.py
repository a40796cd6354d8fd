"""Callback outbox and the ``callbacks`` worker with real loopback receivers (SQLite, PostgreSQL).

Receivers verify every request with ``protocol.callbacks.verify_callback_request`` (the server's
ManualClock is shared, so HMAC timestamps are checked against the time the test set).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import update

from fitconnect_kit.protocol.callbacks import (
    CallbackType,
    new_events_body,
    new_submissions_body,
    parse_callback_body,
)
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.events import NotifyType
from fitconnect_kit.protocol.keygen import generate_key_set
from fitconnect_kit.protocol.keys import TrustPolicy
from fitconnect_kit.server import admin
from fitconnect_kit.server.storage.models import CallbackDelivery
from fitconnect_kit.server.workers.callbacks import (
    CallbackPassResult,
    callback_url_refusal,
    run_callbacks_pass,
)
from tests.integration.conftest import StartServer
from tests.keycache import rsa_key
from tests.support.callback_receiver import CallbackReceiver
from tests.support.db import DbBackend
from tests.support.live import LiveServer
from tests.support.seed import DESTINATION_KEY_INDEXES, SeededDestination, service
from tests.support.submissions import (
    SeededSubmission,
    create_submission,
    decide_submission,
    event_names,
    fetch_submission,
    load_deliveries,
    verified_log,
)

DEST_SECRET = "destination-callback-secret-0123456789"
SENDER_SECRET = "sender-callback-secret-9876543210"


@pytest.fixture
def receivers(clock: ManualClock) -> Iterator[tuple[CallbackReceiver, CallbackReceiver]]:
    """(destination receiver, sender receiver), both verifying HMACs with the test clock."""
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=clock, path="/fachverfahren/cb") as dest,
        CallbackReceiver(secret=SENDER_SECRET, clock=clock, path="/onlinedienst/cb") as sender,
    ):
        yield dest, sender


def _destination(live: LiveServer, receiver: CallbackReceiver) -> SeededDestination:
    return live.seed.destination(callback_url=receiver.url, callback_secret=receiver.secret)


def _summary(seeded: SeededSubmission) -> dict[str, str]:
    return {
        "destinationId": seeded.destination_id,
        "submissionId": seeded.submission_id,
        "caseId": seeded.case_id,
    }


def _pass(live: LiveServer) -> CallbackPassResult:
    result = live.run_worker("callbacks")
    assert isinstance(result, CallbackPassResult)
    return result


def _set_rows(live: LiveServer, **values: object) -> None:
    async def run() -> None:
        async with live.zd.sessions() as session, session.begin():
            await session.execute(update(CallbackDelivery).values(**values))

    live.run(run())


def test_new_submissions_byte_for_byte_then_notify_and_new_events(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, sender_rx = receivers
    live = start_server()
    destination = _destination(live, dest_rx)
    seeded = create_submission(
        live, destination, attachments=1, sender_callback=(sender_rx.url, SENDER_SECRET)
    )
    [row] = load_deliveries(live)
    expected = new_submissions_body([_summary(seeded)])
    assert row.payload == expected
    assert row.kind == "new-submissions"
    assert row.status == "pending"

    result = _pass(live)
    # NEW_SUBMISSIONS, then (same pass) NEW_EVENTS to the sender about notify-submission.
    assert (result.claimed, result.delivered, result.retried, result.failed) == (2, 2, 0, 0)
    [got] = dest_rx.received
    assert got.verified, got.failure
    assert got.path == "/fachverfahren/cb"
    assert got.body == expected
    assert got.headers["content-type"] == "application/json"
    assert got.headers["callback-timestamp"] == str(int(live.clock.now().timestamp()))
    assert len(got.headers["callback-authentication"]) == 128
    body = parse_callback_body(got.body)
    assert body.type == CallbackType.NEW_SUBMISSIONS.value
    [sender_got] = sender_rx.received
    assert sender_got.verified, sender_got.failure
    assert sender_got.body == new_events_body([_summary(seeded)])

    log = verified_log(live, seeded.case_id)
    assert event_names(log) == ["create-submission", "submit-submission", "notify-submission"]
    assert log[-1].notify_type is NotifyType.CALLBACK
    assert {r.status for r in load_deliveries(live)} == {"delivered"}

    # A second pass sends nothing; even a re-delivery (at-least-once) adds no second notify.
    assert _pass(live).claimed == 0
    _set_rows(live, status="pending", delivered_at=None)
    _pass(live)
    assert len(dest_rx.received) == 2
    assert len(sender_rx.received) == 2  # the re-sent NEW_EVENTS row, no new one
    assert event_names(verified_log(live, seeded.case_id)).count("notify-submission") == 1
    assert len(load_deliveries(live)) == 2


def test_sender_gets_new_events_for_events_it_did_not_make(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, sender_rx = receivers
    live = start_server()
    destination = live.seed.destination()  # no destination callback: polling
    seeded = create_submission(
        live, destination, attachments=0, sender_callback=(sender_rx.url, SENDER_SECRET)
    )
    assert load_deliveries(live) == []  # announce and submit are the sender's own doing
    fetch_submission(live, seeded.submission_id)
    fetch_submission(live, seeded.submission_id)  # notify (polling) only once
    decide_submission(live, destination, seeded, accept=True)
    result = _pass(live)
    assert result.delivered == 2
    assert [r.body for r in sender_rx.received] == [new_events_body([_summary(seeded)])] * 2
    assert all(r.verified for r in sender_rx.received)
    assert dest_rx.received == []


def test_retries_with_growing_backoff_until_2xx(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, _ = receivers
    dest_rx.script([500, 503, 500])
    dest_rx.default_status = 202
    live = start_server()
    destination = _destination(live, dest_rx)
    seeded = create_submission(live, destination, attachments=0)
    config = live.config.callbacks

    delays = []
    for attempt in range(1, 4):
        before = live.clock.now()
        result = _pass(live)
        assert result.retried == 1
        [row] = load_deliveries(live)
        assert row.status == "pending"
        assert row.attempts == attempt
        assert row.last_error in ("HTTP 500", "HTTP 503")
        assert row.locked_by is None
        delay = (row.next_attempt_at - before).total_seconds()
        nominal = config.initial_backoff * config.backoff_factor ** (attempt - 1)
        assert nominal * 0.8 - 1e-6 <= delay <= nominal
        delays.append(delay)
        # Not due yet: nothing happens.
        live.manual_clock.advance(delay - 1)
        assert _pass(live).claimed == 0
        live.manual_clock.advance(1)
    assert delays == sorted(delays)
    assert delays[0] < delays[-1]

    result = _pass(live)
    assert result.delivered == 1
    [row] = load_deliveries(live)
    assert (row.status, row.attempts, row.last_error) == ("delivered", 4, None)
    assert row.delivered_at == live.clock.now()
    assert len(dest_rx.received) == 4
    # Each attempt was signed at its own send time (the clock moved between attempts).
    assert all(r.verified for r in dest_rx.received)
    stamps = [int(r.headers["callback-timestamp"]) for r in dest_rx.received]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) == 4
    assert all(r.body == new_submissions_body([_summary(seeded)]) for r in dest_rx.received)


def test_gives_up_after_max_attempts(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, _ = receivers
    dest_rx.default_status = 302
    live = start_server(callbacks={"max_attempts": 1, "give_up_after": 100})
    destination = _destination(live, dest_rx)
    create_submission(live, destination, attachments=0)
    assert _pass(live).failed == 1
    [row] = load_deliveries(live)
    assert row.status == "failed"
    assert row.last_error == "HTTP 302 (redirects are not followed)"
    assert _pass(live).claimed == 0
    assert len(dest_rx.received) == 1


def test_gives_up_after_the_horizon(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, _ = receivers
    dest_rx.default_status = 500
    live = start_server(callbacks={"give_up_after": "PT1M"})
    destination = _destination(live, dest_rx)
    create_submission(live, destination, attachments=0)
    assert _pass(live).retried == 1
    live.manual_clock.advance(61)
    assert _pass(live).failed == 1
    [row] = load_deliveries(live)
    assert (row.status, row.attempts, row.last_error) == ("failed", 2, "HTTP 500")


def test_hanging_receiver_does_not_block_other_deliveries(
    start_server: StartServer, clock: ManualClock
) -> None:
    live = start_server(callbacks={"request_timeout": 2})
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=clock, hang=30) as slow,
        CallbackReceiver(secret=DEST_SECRET, clock=clock) as fast,
    ):
        slow_destination = _destination(live, slow)
        fast_destination = _destination(live, fast)
        create_submission(live, slow_destination, attachments=0)
        create_submission(live, fast_destination, attachments=0)
        with ThreadPoolExecutor(max_workers=1) as pool:
            started = time.monotonic()
            future = pool.submit(_pass, live)
            fast.wait_for(1, timeout=1.5)
            assert time.monotonic() - started < 1.5
            assert not future.done()  # the slow one is still in flight
            result = future.result(timeout=30)
        elapsed = time.monotonic() - started
        assert 1.9 <= elapsed < 10
    assert (result.delivered, result.retried) == (1, 1)
    rows = {r.destination_id: r for r in load_deliveries(live)}
    assert rows[fast_destination.destination_id].status == "delivered"
    slow_row = rows[slow_destination.destination_id]
    assert (slow_row.status, slow_row.last_error) == ("pending", "no response within 2 s")


def test_running_worker_delivers_new_callbacks_while_one_hangs(
    start_server: StartServer, clock: ManualClock
) -> None:
    live = start_server(
        callbacks={"request_timeout": 8}, workers={"enabled": True, "callback_interval": 0.2}
    )
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=clock, hang=30) as slow,
        CallbackReceiver(secret=DEST_SECRET, clock=clock) as fast,
    ):
        create_submission(live, _destination(live, slow), attachments=0)
        slow.wait_for(1, timeout=10)
        started = time.monotonic()
        create_submission(live, _destination(live, fast), attachments=0)
        fast.wait_for(1, timeout=5)
        assert time.monotonic() - started < 5
        slow.release()


def test_pending_delivery_survives_a_restart(
    start_server: StartServer,
    db_backend: DbBackend,
    receivers: tuple[CallbackReceiver, CallbackReceiver],
) -> None:
    dest_rx, _ = receivers
    first = start_server()
    destination = _destination(first, dest_rx)
    seeded = create_submission(first, destination, attachments=0)
    first.stop()
    assert dest_rx.received == []

    second = start_server(backend=db_backend)
    assert _pass(second).delivered == 1
    [got] = dest_rx.received
    assert got.verified
    assert got.body == new_submissions_body([_summary(seeded)])


def test_a_crashed_nodes_lease_expires(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, _ = receivers
    live = start_server()
    create_submission(live, _destination(live, dest_rx), attachments=0)
    lease = live.config.callbacks.lock_seconds
    _set_rows(
        live,
        locked_by="crashed-node:1:abc",
        locked_until=live.clock.now() + timedelta(seconds=lease),
    )
    assert _pass(live).claimed == 0
    live.manual_clock.advance(lease + 1)
    assert _pass(live).delivered == 1
    assert len(dest_rx.received) == 1


def test_plain_http_to_a_non_loopback_host_is_refused(start_server: StartServer) -> None:
    live = start_server()
    destination = live.seed.destination()
    seeded = create_submission(
        live, destination, attachments=0, sender_callback=("http://192.0.2.10/cb", SENDER_SECRET)
    )
    fetch_submission(live, seeded.submission_id)
    started = time.monotonic()
    assert _pass(live).failed == 1
    assert time.monotonic() - started < 5  # refused before any connection attempt
    [row] = load_deliveries(live)
    assert row.status == "failed"
    assert row.last_error is not None
    assert "https" in row.last_error
    assert SENDER_SECRET not in row.last_error


def test_loopback_http_needs_the_test_key_policy(
    start_server: StartServer, clock: ManualClock, tmp_path: Path
) -> None:
    cached = iter([rsa_key(i) for i in DESTINATION_KEY_INDEXES])
    keys = generate_key_set(clock=clock, key_factory=lambda: next(cached))
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(keys.ca_certificate.public_bytes(serialization.Encoding.PEM))
    live = start_server(key_policy="strict", trust_anchors=[str(anchor)])
    with CallbackReceiver(secret=SENDER_SECRET, clock=clock) as sender_rx:
        info = live.run(
            admin.create_destination(
                live.zd.database,
                live.config,
                services=[service()],
                encryption_key=keys.encryption_public,
                signing_key=keys.signing_public,
                trust_policy=TrustPolicy.test_environment(),
                clock=clock,
            )
        )
        destination = SeededDestination(info.destination_id, info, keys)
        seeded = create_submission(
            live, destination, attachments=0, sender_callback=(sender_rx.url, SENDER_SECRET)
        )
        fetch_submission(live, seeded.submission_id)
        assert _pass(live).failed == 1
        assert sender_rx.received == []
    [row] = load_deliveries(live)
    assert row.last_error is not None
    assert "key_policy 'test'" in row.last_error


def test_url_policy() -> None:
    allowed = [
        ("https://fachverfahren.example/cb", False),
        ("http://127.0.0.1:8080/cb", True),
        ("http://127.8.9.10/cb", True),
        ("http://[::1]:9000/cb", True),
        ("http://localhost/cb", True),
    ]
    for url, loopback in allowed:
        assert callback_url_refusal(url, allow_insecure_loopback=loopback) is None, url
    refused = [
        ("http://127.0.0.1:8080/cb", False),
        ("http://fachverfahren.example/cb", True),
        ("http://10.0.0.1/cb", True),
        ("ftp://fachverfahren.example/cb", True),
        ("https:///nohost", True),
        ("http://127.0.0.1:99999/cb", True),
    ]
    for url, loopback in refused:
        assert callback_url_refusal(url, allow_insecure_loopback=loopback) is not None, url


@pytest.mark.parametrize("mode", ["one-node", "two-nodes"])
def test_concurrent_passes_deliver_each_callback_once(
    start_server: StartServer,
    db_backend: DbBackend,
    receivers: tuple[CallbackReceiver, CallbackReceiver],
    mode: str,
) -> None:
    dest_rx, sender_rx = receivers
    # Small batches, so both passes/nodes are busy at the same time.
    first = start_server(callbacks={"max_concurrency": 2})
    destination = _destination(first, dest_rx)
    submissions = [
        create_submission(
            first, destination, attachments=0, sender_callback=(sender_rx.url, SENDER_SECRET)
        )
        for _ in range(8)
    ]
    if mode == "one-node":

        async def two_passes() -> list[CallbackPassResult]:
            return list(
                await asyncio.gather(run_callbacks_pass(first.zd), run_callbacks_pass(first.zd))
            )

        results = first.run(two_passes())
    else:
        # A second node: same database, same public base URL (the iss of its SETs).
        second = start_server(
            backend=db_backend, base_url=first.base_url, callbacks={"max_concurrency": 2}
        )
        assert second.zd.node_id != first.zd.node_id
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(_pass, node) for node in (first, second)]
            results = [f.result(timeout=60) for f in futures]
    assert sum(r.delivered for r in results) == 16
    assert all(r.delivered > 0 for r in results), results  # both took part
    assert sum(r.lost for r in results) == 0
    assert len(dest_rx.received) == 8
    assert len(sender_rx.received) == 8
    assert sorted(r.body for r in dest_rx.received) == sorted(
        new_submissions_body([_summary(s)]) for s in submissions
    )
    for seeded in submissions:
        names = event_names(verified_log(first, seeded.case_id))
        assert names.count("notify-submission") == 1
    assert {r.status for r in load_deliveries(first)} == {"delivered"}
