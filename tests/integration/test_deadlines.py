"""Deadlines with the clock advanced (SQLite, PostgreSQL): every transition checked in the
verified event log, the blob store (and on the file system) and the outbox."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple
from datetime import timedelta

import pytest

from fitconnect_kit.protocol.api import SubmissionStatus as ApiStatus
from fitconnect_kit.protocol.callbacks import new_events_body
from fitconnect_kit.protocol.events import SubmissionState, derive_state
from fitconnect_kit.protocol.problems import REJECT_PROBLEM_BASE, RejectProblems
from fitconnect_kit.server.domain.deadlines import DeadlinePassResult, run_deadlines_pass
from fitconnect_kit.server.storage.blobs import FileBlobStore
from tests.integration.conftest import StartServer
from tests.support.db import DbBackend, stored_status
from tests.support.live import LiveServer
from tests.support.seed import SeededDestination
from tests.support.submissions import (
    SeededSubmission,
    blob_exists,
    case_exists,
    create_submission,
    decide_submission,
    event_names,
    event_tokens,
    fetch_submission,
    load_deliveries,
    load_submission,
    verified_log,
)

DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)
SENDER = ("https://onlinedienst.example/callbacks", "sender-secret")
DEST_CALLBACK = {
    "callback_url": "https://fachverfahren.example/callbacks",
    "callback_secret": "destination-secret",
}


@pytest.fixture
def live(start_server: StartServer) -> LiveServer:
    return start_server()


@pytest.fixture
def destination(live: LiveServer) -> SeededDestination:
    return live.seed.destination(**DEST_CALLBACK)


def _pass(live: LiveServer) -> DeadlinePassResult:
    result = live.run_worker("deadlines")
    assert isinstance(result, DeadlinePassResult)
    return result


def _counts(result: DeadlinePassResult) -> tuple[int, ...]:
    return astuple(result)[:7]


def _assert_blobs_gone(live: LiveServer, seeded: SeededSubmission) -> None:
    assert seeded.blob_keys
    for key in seeded.blob_keys:
        assert not blob_exists(live, key)
        store = live.zd.blobs
        if isinstance(store, FileBlobStore):
            assert not store.path_for(key).exists()


def _assert_status_from_log(
    live: LiveServer, seeded: SeededSubmission, destination: SeededDestination | None = None
) -> SubmissionState:
    """The stored ``submissions.status`` is the status derived from the verified event log."""
    state = derive_state(
        verified_log(live, seeded.case_id, destination), submission_id=seeded.submission_id
    )
    row = load_submission(live, seeded.submission_id)
    assert row is not None
    assert row.status == stored_status(state.status), (row.status, state)
    return state


def _new_events_targets(live: LiveServer, seeded: SeededSubmission) -> list[str]:
    body = new_events_body(
        [
            {
                "destinationId": seeded.destination_id,
                "submissionId": seeded.submission_id,
                "caseId": seeded.case_id,
            }
        ]
    )
    return sorted(
        "destination" if row.destination_id else "sender"
        for row in load_deliveries(live)
        if row.kind == "new-events" and row.payload == body
    )


def test_incomplete_submission_is_deleted_after_one_day(
    live: LiveServer, destination: SeededDestination
) -> None:
    seeded = create_submission(
        live, destination, attachments=2, submit=False, sender_callback=SENDER
    )
    assert all(blob_exists(live, key) for key in seeded.blob_keys)
    live.manual_clock.advance(DAY - SECOND)
    assert _counts(_pass(live)) == (0,) * 7

    live.manual_clock.advance(2 * SECOND)
    assert _pass(live).incomplete_deleted == 1
    _assert_blobs_gone(live, seeded)
    row = load_submission(live, seeded.submission_id)
    assert row is not None
    assert row.status == "deleted"
    assert row.content_deleted_at == live.clock.now()
    log = verified_log(live, seeded.case_id)
    assert event_names(log) == ["create-submission", "delete-submission"]
    assert log[-1].issuer == live.base_url
    assert derive_state(log).status is ApiStatus.DELETED
    assert _assert_status_from_log(live, seeded).status is ApiStatus.DELETED
    # The sender hears of it; the destination never knew the submission.
    assert _new_events_targets(live, seeded) == ["sender"]

    assert _counts(_pass(live)) == (0,) * 7
    assert len(event_tokens(live, case_id=seeded.case_id)) == 2
    assert len(load_deliveries(live)) == 1


def test_operator_reminders_on_day_3_and_9(
    live: LiveServer, destination: SeededDestination, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fitconnect_kit.server.deadlines")
    waiting = create_submission(live, destination, attachments=0)
    fetched = create_submission(live, destination, attachments=0)
    fetch_submission(live, fetched.submission_id)
    assert _assert_status_from_log(live, fetched).status is ApiStatus.NOTIFIED
    live.manual_clock.advance(3 * DAY - SECOND)
    assert _pass(live).reminders == 0

    live.manual_clock.advance(SECOND)
    result = _pass(live)
    assert result.reminder_log == [(waiting.submission_id, 1)]
    assert _pass(live).reminders == 0  # idempotent
    row = load_submission(live, waiting.submission_id)
    assert row is not None
    assert row.reminders_sent == 1

    live.manual_clock.advance(6 * DAY)
    assert _pass(live).reminder_log == [(waiting.submission_id, 2)]
    assert _pass(live).reminders == 0
    row = load_submission(live, waiting.submission_id)
    assert row is not None
    assert row.reminders_sent == 2
    fetched_row = load_submission(live, fetched.submission_id)
    assert fetched_row is not None
    assert fetched_row.reminders_sent == 0
    assert _assert_status_from_log(live, waiting).status is ApiStatus.SUBMITTED
    # Picked up and left undecided: its content went 7 days after the pickup.
    assert _assert_status_from_log(live, fetched).status is ApiStatus.DELETED

    records = [r for r in caplog.records if getattr(r, "event", None) == "operator-reminder"]
    assert [(r.submission_id, r.reminder) for r in records] == [  # type: ignore[attr-defined]
        (waiting.submission_id, 1),
        (waiting.submission_id, 2),
    ]
    assert records[1].days_undelivered == 9  # type: ignore[attr-defined]
    assert records[1].destination_id == destination.destination_id  # type: ignore[attr-defined]
    for record in records:
        assert "secret" not in record.getMessage()
    # Reminders are no events.
    assert len(event_tokens(live, case_id=waiting.case_id)) == 2


def test_day_14_reject_then_day_21_deletion(
    live: LiveServer, destination: SeededDestination
) -> None:
    seeded = create_submission(live, destination, attachments=2, sender_callback=SENDER)
    live.manual_clock.advance(14 * DAY - SECOND)
    result = _pass(live)
    assert result.rejected == 0
    assert result.reminders == 2  # day 3 and day 9 passed unnoticed; both are logged now

    live.manual_clock.advance(SECOND)
    result = _pass(live)
    assert result.rejected == 1
    assert result.reminders == 0
    row = load_submission(live, seeded.submission_id)
    assert row is not None
    assert (row.status, row.decided_at, row.content_deleted_at) == (
        "rejected",
        live.clock.now(),
        None,
    )
    log = verified_log(live, seeded.case_id)
    assert event_names(log) == ["create-submission", "submit-submission", "reject-submission"]
    reject = log[-1]
    assert reject.issuer == live.base_url
    [problem] = reject.problems
    assert problem.type == REJECT_PROBLEM_BASE + "submission-expired"
    assert problem.is_type(RejectProblems.SUBMISSION_EXPIRED)
    assert problem.instance == "submission"
    assert problem.title == RejectProblems.SUBMISSION_EXPIRED.title
    assert reject.authentication_tags == seeded.tags == log[1].authentication_tags
    state = derive_state(log)
    assert state.status is ApiStatus.REJECTED
    assert state.tag_mismatches() == []
    assert _assert_status_from_log(live, seeded) == state
    assert _new_events_targets(live, seeded) == ["destination", "sender"]
    assert all(blob_exists(live, key) for key in seeded.blob_keys)

    assert _counts(_pass(live)) == (0,) * 7  # idempotent
    live.manual_clock.advance(7 * DAY - SECOND)
    assert _pass(live).deleted_unfetched == 0

    live.manual_clock.advance(SECOND)
    assert _pass(live).deleted_unfetched == 1
    _assert_blobs_gone(live, seeded)
    row = load_submission(live, seeded.submission_id)
    assert row is not None
    assert row.status == "rejected"  # the decision stays
    assert row.content_deleted_at == live.clock.now()
    assert row.encrypted_metadata is None
    assert row.encrypted_data is None
    log = verified_log(live, seeded.case_id)
    assert event_names(log)[-1] == "delete-submission"
    state = derive_state(log)
    assert (state.status, state.content_deleted) == (ApiStatus.REJECTED, True)
    assert _assert_status_from_log(live, seeded) == state
    assert _new_events_targets(live, seeded) == ["destination"] * 2 + ["sender"] * 2
    assert _counts(_pass(live)) == (0,) * 7
    assert len(event_tokens(live, case_id=seeded.case_id)) == 4


def test_content_deleted_seven_days_after_pickup(
    live: LiveServer, destination: SeededDestination
) -> None:
    accepted = create_submission(live, destination, attachments=1, sender_callback=SENDER)
    undecided = create_submission(live, destination, attachments=1)
    live.manual_clock.advance(DAY)
    for seeded in (accepted, undecided):
        fetch_submission(live, seeded.submission_id)
    decide_submission(live, destination, accepted, accept=True)
    live.manual_clock.advance(7 * DAY - SECOND)
    assert _pass(live).deleted_after_pickup == 0

    live.manual_clock.advance(SECOND)
    assert _pass(live).deleted_after_pickup == 2
    for seeded in (accepted, undecided):
        _assert_blobs_gone(live, seeded)
    accepted_row = load_submission(live, accepted.submission_id)
    undecided_row = load_submission(live, undecided.submission_id)
    assert accepted_row is not None
    assert undecided_row is not None
    assert accepted_row.status == "accepted"
    assert undecided_row.status == "deleted"
    log = verified_log(live, accepted.case_id, destination)
    assert event_names(log) == [
        "create-submission",
        "submit-submission",
        "notify-submission",
        "accept-submission",
        "delete-submission",
    ]
    assert derive_state(log).status is ApiStatus.ACCEPTED
    assert derive_state(verified_log(live, undecided.case_id)).status is ApiStatus.DELETED
    assert _assert_status_from_log(live, accepted, destination).status is ApiStatus.ACCEPTED
    assert _assert_status_from_log(live, undecided).status is ApiStatus.DELETED
    # Later deadlines do nothing more: no day-14 reject for the deleted one, no second delete.
    live.manual_clock.advance(30 * DAY)
    assert _counts(_pass(live)) == (0,) * 7
    assert event_names(verified_log(live, undecided.case_id))[-1] == "delete-submission"
    assert _assert_status_from_log(live, undecided).status is ApiStatus.DELETED


def test_event_log_and_case_deleted_730_days_after_the_last_event(
    live: LiveServer, destination: SeededDestination
) -> None:
    old = create_submission(live, destination, attachments=1, sender_callback=SENDER)
    live.manual_clock.advance(21 * DAY)
    result = _pass(live)
    assert (result.rejected, result.deleted_unfetched) == (1, 1)
    last_event = live.clock.now()
    live.manual_clock.advance(10 * DAY)
    recent = create_submission(live, destination, attachments=1)

    live.manual_clock.set(last_event + timedelta(days=730) - SECOND)
    assert _pass(live).cases_purged == 0
    assert case_exists(live, old.case_id)

    live.manual_clock.advance(SECOND)
    result = _pass(live)
    assert result.cases_purged == 1
    assert not case_exists(live, old.case_id)
    assert event_tokens(live, case_id=old.case_id) == []
    assert load_submission(live, old.submission_id) is None
    assert all(row.submission_id != old.submission_id for row in load_deliveries(live))
    # The newer case is 720 days old: still there (its content was deleted on day 21 though).
    assert case_exists(live, recent.case_id)
    _assert_blobs_gone(live, recent)
    assert _pass(live).cases_purged == 0


def test_retention_removes_leftover_blobs(start_server: StartServer) -> None:
    """Content still present when the case expires (retention set shorter than the rest)."""
    live = start_server(deadlines={"event_log_retention": "PT1H"})
    destination = live.seed.destination()
    seeded = create_submission(live, destination, attachments=2, submit=False)
    live.manual_clock.advance(timedelta(hours=1))
    assert _pass(live).cases_purged == 1
    _assert_blobs_gone(live, seeded)
    assert not case_exists(live, seeded.case_id)


@pytest.mark.parametrize("mode", ["one-node", "two-nodes"])
def test_concurrent_passes_make_no_duplicates(
    start_server: StartServer, db_backend: DbBackend, mode: str
) -> None:
    first = start_server()
    destination = first.seed.destination(**DEST_CALLBACK)
    incomplete = [
        create_submission(first, destination, attachments=1, submit=False, sender_callback=SENDER)
        for _ in range(3)
    ]
    submitted = [
        create_submission(first, destination, attachments=1, sender_callback=SENDER)
        for _ in range(3)
    ]
    first.manual_clock.advance(14 * DAY)
    if mode == "one-node":

        async def two() -> list[DeadlinePassResult]:
            return list(
                await asyncio.gather(run_deadlines_pass(first.zd), run_deadlines_pass(first.zd))
            )

        results = first.run(two())
    else:
        # A second node: same database (and blob store), same public base URL.
        second = start_server(backend=db_backend, base_url=first.base_url)
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(_pass, node) for node in (first, second)]
            results = [f.result(timeout=120) for f in futures]
    assert sum(r.incomplete_deleted for r in results) == 3
    assert sum(r.rejected for r in results) == 3
    assert sum(r.reminders for r in results) == 6
    for seeded in incomplete:
        assert event_names(verified_log(first, seeded.case_id)) == [
            "create-submission",
            "delete-submission",
        ]
        assert _new_events_targets(first, seeded) == ["sender"]
        assert _assert_status_from_log(first, seeded).status is ApiStatus.DELETED
    for seeded in submitted:
        assert event_names(verified_log(first, seeded.case_id)) == [
            "create-submission",
            "submit-submission",
            "reject-submission",
        ]
        assert _new_events_targets(first, seeded) == ["destination", "sender"]
        row = load_submission(first, seeded.submission_id)
        assert row is not None
        assert row.reminders_sent == 2
        assert _assert_status_from_log(first, seeded).status is ApiStatus.REJECTED
    # A later sequential pass finds nothing left to do at this time.
    assert _counts(_pass(first)) == (0,) * 7
