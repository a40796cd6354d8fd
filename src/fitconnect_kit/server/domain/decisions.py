"""Receiver SETs posted to ``POST /v1/cases/{caseId}/events`` (reference §8.1, §8.5, §12.3).

The Zustelldienst accepts ``forward-submission``, ``accept-submission`` and
``reject-submission`` from the receiving system of the submission's destination when

1. the token is a syntactically valid SET (``protocol.events.parse_set``) that a receiver may
   post (``check_postable``: event, destination issuer, payload, ``$schema`` version);
2. ``txn`` is the case of the request path and the submission named in ``sub`` belongs to it;
3. ``iss`` is that submission's destination and the signature verifies with the destination's
   registered signature key named by the SET's ``kid`` (PS512);
4. its ``jti`` is new, and the submission is ``submitted`` or ``forwarded``.

Then the token is stored exactly as posted, the status changes (``decided_at`` for accept and
reject) in the same transaction, guarded by ``UPDATE … WHERE status IN (…)`` so two concurrent
decisions cannot both succeed, and the sender gets NEW_EVENTS. Every refusal says why.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import CursorResult, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.events import (
    Event,
    SecurityEventToken,
    check_postable,
    parse_set,
    verify_set,
)
from fitconnect_kit.protocol.ids import parse_uuid
from fitconnect_kit.protocol.keys import KeyPurpose
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.compat import DECIDABLE_STATUSES
from fitconnect_kit.server.domain.eventlog import DuplicateEventError, append_posted_event
from fitconnect_kit.server.domain.outbox import enqueue_new_events
from fitconnect_kit.server.problems import ApiError
from fitconnect_kit.server.storage.models import Case, DestinationKey, Submission, SubmissionStatus
from fitconnect_kit.server.storage.models import Event as EventRow

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.state import ZdState

NEW_STATUS: dict[Event, SubmissionStatus] = {
    Event.FORWARD_SUBMISSION: SubmissionStatus.FORWARDED,
    Event.ACCEPT_SUBMISSION: SubmissionStatus.ACCEPTED,
    Event.REJECT_SUBMISSION: SubmissionStatus.REJECTED,
}


def _invalid(detail: str) -> ApiError:
    return ApiError(ApiProblems.INVALID_EVENT, detail)


def parse_posted_set(body: bytes) -> tuple[str, SecurityEventToken]:
    """Syntax and postability of a posted SET (no database, no signature yet)."""
    try:
        token = body.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _invalid("the body must be a SET in JWS compact serialization (ASCII)") from None
    if not token:
        raise _invalid("the body is empty; expected a SET in JWS compact serialization")
    try:
        st = parse_set(token)
        check_postable(st)
    except FitConnectError as exc:
        raise _invalid(f"the SET is not acceptable: {exc}") from None
    return token, st


async def record_posted_event(
    session: AsyncSession, zd: ZdState, principal: Principal, case_id: str, body: bytes
) -> SecurityEventToken:
    """Check and store a receiver's SET and apply its status change; returns the parsed SET."""
    token, st = parse_posted_set(body)

    case = await session.get(Case, case_id)
    if case is None or case.destination_id not in principal.linked_destination_ids:
        raise ApiError(ApiProblems.CASE_NOT_FOUND, f"case {case_id} not found")
    if st.case_id != case_id:
        raise _invalid(f"txn {st.txn!r} does not name the case of the request path ({case_id})")
    assert st.submission_id is not None  # receiver events are submission events
    submission = await session.get(Submission, st.submission_id)
    if submission is None or submission.case_id != case_id:
        raise _invalid(f"sub {st.subject!r} names no submission of case {case_id}")
    issuer = parse_uuid(st.issuer)
    if issuer != submission.destination_id:
        raise _invalid(
            f"iss must be the destination of the submission ({submission.destination_id}), "
            f"got {st.issuer!r}"
        )
    key = await session.get(DestinationKey, (submission.destination_id, st.kid))
    if key is None or key.purpose != KeyPurpose.SIGNATURE.value:
        raise _invalid(
            f"destination {submission.destination_id} has no signature key with kid {st.kid!r}"
        )
    try:
        verify_set(
            token,
            key.jwk,
            expected_subject=st.subject,
            expected_case_id=case_id,
            expected_issuer=submission.destination_id,
        )
    except FitConnectError as exc:
        raise _invalid(f"the SET's signature does not verify: {exc}") from None

    replayed = await session.scalar(select(EventRow.seq).where(EventRow.jti == st.jti))
    if replayed is not None:
        raise ApiError(
            ApiProblems.DUPLICATE_EVENT, f"an event with jti {st.jti} is already in the log"
        )

    new_status = NEW_STATUS[st.event]
    now = zd.clock.now()
    values: dict[str, Any] = {"status": new_status.value, "updated_at": now}
    if new_status is not SubmissionStatus.FORWARDED:
        values["decided_at"] = now
    result = cast(
        CursorResult[Any],
        await session.execute(
            update(Submission)
            .where(
                Submission.submission_id == submission.submission_id,
                Submission.status.in_(DECIDABLE_STATUSES),
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        ),
    )
    if result.rowcount != 1:
        submission_id = submission.submission_id
        await session.rollback()
        current = await session.scalar(
            select(Submission.status).where(Submission.submission_id == submission_id)
        )
        await session.rollback()
        raise ApiError(
            ApiProblems.SUBMISSION_STATE_INVALID,
            f"submission {submission_id} is {current}; {st.event.short_name} is "
            f"only possible while it is {' or '.join(DECIDABLE_STATUSES)}",
            submissionStatus=current,
        )
    try:
        await append_posted_event(
            session, zd, case_id=case_id, submission_id=submission.submission_id, token=st
        )
    except DuplicateEventError:
        await session.rollback()
        raise ApiError(
            ApiProblems.DUPLICATE_EVENT, f"an event with jti {st.jti} is already in the log"
        ) from None
    await enqueue_new_events(session, zd, submission, to_sender=True)
    await session.commit()
    return st
