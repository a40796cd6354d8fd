"""Event-log writer and transactional outbox on a live server, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from fitconnect_kit.protocol.events import Event, NotifyType, parse_set, submission_subject
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.server.domain.eventlog import (
    DuplicateEventError,
    EventRecord,
    append_posted_event,
    append_zd_event,
    read_event_log,
)
from fitconnect_kit.server.domain.outbox import enqueue_new_events
from fitconnect_kit.server.storage.models import CallbackDelivery, Case, Submission
from fitconnect_kit.server.storage.models import Event as EventRow
from tests.integration.conftest import StartServer
from tests.support.live import LiveServer
from tests.support.submissions import (
    create_submission,
    decide_submission,
    event_names,
    event_tokens,
    load_deliveries,
    verified_log,
)


@pytest.fixture
def server(start_server: StartServer) -> LiveServer:
    return start_server()


def _append(
    live: LiveServer, case_id: str, submission_id: str, dedup_key: str | None
) -> EventRecord | None:
    async def run() -> EventRecord | None:
        async with live.zd.sessions() as session, session.begin():
            return await append_zd_event(
                session,
                live.zd,
                case_id=case_id,
                submission_id=submission_id,
                event=Event.NOTIFY_SUBMISSION,
                payload={"notifyType": NotifyType.POLLING.value},
                dedup_key=dedup_key,
            )

    return live.run(run())


def _count_events(live: LiveServer, dedup_key: str) -> int:
    async def run() -> int:
        async with live.zd.sessions() as session:
            count = await session.scalar(
                select(func.count()).select_from(EventRow).where(EventRow.dedup_key == dedup_key)
            )
            return int(count or 0)

    return live.run(run())


def test_zd_event_is_signed_verifiable_and_bumps_the_case(server: LiveServer) -> None:
    destination = server.seed.destination()
    seeded = create_submission(server, destination, attachments=2)
    server.manual_clock.advance(timedelta(hours=5))
    record = _append(server, seeded.case_id, seeded.submission_id, None)
    assert record is not None
    assert record.event is Event.NOTIFY_SUBMISSION
    assert record.issuer == server.base_url

    log = verified_log(server, seeded.case_id)
    assert event_names(log) == ["create-submission", "submit-submission", "notify-submission"]
    last = log[-1]
    assert last.jti == record.jti
    assert last.subject == submission_subject(seeded.submission_id)
    assert last.txn == f"case:{seeded.case_id}"
    assert last.issued_at == int(server.clock.now().timestamp())
    assert last.header["kid"] == server.zd.keys.set_signing.kid
    assert last.header["typ"] == "secevent+jwt"
    assert log[1].authentication_tags == seeded.tags

    async def case_last_event() -> object:
        async with server.zd.sessions() as session:
            case = await session.get(Case, seeded.case_id)
            assert case is not None
            return case.last_event_at

    assert server.run(case_last_event()) == server.clock.now()


def test_dedup_key_makes_an_event_idempotent(server: LiveServer) -> None:
    destination = server.seed.destination()
    seeded = create_submission(server, destination, attachments=0)
    key = f"notify-submission:{seeded.submission_id}:polling"
    assert _append(server, seeded.case_id, seeded.submission_id, key) is not None
    assert _append(server, seeded.case_id, seeded.submission_id, key) is None
    assert _count_events(server, key) == 1


def test_concurrent_appends_with_one_dedup_key_store_one_event(server: LiveServer) -> None:
    destination = server.seed.destination()
    seeded = create_submission(server, destination, attachments=0)
    key = f"race:{seeded.submission_id}"

    async def one() -> EventRecord | None:
        async with server.zd.sessions() as session, session.begin():
            record = await append_zd_event(
                session,
                server.zd,
                case_id=seeded.case_id,
                submission_id=seeded.submission_id,
                event=Event.NOTIFY_SUBMISSION,
                payload={"notifyType": "callback"},
                dedup_key=key,
            )
            await asyncio.sleep(0.05)  # hold the transaction open while the others try
            return record

    async def many() -> list[EventRecord | None]:
        return list(await asyncio.gather(*(one() for _ in range(6))))

    results = server.run(many())
    assert sum(r is not None for r in results) == 1
    assert _count_events(server, key) == 1


def test_read_event_log_pages_in_log_order(server: LiveServer) -> None:
    destination = server.seed.destination()
    first = create_submission(server, destination, attachments=0)
    second = create_submission(server, destination, attachments=0, case_id=first.case_id)
    for _ in range(3):
        _append(server, first.case_id, first.submission_id, None)
    all_tokens = event_tokens(server, case_id=first.case_id)
    assert len(all_tokens) == 2 + 2 + 3

    async def page(**kwargs: object) -> tuple[list[str], int]:
        async with server.zd.sessions() as session:
            return await read_event_log(session, **kwargs)  # type: ignore[arg-type]

    tokens, total = server.run(page(case_id=first.case_id, offset=2, limit=3))
    assert total == 7
    assert tokens == all_tokens[2:5]
    tokens, total = server.run(page(submission_id=second.submission_id, offset=0, limit=500))
    assert total == 2
    assert [parse_set(t).submission_id for t in tokens] == [second.submission_id] * 2
    tokens, total = server.run(page(case_id=first.case_id, offset=100, limit=10))
    assert (tokens, total) == ([], 7)
    tokens, total = server.run(page(case_id=new_id(), offset=0, limit=10))
    assert (tokens, total) == ([], 0)


def test_posted_event_is_stored_as_is_and_only_once(server: LiveServer) -> None:
    destination = server.seed.destination()
    seeded = create_submission(server, destination, attachments=1)
    token = decide_submission(server, destination, seeded, accept=True)
    log = verified_log(server, seeded.case_id, destination)
    assert event_names(log)[-1] == "accept-submission"
    assert log[-1].token == token
    assert log[-1].issuer == destination.destination_id

    async def post_again() -> str:
        async with server.zd.sessions() as session, session.begin():
            try:
                await append_posted_event(
                    session,
                    server.zd,
                    case_id=seeded.case_id,
                    submission_id=seeded.submission_id,
                    token=parse_set(token),
                )
            except DuplicateEventError as exc:
                # The transaction is still usable after the refused duplicate.
                await session.scalar(select(func.count()).select_from(EventRow))
                return str(exc)
        return "stored twice"

    assert "already in the log" in server.run(post_again())
    assert event_tokens(server, case_id=seeded.case_id).count(token) == 1


def test_outbox_rows_roll_back_with_their_event(server: LiveServer) -> None:
    destination = server.seed.destination()
    seeded = create_submission(
        server,
        destination,
        attachments=0,
        sender_callback=("https://sender.example/cb", "sender-secret"),
    )
    before = len(event_tokens(server, case_id=seeded.case_id))

    class Boom(Exception):
        pass

    async def failing_transaction() -> None:
        async with server.zd.sessions() as session, session.begin():
            submission = await session.get(Submission, seeded.submission_id)
            assert submission is not None
            await append_zd_event(
                session,
                server.zd,
                case_id=seeded.case_id,
                submission_id=seeded.submission_id,
                event=Event.NOTIFY_SUBMISSION,
                payload={"notifyType": "polling"},
            )
            await enqueue_new_events(session, server.zd, submission, to_sender=True)
            count = await session.scalar(select(func.count()).select_from(CallbackDelivery))
            assert count == 1
            raise Boom

    with pytest.raises(Boom):
        server.run(failing_transaction())
    assert len(event_tokens(server, case_id=seeded.case_id)) == before
    assert load_deliveries(server) == []
