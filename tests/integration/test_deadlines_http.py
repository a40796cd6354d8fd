"""Callbacks and deadlines driven through the real Submission API over loopback HTTP.

Sender and subscriber use access tokens from ``POST /token``; callbacks go to real receivers that
verify the HMAC; the event log is read with ``GET /v1/cases/{caseId}/events`` and every SET is
verified with the JWKS the server publishes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest

from fitconnect_kit.protocol.api import SubmissionStatus as ApiStatus
from fitconnect_kit.protocol.callbacks import new_events_body, new_submissions_body
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    NotifyType,
    SecurityEventToken,
    SubmissionState,
    derive_state,
    parse_set,
    verify_set,
    verify_set_with_jwks,
)
from fitconnect_kit.protocol.problems import RejectProblems
from tests.integration.conftest import StartServer
from tests.support.callback_receiver import CallbackReceiver
from tests.support.db import stored_status
from tests.support.live import LiveServer
from tests.support.seed import (
    SeededDestination,
    SentSubmission,
    assert_problem,
    jose_headers,
    receiver_set,
    send_submission,
)
from tests.support.submissions import blob_exists, load_submission, stored_blob_keys

DAY = timedelta(days=1)
DEST_SECRET = "http-destination-secret-0123456789"
SENDER_SECRET = "http-sender-secret-0123456789"


@pytest.fixture
def receivers(clock: ManualClock) -> Iterator[tuple[CallbackReceiver, CallbackReceiver]]:
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=clock) as dest,
        CallbackReceiver(secret=SENDER_SECRET, clock=clock) as sender,
    ):
        yield dest, sender


class World:
    def __init__(self, live: LiveServer, dest_rx: CallbackReceiver) -> None:
        self.live = live
        self.destination: SeededDestination = live.seed.destination(
            callback_url=dest_rx.url, callback_secret=DEST_SECRET
        )
        self._sender = live.seed.sender()
        self._subscriber = live.seed.subscriber(self.destination.destination_id)
        self.http = live.client()

    # Fresh tokens on every use: the tests move the clock by days.
    @property
    def sender(self) -> dict[str, str]:
        return self.live.seed.auth(self._sender)

    @property
    def subscriber(self) -> dict[str, str]:
        return self.live.seed.auth(self._subscriber)

    def send(self, sender_rx: CallbackReceiver | None, **kwargs: object) -> SentSubmission:
        callback = {"url": sender_rx.url, "secret": SENDER_SECRET} if sender_rx else None
        return send_submission(
            self.http,
            self.sender,
            self.destination,
            callback=callback,
            **kwargs,  # type: ignore[arg-type]
        )

    def log(self, sent: SentSubmission) -> list[SecurityEventToken]:
        """The case's event log over HTTP (as the sender reads it), every SET verified."""
        response = self.http.get(
            f"/v1/cases/{sent.case_id}/events", params={"limit": 500}, headers=self.sender
        )
        assert response.status_code == 200, response.text
        jwks = self.http.get("/.well-known/jwks.json").json()
        result = []
        for token in response.json()["eventLog"]:
            if parse_set(token).issued_by_zustelldienst:
                st = verify_set_with_jwks(
                    token, jwks, expected_case_id=sent.case_id, expected_issuer=self.live.base_url
                )
            else:
                st = verify_set(
                    token,
                    self.destination.keys.signing_public,
                    expected_issuer=self.destination.destination_id,
                )
            result.append(st)
        return result

    def names(self, sent: SentSubmission) -> list[str]:
        return [st.event.short_name for st in self.log(sent)]

    def assert_status_from_log(self, sent: SentSubmission) -> SubmissionState:
        """The stored ``submissions.status`` is the status derived from the verified log."""
        state = derive_state(self.log(sent), submission_id=sent.submission_id)
        row = load_submission(self.live, sent.submission_id)
        assert row is not None
        assert row.status == stored_status(state.status), (row.status, state)
        return state

    def summary(self, sent: SentSubmission) -> list[dict[str, str]]:
        return [
            {
                "destinationId": sent.destination_id,
                "submissionId": sent.submission_id,
                "caseId": sent.case_id,
            }
        ]


@pytest.fixture
def world(
    start_server: StartServer, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> Iterator[World]:
    live = start_server()
    w = World(live, receivers[0])
    yield w
    w.http.close()


def _callbacks(live: LiveServer) -> None:
    live.run_worker("callbacks")


def _deadlines(live: LiveServer) -> None:
    live.run_worker("deadlines")


def _blob_keys(world: World, sent: SentSubmission) -> list[str]:
    keys = stored_blob_keys(world.live, sent.submission_id)
    assert len(keys) == len(sent.attachments)
    return keys


def test_submit_over_http_calls_back_and_notifies_once(
    world: World, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, sender_rx = receivers
    sent = world.send(sender_rx, attachments=2)
    _callbacks(world.live)
    [got] = dest_rx.received
    assert got.verified, got.failure
    assert got.body == new_submissions_body(world.summary(sent))
    [notified] = sender_rx.received
    assert notified.verified, notified.failure
    assert notified.body == new_events_body(world.summary(sent))
    log = world.log(sent)
    assert [st.event.short_name for st in log] == [
        "create-submission",
        "submit-submission",
        "notify-submission",
    ]
    assert log[-1].notify_type is NotifyType.CALLBACK
    # The subscriber's first fetch adds notify (polling) — a different notify type, once.
    for _ in range(2):
        fetched = world.http.get(f"/v1/submissions/{sent.submission_id}", headers=world.subscriber)
        assert fetched.status_code == 200, fetched.text
    _callbacks(world.live)
    _callbacks(world.live)
    notifies = [st.notify_type for st in world.log(sent) if st.event is Event.NOTIFY_SUBMISSION]
    assert notifies == [NotifyType.CALLBACK, NotifyType.POLLING]
    assert world.assert_status_from_log(sent).status is ApiStatus.NOTIFIED
    assert len(dest_rx.received) == 1
    assert len(sender_rx.received) == 2


def test_unfetched_submission_rejected_on_day_14_and_deleted_on_day_21(
    world: World, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    dest_rx, sender_rx = receivers
    dest_rx.default_status = 503  # the Fachverfahren is down the whole time
    sent = world.send(sender_rx, attachments=2)
    keys = _blob_keys(world, sent)
    assert world.assert_status_from_log(sent).status is ApiStatus.SUBMITTED
    world.live.manual_clock.advance(14 * DAY)
    _deadlines(world.live)
    fetched = world.http.get(f"/v1/submissions/{sent.submission_id}", headers=world.subscriber)
    assert_problem(fetched, 409, "submission-state-invalid")
    log = world.log(sent)
    assert [st.event.short_name for st in log] == [
        "create-submission",
        "submit-submission",
        "reject-submission",
    ]
    reject = log[-1]
    assert reject.issuer == world.live.base_url
    assert [p.type for p in reject.problems] == [RejectProblems.SUBMISSION_EXPIRED.type_uri]
    assert reject.authentication_tags == AuthenticationTags.from_json(sent.tags)
    assert derive_state(log).status is ApiStatus.REJECTED
    assert world.assert_status_from_log(sent).status is ApiStatus.REJECTED

    dest_rx.default_status = 200
    world.live.manual_clock.advance(timedelta(seconds=3600))
    _callbacks(world.live)
    # NEW_SUBMISSIONS (retried) and NEW_EVENTS about the ZD's reject reach the destination;
    # the sender gets NEW_EVENTS about the reject. No notify after the reject.
    bodies = [r.body for r in dest_rx.received if r.answered == 200]
    assert sorted(bodies) == sorted(
        [new_submissions_body(world.summary(sent)), new_events_body(world.summary(sent))]
    )
    assert [r.body for r in sender_rx.received] == [new_events_body(world.summary(sent))]
    assert Event.NOTIFY_SUBMISSION not in {st.event for st in world.log(sent)}

    assert all(blob_exists(world.live, key) for key in keys)
    world.live.manual_clock.advance(7 * DAY)
    _deadlines(world.live)
    assert not any(blob_exists(world.live, key) for key in keys)
    state = world.assert_status_from_log(sent)
    assert (state.status, state.content_deleted) == (ApiStatus.REJECTED, True)
    _callbacks(world.live)
    assert len(sender_rx.received) == 2


def test_picked_up_and_accepted_then_deleted_after_seven_days(
    world: World, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    _, sender_rx = receivers
    sent = world.send(sender_rx, attachments=1)
    keys = _blob_keys(world, sent)
    world.live.manual_clock.advance(DAY)
    fetched = world.http.get(f"/v1/submissions/{sent.submission_id}", headers=world.subscriber)
    assert fetched.status_code == 200, fetched.text
    assert world.assert_status_from_log(sent).status is ApiStatus.NOTIFIED
    token = receiver_set(
        world.destination,
        Event.ACCEPT_SUBMISSION.value,
        submission_id=sent.submission_id,
        case_id=sent.case_id,
        payload={"authenticationTags": sent.tags},
        clock=world.live.clock,
    )
    posted = world.http.post(
        f"/v1/cases/{sent.case_id}/events",
        content=token.encode(),
        headers=jose_headers(world.subscriber),
    )
    assert posted.status_code == 204, posted.text
    assert world.assert_status_from_log(sent).status is ApiStatus.ACCEPTED
    world.live.manual_clock.advance(7 * DAY)
    _deadlines(world.live)
    _deadlines(world.live)
    assert not any(blob_exists(world.live, key) for key in keys)
    names = world.names(sent)
    assert names[-2:] == ["accept-submission", "delete-submission"]
    assert names.count("delete-submission") == 1
    state = world.assert_status_from_log(sent)
    assert (state.status, state.content_deleted) == (ApiStatus.ACCEPTED, True)
    # The content is gone: submission and attachment answer 409 (as in test_api_submissions).
    attachment_id = next(iter(sent.attachments))
    gone_content = assert_problem(
        world.http.get(f"/v1/submissions/{sent.submission_id}", headers=world.subscriber),
        409,
        "submission-state-invalid",
    )
    assert "can no longer be fetched" in gone_content["detail"]
    assert_problem(
        world.http.get(
            f"/v1/submissions/{sent.submission_id}/attachments/{attachment_id}",
            headers=world.subscriber,
        ),
        409,
        "submission-state-invalid",
    )
    # 730 days after the last event the whole case is gone; the API no longer knows it.
    world.live.manual_clock.advance(730 * DAY)
    _deadlines(world.live)
    gone = world.http.get(f"/v1/cases/{sent.case_id}/events", headers=world.sender)
    assert_problem(gone, 404, "case-not-found")
    assert load_submission(world.live, sent.submission_id) is None


def test_a_hanging_receiver_never_slows_the_request_that_caused_the_callback(
    start_server: StartServer, clock: ManualClock
) -> None:
    live = start_server(
        callbacks={"request_timeout": 10}, workers={"enabled": True, "callback_interval": 0.2}
    )
    with (
        CallbackReceiver(secret=DEST_SECRET, clock=clock, hang=30) as slow,
        CallbackReceiver(secret=DEST_SECRET, clock=clock) as fast,
    ):
        slow_world = World(live, slow)
        fast_world = World(live, fast)
        try:
            started = time.monotonic()
            slow_world.send(None, attachments=0)
            slow.wait_for(1, timeout=10)
            # The submit returned long before the receiver would answer.
            assert time.monotonic() - started < 5
            started = time.monotonic()
            sent = fast_world.send(None, attachments=0)
            [got] = fast.wait_for(1, timeout=5)
            assert time.monotonic() - started < 5
            assert got.verified
            assert got.body == new_submissions_body(fast_world.summary(sent))
        finally:
            slow.release()
            slow_world.http.close()
            fast_world.http.close()


def test_incomplete_submission_over_http_is_deleted_after_a_day(
    world: World, receivers: tuple[CallbackReceiver, CallbackReceiver]
) -> None:
    _, sender_rx = receivers
    sent = world.send(sender_rx, attachments=2, submit=False)
    keys = _blob_keys(world, sent)
    assert all(blob_exists(world.live, key) for key in keys)
    world.live.manual_clock.advance(DAY + timedelta(seconds=1))
    _deadlines(world.live)
    assert not any(blob_exists(world.live, key) for key in keys)
    assert world.names(sent) == ["create-submission", "delete-submission"]
    assert world.assert_status_from_log(sent).status is ApiStatus.DELETED
    late = world.http.put(
        f"/v1/submissions/{sent.submission_id}",
        json={"encryptedMetadata": sent.encrypted_metadata},
        headers=world.sender,
    )
    assert_problem(late, 409, "submission-state-invalid")
    _callbacks(world.live)
    assert [r.body for r in sender_rx.received] == [new_events_body(world.summary(sent))]
    assert all(r.verified for r in sender_rx.received)
    assert isinstance(world.http, httpx.Client)
