"""Submission API v1, event logs: reading them and receiver SETs posted to
``POST /v1/cases/{caseId}/events`` (accept, reject, forward) with every refusal.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from fitconnect_kit.protocol import events
from fitconnect_kit.protocol.events import Event
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.problems import INSTANCE_METADATA, RejectProblems, reject_problem
from fitconnect_kit.server.storage.models import Event as EventRow
from fitconnect_kit.server.storage.models import Submission
from tests.keycache import rsa_key
from tests.support.live import LiveServer
from tests.support.seed import (
    ClientCredentials,
    SeededDestination,
    SentSubmission,
    assert_problem,
    jose_headers,
    receiver_set,
    send_submission,
)

ACCEPT = Event.ACCEPT_SUBMISSION.value
REJECT = Event.REJECT_SUBMISSION.value
FORWARD = Event.FORWARD_SUBMISSION.value


@dataclass(frozen=True)
class World:
    dest: SeededDestination
    other_dest: SeededDestination  # its own keys (other kids)
    sender: ClientCredentials
    other_sender: ClientCredentials
    subscriber: ClientCredentials
    other_subscriber: ClientCredentials


@pytest.fixture(scope="module")
def world(live: LiveServer) -> World:
    seed = live.seed
    dest = seed.destination()
    other = seed.destination(key_indexes=(120, 121, 122))
    return World(
        dest=dest,
        other_dest=other,
        sender=seed.sender(),
        other_sender=seed.sender(),
        subscriber=seed.subscriber(dest.destination_id),
        other_subscriber=seed.subscriber(other.destination_id),
    )


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


@pytest.fixture
def sender(live: LiveServer, world: World) -> dict[str, str]:
    return live.seed.auth(world.sender)


@pytest.fixture
def subscriber(live: LiveServer, world: World) -> dict[str, str]:
    return live.seed.auth(world.subscriber)


def _set(
    live: LiveServer,
    world: World,
    sent: SentSubmission,
    event: str = ACCEPT,
    **overrides: Any,
) -> str:
    payload: dict[str, Any] = {"authenticationTags": sent.tags}
    if event == REJECT:
        payload = {
            "problems": [reject_problem(RejectProblems.SYNTAX_VIOLATION, INSTANCE_METADATA)],
            "authenticationTags": sent.tags,
        }
    options: dict[str, Any] = {
        "submission_id": sent.submission_id,
        "case_id": sent.case_id,
        "payload": payload,
        "clock": live.clock,
    }
    options.update(overrides)
    destination = options.pop("destination", world.dest)
    return receiver_set(destination, event, **options)


def _post(
    http: httpx.Client, auth: dict[str, str], case_id: str, token: str | bytes
) -> httpx.Response:
    content = token.encode() if isinstance(token, str) else token
    return http.post(f"/v1/cases/{case_id}/events", content=content, headers=jose_headers(auth))


def _status(live: LiveServer, submission_id: str) -> tuple[str, Any]:
    async def load() -> tuple[str, Any]:
        async with live.zd.sessions() as session:
            row = await session.get(Submission, submission_id)
            assert row is not None
            return row.status, row.decided_at

    return live.run(load())


def _names(http: httpx.Client, auth: dict[str, str], case_id: str) -> list[str]:
    log = http.get(f"/v1/cases/{case_id}/events", headers=auth).json()["eventLog"]
    return [events.parse_set(t).event.short_name for t in log]


# --- accepted SETs -----------------------------------------------------------------------------


def test_forward_then_accept(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest)
    assert (
        _post(http, subscriber, sent.case_id, _set(live, world, sent, FORWARD)).status_code == 204
    )
    assert _status(live, sent.submission_id) == ("forwarded", None)
    # A forwarded submission is no longer waiting, but can still be fetched and decided.
    waiting = http.get("/v1/submissions", headers=subscriber).json()["submissions"]
    assert sent.submission_id not in {s["submissionId"] for s in waiting}
    assert http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber).status_code == 200
    accept = _set(live, world, sent)
    response = _post(http, subscriber, sent.case_id, accept)
    assert response.status_code == 204, response.text
    assert response.content == b""
    status, decided_at = _status(live, sent.submission_id)
    assert status == "accepted"
    assert decided_at == live.clock.now()
    assert _names(http, sender, sent.case_id) == [
        "create-submission",
        "submit-submission",
        "forward-submission",
        "accept-submission",
    ]


def test_reject_needs_problems_and_decides(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest)
    payloads: list[dict[str, Any]] = [{}, {"problems": []}]
    for payload in payloads:
        unchecked = _set(live, world, sent, REJECT, payload=payload, sign_unchecked=True)
        problem = assert_problem(
            _post(http, subscriber, sent.case_id, unchecked), 422, "invalid-event"
        )
        assert "problem" in problem["detail"]
    reject = _set(live, world, sent, REJECT)
    assert _post(http, subscriber, sent.case_id, reject).status_code == 204
    assert _status(live, sent.submission_id)[0] == "rejected"
    # Rejected by the receiver (not by the ZD): the content may still be fetched.
    assert http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber).status_code == 200
    state = events.derive_state(
        [
            events.parse_set(t)
            for t in http.get(f"/v1/cases/{sent.case_id}/events", headers=sender).json()["eventLog"]
        ]
    )
    assert state.status.value == "rejected"
    assert state.problems[0].type == RejectProblems.SYNTAX_VIOLATION.type_uri


# --- refusals ----------------------------------------------------------------------------------


def test_posted_set_refusals(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest)
    other_case = send_submission(http, sender, world.dest)
    case = sent.case_id

    def refused(token: str | bytes, status: int, name: str, *words: str) -> None:
        problem = assert_problem(_post(http, subscriber, case, token), status, name)
        for word in words:
            assert word in problem["detail"], problem["detail"]

    # Syntax and what a receiver may post.
    refused(b"", 422, "invalid-event", "empty")
    refused(b"\xff\xfe", 422, "invalid-event", "ASCII")
    refused(b"not.a.set", 422, "invalid-event")
    refused(
        _set(live, world, sent, sign_unchecked=True, event=f"{events.EVENTS_BASE}made-up"),
        422,
        "invalid-event",
        "unknown event",
    )
    refused(
        _set(live, world, sent, Event.CREATE_SUBMISSION.value, payload={}, sign_unchecked=True),
        422,
        "invalid-event",
        "create-submission",
    )
    refused(
        _set(live, world, sent, Event.NOTIFY_SUBMISSION.value, sign_unchecked=True, payload={}),
        422,
        "invalid-event",
    )
    refused(
        _set(live, world, sent, issuer=live.base_url, sign_unchecked=True),
        422,
        "invalid-event",
    )
    # Keys and issuer.
    refused(
        _set(live, world, sent, kid="unknown-key-0001"),
        422,
        "invalid-event",
        "no signature key with kid",
    )
    refused(
        _set(live, world, sent, kid=world.dest.encryption_kid),
        422,
        "invalid-event",
        "no signature key",
    )
    refused(
        _set(live, world, sent, key=rsa_key(123)),  # right kid, wrong private key
        422,
        "invalid-event",
        "signature",
    )
    refused(
        _set(live, world, sent, destination=world.other_dest),  # validly signed by another one
        422,
        "invalid-event",
        "iss must be the destination",
    )
    # Case and subject.
    refused(
        _set(live, world, sent, case_id=other_case.case_id),
        422,
        "invalid-event",
        "txn",
    )
    refused(
        _set(
            live,
            world,
            sent,
            submission_id=other_case.submission_id,
            payload={"authenticationTags": other_case.tags},
        ),
        422,
        "invalid-event",
        "sub",
    )
    refused(_set(live, world, sent, submission_id=new_id()), 422, "invalid-event", "sub")
    # Media type, unknown and foreign cases, the sender.
    assert_problem(
        http.post(
            f"/v1/cases/{case}/events",
            content=_set(live, world, sent),
            headers={**subscriber, "Content-Type": "application/json"},
        ),
        415,
        "unsupported-media-type",
    )
    assert_problem(
        _post(http, subscriber, new_id(), _set(live, world, sent)), 404, "case-not-found"
    )
    assert_problem(
        _post(http, live.seed.auth(world.other_subscriber), case, _set(live, world, sent)),
        404,
        "case-not-found",
    )
    assert_problem(_post(http, sender, case, _set(live, world, sent)), 403, "forbidden")
    assert_problem(_post(http, subscriber, "x", _set(live, world, sent)), 400, "malformed-request")

    # Nothing of this reached the log or the status.
    assert _names(http, sender, case) == ["create-submission", "submit-submission"]
    assert _status(live, sent.submission_id) == ("submitted", None)

    # Replay and state.
    accept = _set(live, world, sent)
    assert _post(http, subscriber, case, accept).status_code == 204
    refused(accept, 409, "duplicate-event", "already in the log")
    refused(_set(live, world, sent), 409, "submission-state-invalid", "accepted")
    refused(_set(live, world, sent, REJECT), 409, "submission-state-invalid", "accepted")
    refused(_set(live, world, sent, FORWARD), 409, "submission-state-invalid")
    incomplete = send_submission(http, sender, world.dest, submit=False)
    problem = assert_problem(
        _post(http, subscriber, incomplete.case_id, _set(live, world, incomplete)),
        409,
        "submission-state-invalid",
    )
    assert "incomplete" in problem["detail"]
    assert _names(http, sender, case) == [
        "create-submission",
        "submit-submission",
        "accept-submission",
    ]


def test_concurrent_decisions_do_not_both_succeed(
    live: LiveServer, world: World, sender: dict[str, str], subscriber: dict[str, str]
) -> None:
    with live.client() as http:
        sent = send_submission(http, sender, world.dest, attachments=0)
    tokens = [_set(live, world, sent), _set(live, world, sent), _set(live, world, sent, REJECT)]
    barrier = threading.Barrier(len(tokens))

    def post(token: str) -> int:
        with live.client() as client:
            barrier.wait()
            return _post(client, subscriber, sent.case_id, token).status_code

    with ThreadPoolExecutor(len(tokens)) as pool:
        statuses = sorted(pool.map(post, tokens))
    assert statuses == [204, 409, 409]

    async def decisions() -> int:
        async with live.zd.sessions() as session:
            count = await session.scalar(
                select(func.count())
                .select_from(EventRow)
                .where(
                    EventRow.submission_id == sent.submission_id,
                    EventRow.event_uri.in_([ACCEPT, REJECT]),
                )
            )
            return int(count or 0)

    assert live.run(decisions()) == 1


def test_decisions_notify_the_sender_callback(
    live: LiveServer, world: World, http: httpx.Client, sender: dict[str, str]
) -> None:
    subscriber = live.seed.auth(world.subscriber)
    sent = send_submission(
        http,
        sender,
        world.dest,
        attachments=0,
        callback={"url": "https://onlinedienst.example/cb", "secret": "sender-secret-1234"},
    )
    http.get(f"/v1/submissions/{sent.submission_id}", headers=subscriber)  # notify (polling)
    assert _post(http, subscriber, sent.case_id, _set(live, world, sent)).status_code == 204

    async def kinds() -> list[tuple[str, str, str | None]]:
        from fitconnect_kit.server.storage.models import CallbackDelivery

        async with live.zd.sessions() as session:
            rows = await session.execute(
                select(
                    CallbackDelivery.kind,
                    CallbackDelivery.target_url,
                    CallbackDelivery.destination_id,
                )
                .where(CallbackDelivery.submission_id == sent.submission_id)
                .order_by(CallbackDelivery.id)
            )
            return [(r.kind, r.target_url, r.destination_id) for r in rows]

    assert live.run(kinds()) == [
        ("new-events", "https://onlinedienst.example/cb", None),  # notify-submission
        ("new-events", "https://onlinedienst.example/cb", None),  # accept-submission
    ]


# --- reading logs -----------------------------------------------------------------------------


def test_event_log_access_and_paging(
    live: LiveServer,
    world: World,
    http: httpx.Client,
    sender: dict[str, str],
    subscriber: dict[str, str],
) -> None:
    sent = send_submission(http, sender, world.dest, attachments=0)
    second = send_submission(http, sender, world.dest, attachments=0, case_id=sent.case_id)
    case_log = http.get(f"/v1/cases/{sent.case_id}/events", headers=subscriber).json()
    assert case_log["totalCount"] == case_log["count"] == 4
    only_second = http.get(f"/v1/submissions/{second.submission_id}/events", headers=sender)
    assert [events.parse_set(t).submission_id for t in only_second.json()["eventLog"]] == [
        second.submission_id,
        second.submission_id,
    ]
    empty = http.get(
        f"/v1/cases/{sent.case_id}/events", params={"offset": 10}, headers=sender
    ).json()
    assert empty == {"eventLog": [], "count": 0, "offset": 10, "totalCount": 4}
    limited = http.get(
        f"/v1/cases/{sent.case_id}/events", params={"limit": 500}, headers=sender
    ).json()
    assert limited["count"] == 4
    for params in ({"limit": 501}, {"limit": 0}, {"offset": -1}, {"limit": "x"}):
        assert_problem(
            http.get(f"/v1/cases/{sent.case_id}/events", params=params, headers=sender),
            400,
            "malformed-request",
        )
    # Another sender, a subscriber of another destination: like an unknown case.
    for auth in (live.seed.auth(world.other_sender), live.seed.auth(world.other_subscriber)):
        assert_problem(
            http.get(f"/v1/cases/{sent.case_id}/events", headers=auth), 404, "case-not-found"
        )
        assert_problem(
            http.get(f"/v1/submissions/{sent.submission_id}/events", headers=auth),
            404,
            "submission-not-found",
        )
    assert_problem(http.get(f"/v1/cases/{new_id()}/events", headers=sender), 404, "case-not-found")
    assert_problem(
        http.get(f"/v1/submissions/{new_id()}/events", headers=sender),
        404,
        "submission-not-found",
    )
