"""The callback outbox (transactional): callbacks exist if and only if their event committed.

Domain code calls :func:`enqueue_new_submissions` / :func:`enqueue_new_events` in the same
session and transaction that appends the event; the rows of ``callback_deliveries`` commit or
roll back together with it. The ``callbacks`` worker (``server/workers/callbacks.py``) delivers
them later, with retries — a slow or failing receiver never delays the request that caused the
callback.

**Waking the worker**: enqueuing registers an ``after_commit`` hook on the session; when (and
only when) the transaction commits, ``zd.workers.wake("callbacks")`` is called, so the local
worker starts a pass at once. Callers do not need to do anything. A rollback drops the request.
Other nodes find the rows on their next pass (``workers.callback_interval``).

**Whose secret signs** (no extra column): a row with ``destination_id`` set goes to the
destination and is signed with ``destinations.callback_secret``; a row with ``destination_id``
``NULL`` goes to the sender of ``submission_id`` and is signed with
``submissions.sender_callback_secret``. Secrets are read when the callback is sent (a rotated
secret applies to pending callbacks), never copied into the outbox, never logged. ``target_url``
is fixed when the callback is enqueued. The body bytes are stored and sent byte for byte; the
timestamp and HMAC are computed at send time.

Callback rules (reference §9, "a system receives callbacks for changes it did not make"):
NEW_SUBMISSIONS to the destination on submit; NEW_EVENTS to the sender for notify, forward,
accept, reject, ZD reject and delete; ZD-issued reject/delete also to the destination.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Protocol, cast

from sqlalchemy import (
    CursorResult,
    Integer,
    LargeBinary,
    String,
    bindparam,
    insert,
    literal,
    select,
)
from sqlalchemy import event as sa_event
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from fitconnect_kit.protocol.callbacks import new_events_body, new_submissions_body
from fitconnect_kit.server.storage.models import (
    CALLBACK_DELIVERIES,
    DESTINATIONS,
    DeliveryStatus,
    UtcDateTime,
)

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

CALLBACKS_WORKER = "callbacks"
_WAKE_KEY = "fitconnect_kit.outbox.wake"
_HOOK_KEY = "fitconnect_kit.outbox.hooked"


class CallbackKind(enum.StrEnum):
    """Values of ``callback_deliveries.kind``."""

    NEW_SUBMISSIONS = "new-submissions"
    NEW_EVENTS = "new-events"
    NEW_REPLIES = "new-replies"


class SubmissionRef(Protocol):
    """What the outbox needs of a submission: an ORM ``Submission`` or a Core row will do."""

    @property
    def submission_id(self) -> str: ...

    @property
    def case_id(self) -> str: ...

    @property
    def destination_id(self) -> str: ...

    @property
    def sender_callback_url(self) -> str | None: ...

    @property
    def sender_callback_secret(self) -> str | None: ...


def _summary(submission: SubmissionRef) -> dict[str, str]:
    return {
        "destinationId": submission.destination_id,
        "submissionId": submission.submission_id,
        "caseId": submission.case_id,
    }


def _on_commit(session: Session) -> None:
    zd: ZdState | None = session.info.pop(_WAKE_KEY, None)
    if zd is not None:
        zd.workers.wake(CALLBACKS_WORKER)


def _on_rollback(session: Session) -> None:
    session.info.pop(_WAKE_KEY, None)


def wake_after_commit(session: AsyncSession, zd: ZdState) -> None:
    """Wake the local callbacks worker once the session's current transaction commits."""
    sync_session = session.sync_session
    if not sync_session.info.get(_HOOK_KEY):
        sa_event.listen(sync_session, "after_commit", _on_commit)
        sa_event.listen(sync_session, "after_rollback", _on_rollback)
        sync_session.info[_HOOK_KEY] = True
    sync_session.info[_WAKE_KEY] = zd


_INSERT_DELIVERY = insert(CALLBACK_DELIVERIES)
#: Enqueue to a destination's callback in one statement: ``INSERT … SELECT`` from the
#: destination row inserts nothing when it has no callback (URL and secret both needed).
#: (Bound values are named ``new_*``: SQLAlchemy would take column names as more columns.)
_INSERT_DELIVERY_TO_DESTINATION = insert(CALLBACK_DELIVERIES).from_select(
    [
        "kind",
        "target_url",
        "destination_id",
        "submission_id",
        "payload",
        "attempts",
        "next_attempt_at",
        "status",
        "created_at",
    ],
    select(
        bindparam("new_kind", type_=String),
        DESTINATIONS.c.callback_url,
        DESTINATIONS.c.destination_id,
        bindparam("new_submission_id", type_=String),
        bindparam("new_payload", type_=LargeBinary),
        literal(0, Integer),
        bindparam("new_now", type_=UtcDateTime()),
        literal(DeliveryStatus.PENDING.value, String),
        bindparam("new_now", type_=UtcDateTime()),
    ).where(
        DESTINATIONS.c.destination_id == bindparam("new_destination_id"),
        # ``!= ''`` is never true for NULL either: both must be set and non-empty.
        DESTINATIONS.c.callback_url != "",
        DESTINATIONS.c.callback_secret != "",
    ),
)


async def _enqueue_to_sender(
    session: AsyncSession,
    zd: ZdState,
    *,
    kind: CallbackKind,
    url: str,
    body: bytes,
    submission_id: str,
) -> None:
    now = zd.clock.now()
    await session.execute(
        _INSERT_DELIVERY,
        {
            "kind": kind.value,
            "target_url": url,
            "destination_id": None,
            "submission_id": submission_id,
            "payload": body,
            "attempts": 0,
            "next_attempt_at": now,
            "status": DeliveryStatus.PENDING.value,
            "created_at": now,
        },
    )
    wake_after_commit(session, zd)


async def _enqueue_to_destination(
    session: AsyncSession,
    zd: ZdState,
    *,
    kind: CallbackKind,
    body: bytes,
    destination_id: str,
    submission_id: str,
) -> None:
    """A callback to the destination's callback URL, if it has one (and a secret)."""
    result = cast(
        CursorResult[Any],
        await session.execute(
            _INSERT_DELIVERY_TO_DESTINATION,
            {
                "new_kind": kind.value,
                "new_submission_id": submission_id,
                "new_payload": body,
                "new_now": zd.clock.now(),
                "new_destination_id": destination_id,
            },
        ),
    )
    if result.rowcount:
        wake_after_commit(session, zd)


async def enqueue_new_submissions(
    session: AsyncSession, zd: ZdState, submission: SubmissionRef
) -> None:
    """NEW_SUBMISSIONS about ``submission`` to its destination's callback (if configured)."""
    await _enqueue_to_destination(
        session,
        zd,
        kind=CallbackKind.NEW_SUBMISSIONS,
        body=new_submissions_body([_summary(submission)]),
        destination_id=submission.destination_id,
        submission_id=submission.submission_id,
    )


async def enqueue_new_events(
    session: AsyncSession,
    zd: ZdState,
    submission: SubmissionRef,
    *,
    to_sender: bool = True,
    to_destination: bool = False,
) -> None:
    """NEW_EVENTS about ``submission`` to the sender's per-submission callback and/or the
    destination's callback — each only if configured (URL and secret present)."""
    body = new_events_body([_summary(submission)])
    if to_sender and submission.sender_callback_url and submission.sender_callback_secret:
        await _enqueue_to_sender(
            session,
            zd,
            kind=CallbackKind.NEW_EVENTS,
            url=submission.sender_callback_url,
            body=body,
            submission_id=submission.submission_id,
        )
    if to_destination:
        await _enqueue_to_destination(
            session,
            zd,
            kind=CallbackKind.NEW_EVENTS,
            body=body,
            destination_id=submission.destination_id,
            submission_id=submission.submission_id,
        )
