"""Deadlines of FIT-Connect (reference §3.6, §7; durations from ``config.deadlines``).

* **incomplete** — ``incomplete`` and ``created_at`` ≤ now − 1 d: delete content, ZD
  ``delete-submission``, status ``deleted``, NEW_EVENTS to the sender;
* **reminders** — ``submitted``, never fetched, ``submitted_at`` ≤ now − 3 d / 9 d: one
  structured log line per reminder, ``reminders_sent`` = 1 / 2;
* **reject** — ``submitted``/``forwarded``, undecided, ``submitted_at`` ≤ now − 14 d: ZD
  ``reject-submission`` (problem ``submission-expired`` + the ZD's authenticationTags), status
  ``rejected``, ``decided_at``; NEW_EVENTS to sender and destination;
* **delete unfetched** — content present, ``submitted_at`` ≤ now − 21 d: delete content, ZD
  ``delete-submission``; NEW_EVENTS to sender and destination;
* **delete after pickup** — content present, ``first_fetched_at`` ≤ now − 7 d: the same;
* **retention** — ``cases.last_event_at`` ≤ now − 730 d: remaining blobs, the case, its
  submissions and its event log are deleted;
* delivered/failed outbox rows are pruned after ``compat.CALLBACK_DELIVERY_RETENTION``.

A deletion without a decision sets the status to ``deleted`` (compat ``UNDECIDED_DELETION_STATUS``);
after a decision the status stays. There is one ``delete-submission`` per submission
(dedup key ``delete-submission:<id>``) and one deadline reject (``deadline-reject:<id>``).

Every transition runs in its own transaction on a freshly read, locked row (PostgreSQL
``FOR UPDATE SKIP LOCKED``: a row another node is working on is skipped; SQLite serializes
writers) and re-checks its condition there, so passes may run twice or on several nodes at once
without duplicate events, callbacks or reminders.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.protocol.events import AuthenticationTags, Event
from fitconnect_kit.protocol.problems import INSTANCE_SUBMISSION, RejectProblems, reject_problem
from fitconnect_kit.server.compat import (
    CALLBACK_DELIVERY_RETENTION,
    DEADLINE_REJECT_PROBLEM_NAME,
    INCOMPLETE_DELETION_NOTIFIES_DESTINATION,
    REMINDER_LOGGER,
    UNDECIDED_DELETION_STATUS,
)
from fitconnect_kit.server.domain.content import delete_submission_content
from fitconnect_kit.server.domain.eventlog import append_zd_event, zd_events_of
from fitconnect_kit.server.domain.outbox import enqueue_new_events
from fitconnect_kit.server.storage.models import (
    CallbackDelivery,
    Case,
    DeliveryStatus,
    Submission,
    SubmissionStatus,
)

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

logger = logging.getLogger("fitconnect_kit.server.deadlines")
reminder_logger = logging.getLogger(REMINDER_LOGGER)

BATCH_SIZE = 200
_UNDECIDED = (SubmissionStatus.SUBMITTED.value, SubmissionStatus.FORWARDED.value)
_S = Submission


def delete_dedup_key(submission_id: str) -> str:
    return f"delete-submission:{submission_id}"


def reject_dedup_key(submission_id: str) -> str:
    return f"deadline-reject:{submission_id}"


@dataclass
class DeadlinePassResult:
    """Transitions one pass performed (rows another pass or node handled are not counted)."""

    incomplete_deleted: int = 0
    reminders: int = 0
    rejected: int = 0
    deleted_unfetched: int = 0
    deleted_after_pickup: int = 0
    cases_purged: int = 0
    deliveries_pruned: int = 0
    #: ``(submission_id, reminder number)`` of the reminders logged in this pass.
    reminder_log: list[tuple[str, int]] = field(default_factory=list)


# --- helpers -------------------------------------------------------------------------------------


async def _candidate_ids(zd: ZdState, conditions: Sequence[Any]) -> AsyncIterator[str]:
    """Ids of submissions matching ``conditions``, in batches (keyset on the id)."""
    last = ""
    while True:
        async with zd.sessions() as session:
            batch = list(
                await session.scalars(
                    select(_S.submission_id)
                    .where(*conditions, _S.submission_id > last)
                    .order_by(_S.submission_id)
                    .limit(BATCH_SIZE)
                )
            )
        for submission_id in batch:
            yield submission_id
        if len(batch) < BATCH_SIZE:
            return
        last = batch[-1]


async def _lock(
    session: AsyncSession, zd: ZdState, submission_id: str, conditions: Sequence[Any]
) -> Submission | None:
    """The submission, locked, if it still matches ``conditions`` (``None`` otherwise)."""
    statement = (
        select(_S)
        .where(_S.submission_id == submission_id, *conditions)
        .execution_options(populate_existing=True)
    )
    if zd.database.is_postgres:
        statement = statement.with_for_update(skip_locked=True)
    return (await session.scalars(statement)).first()


async def _issue_delete(
    session: AsyncSession, zd: ZdState, submission: Submission, *, to_destination: bool
) -> bool:
    """Delete the content, issue ``delete-submission`` once; ``True`` if this call issued it."""
    await delete_submission_content(session, zd, submission)
    record = await append_zd_event(
        session,
        zd,
        case_id=submission.case_id,
        submission_id=submission.submission_id,
        event=Event.DELETE_SUBMISSION,
        payload={},
        dedup_key=delete_dedup_key(submission.submission_id),
    )
    if submission.status in (SubmissionStatus.INCOMPLETE.value, *_UNDECIDED):
        submission.status = SubmissionStatus(UNDECIDED_DELETION_STATUS).value
    submission.updated_at = zd.clock.now()
    if record is None:
        return False
    await enqueue_new_events(session, zd, submission, to_sender=True, to_destination=to_destination)
    return True


async def _zd_tags(
    session: AsyncSession, zd: ZdState, submission: Submission
) -> AuthenticationTags | None:
    """The authenticationTags of the ZD's own ``submit-submission`` in the log (if any)."""
    submitted = await zd_events_of(session, zd, submission.submission_id, Event.SUBMIT_SUBMISSION)
    for st in reversed(submitted):
        if st.authentication_tags is not None:
            return st.authentication_tags
    return None


# --- the rules -----------------------------------------------------------------------------------


async def expire_incomplete(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    cutoff = now - zd.config.deadlines.incomplete_submission
    conditions = [_S.status == SubmissionStatus.INCOMPLETE.value, _S.created_at <= cutoff]
    async for submission_id in _candidate_ids(zd, conditions):
        async with zd.sessions() as session, session.begin():
            submission = await _lock(session, zd, submission_id, conditions)
            if submission is None:
                continue
            issued = await _issue_delete(
                session, zd, submission, to_destination=INCOMPLETE_DELETION_NOTIFIES_DESTINATION
            )
        if issued:
            result.incomplete_deleted += 1
            logger.info("incomplete submission %s deleted after the deadline", submission_id)


async def send_reminders(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    deadlines = zd.config.deadlines
    conditions = [
        _S.status == SubmissionStatus.SUBMITTED.value,
        _S.first_fetched_at.is_(None),
        _S.submitted_at <= now - deadlines.first_reminder,
        _S.reminders_sent < 2,
    ]
    async for submission_id in _candidate_ids(zd, conditions):
        async with zd.sessions() as session, session.begin():
            submission = await _lock(session, zd, submission_id, conditions)
            if submission is None or submission.submitted_at is None:
                continue
            due = 2 if submission.submitted_at <= now - deadlines.second_reminder else 1
            already = submission.reminders_sent or 0
            if already >= due:
                continue
            submission.reminders_sent = due
            submission.updated_at = now
            destination_id = submission.destination_id
            submitted_at = submission.submitted_at
        for number in range(already + 1, due + 1):
            days = (now - submitted_at).days
            reminder_logger.warning(
                "operator reminder %d: submission %s for destination %s not picked up for %d days",
                number,
                submission_id,
                destination_id,
                days,
                extra={
                    "event": "operator-reminder",
                    "reminder": number,
                    "submission_id": submission_id,
                    "destination_id": destination_id,
                    "days_undelivered": days,
                },
            )
            result.reminders += 1
            result.reminder_log.append((submission_id, number))


async def reject_unfetched(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    period = zd.config.deadlines.reject_unfetched
    conditions = [
        _S.status.in_(_UNDECIDED),
        _S.decided_at.is_(None),
        _S.submitted_at <= now - period,
    ]
    problem_type = RejectProblems.by_name(DEADLINE_REJECT_PROBLEM_NAME)
    assert problem_type is not None, "compat.DEADLINE_REJECT_PROBLEM_NAME is not in the catalog"
    problem = reject_problem(
        problem_type,
        INSTANCE_SUBMISSION,
        detail=(
            f"Die Einreichung wurde nicht innerhalb von {period.days} Tagen abgeholt und "
            "beschieden; der Zustelldienst hat sie als unzustellbar zurückgewiesen."
        ),
    )
    async for submission_id in _candidate_ids(zd, conditions):
        async with zd.sessions() as session, session.begin():
            submission = await _lock(session, zd, submission_id, conditions)
            if submission is None:
                continue
            payload: dict[str, Any] = {"problems": [problem]}
            tags = await _zd_tags(session, zd, submission)
            if tags is not None:
                payload["authenticationTags"] = tags
            record = await append_zd_event(
                session,
                zd,
                case_id=submission.case_id,
                submission_id=submission.submission_id,
                event=Event.REJECT_SUBMISSION,
                payload=payload,
                dedup_key=reject_dedup_key(submission.submission_id),
            )
            submission.status = SubmissionStatus.REJECTED.value
            submission.decided_at = now
            submission.updated_at = now
            if record is not None:
                await enqueue_new_events(
                    session, zd, submission, to_sender=True, to_destination=True
                )
        if record is not None:
            result.rejected += 1
            logger.info(
                "submission %s rejected by the Zustelldienst (not picked up)", submission_id
            )


async def delete_unfetched(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    conditions = [
        _S.content_deleted_at.is_(None),
        _S.submitted_at.is_not(None),
        _S.submitted_at <= now - zd.config.deadlines.delete_unfetched,
    ]
    async for submission_id in _candidate_ids(zd, conditions):
        async with zd.sessions() as session, session.begin():
            submission = await _lock(session, zd, submission_id, conditions)
            if submission is None:
                continue
            issued = await _issue_delete(session, zd, submission, to_destination=True)
        if issued:
            result.deleted_unfetched += 1
            logger.info("submission %s deleted (retention after submit over)", submission_id)


async def delete_after_pickup(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    conditions = [
        _S.content_deleted_at.is_(None),
        _S.first_fetched_at.is_not(None),
        _S.first_fetched_at <= now - zd.config.deadlines.delete_after_pickup,
    ]
    async for submission_id in _candidate_ids(zd, conditions):
        async with zd.sessions() as session, session.begin():
            submission = await _lock(session, zd, submission_id, conditions)
            if submission is None:
                continue
            issued = await _issue_delete(session, zd, submission, to_destination=True)
        if issued:
            result.deleted_after_pickup += 1
            logger.info("submission %s deleted (retention after pickup over)", submission_id)


async def purge_event_logs(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    """Cases whose last event is older than the retention: blobs, rows and event log go."""
    cutoff = now - zd.config.deadlines.event_log_retention
    last = ""
    while True:
        async with zd.sessions() as session:
            batch = list(
                await session.scalars(
                    select(Case.case_id)
                    .where(Case.last_event_at <= cutoff, Case.case_id > last)
                    .order_by(Case.case_id)
                    .limit(BATCH_SIZE)
                )
            )
        for case_id in batch:
            if await _purge_case(zd, case_id, cutoff):
                result.cases_purged += 1
        if len(batch) < BATCH_SIZE:
            return
        last = batch[-1]


async def _purge_case(zd: ZdState, case_id: str, cutoff: datetime) -> bool:
    async with zd.sessions() as session, session.begin():
        statement = select(Case).where(Case.case_id == case_id, Case.last_event_at <= cutoff)
        if zd.database.is_postgres:
            statement = statement.with_for_update(skip_locked=True)
        case = (await session.scalars(statement)).first()
        if case is None:
            return False
        # Content should be gone for long; remove any leftovers for real before the rows go.
        submissions = await session.scalars(select(_S).where(_S.case_id == case_id))
        for submission in submissions.all():
            await delete_submission_content(session, zd, submission)
        # ON DELETE CASCADE removes submissions, attachments, events and callback deliveries.
        await session.execute(
            delete(Case).where(Case.case_id == case_id).execution_options(synchronize_session=False)
        )
    logger.info("event log and data of case %s deleted (retention over)", case_id)
    return True


async def prune_deliveries(zd: ZdState, now: datetime, result: DeadlinePassResult) -> None:
    """Delivered and failed outbox rows are kept for a while for diagnosis, then removed."""
    cutoff = now - CALLBACK_DELIVERY_RETENTION
    async with zd.sessions() as session, session.begin():
        deleted = await session.execute(
            delete(CallbackDelivery)
            .where(
                or_(
                    (CallbackDelivery.status == DeliveryStatus.DELIVERED.value)
                    & (CallbackDelivery.delivered_at <= cutoff),
                    (CallbackDelivery.status == DeliveryStatus.FAILED.value)
                    & (CallbackDelivery.created_at <= cutoff),
                )
            )
            .returning(CallbackDelivery.id)
            .execution_options(synchronize_session=False)
        )
        result.deliveries_pruned += len(deleted.all())


async def run_deadlines_pass(zd: ZdState) -> DeadlinePassResult:
    """Apply every deadline once (in the order of the table above)."""
    result = DeadlinePassResult()
    now = zd.clock.now()
    await expire_incomplete(zd, now, result)
    await send_reminders(zd, now, result)
    await reject_unfetched(zd, now, result)
    await delete_unfetched(zd, now, result)
    await delete_after_pickup(zd, now, result)
    await purge_event_logs(zd, now, result)
    await prune_deliveries(zd, now, result)
    return result
