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

from sqlalchemy import CursorResult, and_, bindparam, exists, select, update
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
from fitconnect_kit.server.storage.models import (
    CASES,
    DESTINATION_KEYS,
    EVENTS,
    SUBMISSIONS,
    SubmissionStatus,
    UtcDateTime,
)

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


#: Everything the checks of a posted SET need, in one statement: the case (its destination),
#: the submission named in ``sub`` if it belongs to that case, the destination key named by
#: ``kid``, and whether the ``jti`` is in the log already.
_POSTED_EVENT_CONTEXT = (
    select(
        CASES.c.destination_id.label("case_destination_id"),
        SUBMISSIONS.c.submission_id,
        SUBMISSIONS.c.case_id,
        SUBMISSIONS.c.destination_id,
        SUBMISSIONS.c.sender_callback_url,
        SUBMISSIONS.c.sender_callback_secret,
        DESTINATION_KEYS.c.purpose.label("key_purpose"),
        DESTINATION_KEYS.c.jwk.label("key_jwk"),
        exists().where(EVENTS.c.jti == bindparam("jti")).label("replayed"),
    )
    .select_from(
        CASES.outerjoin(
            SUBMISSIONS,
            and_(
                SUBMISSIONS.c.submission_id == bindparam("submission_id"),
                SUBMISSIONS.c.case_id == CASES.c.case_id,
            ),
        ).outerjoin(
            DESTINATION_KEYS,
            and_(
                DESTINATION_KEYS.c.destination_id == SUBMISSIONS.c.destination_id,
                DESTINATION_KEYS.c.kid == bindparam("kid"),
            ),
        )
    )
    .where(CASES.c.case_id == bindparam("case_id"))
)


def _decide(*, decided: bool) -> Any:
    """``UPDATE … WHERE status IN (decidable)``: two concurrent decisions cannot both win."""
    values: dict[str, Any] = {
        "status": bindparam("new_status"),
        "updated_at": bindparam("now", type_=UtcDateTime()),
    }
    if decided:
        values["decided_at"] = bindparam("now", type_=UtcDateTime())
    return (
        update(SUBMISSIONS)
        .where(
            SUBMISSIONS.c.submission_id == bindparam("match_submission_id"),
            SUBMISSIONS.c.status.in_(DECIDABLE_STATUSES),
        )
        .values(**values)
    )


_DECIDE = _decide(decided=True)
_FORWARD = _decide(decided=False)
_CURRENT_STATUS = select(SUBMISSIONS.c.status).where(
    SUBMISSIONS.c.submission_id == bindparam("submission_id")
)


async def record_posted_event(
    session: AsyncSession, zd: ZdState, principal: Principal, case_id: str, body: bytes
) -> SecurityEventToken:
    """Check and store a receiver's SET and apply its status change; returns the parsed SET."""
    token, st = parse_posted_set(body)

    context = (
        await session.execute(
            _POSTED_EVENT_CONTEXT,
            {
                "case_id": case_id,
                "submission_id": st.submission_id,
                "kid": st.kid,
                "jti": st.jti,
            },
        )
    ).first()
    if context is None or context.case_destination_id not in principal.linked_destination_ids:
        raise ApiError(ApiProblems.CASE_NOT_FOUND, f"case {case_id} not found")
    if st.case_id != case_id:
        raise _invalid(f"txn {st.txn!r} does not name the case of the request path ({case_id})")
    assert st.submission_id is not None  # receiver events are submission events
    if context.submission_id is None:  # unknown, or of another case
        raise _invalid(f"sub {st.subject!r} names no submission of case {case_id}")
    destination_id = context.destination_id
    issuer = parse_uuid(st.issuer)
    if issuer != destination_id:
        raise _invalid(
            f"iss must be the destination of the submission ({destination_id}), got {st.issuer!r}"
        )
    if context.key_jwk is None or context.key_purpose != KeyPurpose.SIGNATURE.value:
        raise _invalid(f"destination {destination_id} has no signature key with kid {st.kid!r}")
    try:
        verify_set(
            token,
            context.key_jwk,
            expected_subject=st.subject,
            expected_case_id=case_id,
            expected_issuer=destination_id,
        )
    except FitConnectError as exc:
        raise _invalid(f"the SET's signature does not verify: {exc}") from None

    if context.replayed:
        raise ApiError(
            ApiProblems.DUPLICATE_EVENT, f"an event with jti {st.jti} is already in the log"
        )

    submission_id = st.submission_id
    new_status = NEW_STATUS[st.event]
    result = cast(
        CursorResult[Any],
        await session.execute(
            _FORWARD if new_status is SubmissionStatus.FORWARDED else _DECIDE,
            {
                "match_submission_id": submission_id,
                "new_status": new_status.value,
                "now": zd.clock.now(),
            },
        ),
    )
    if result.rowcount != 1:
        await session.rollback()
        current = await session.scalar(_CURRENT_STATUS, {"submission_id": submission_id})
        await session.rollback()
        raise ApiError(
            ApiProblems.SUBMISSION_STATE_INVALID,
            f"submission {submission_id} is {current}; {st.event.short_name} is "
            f"only possible while it is {' or '.join(DECIDABLE_STATUSES)}",
            submissionStatus=current,
        )
    try:
        await append_posted_event(
            session, zd, case_id=case_id, submission_id=submission_id, token=st
        )
    except DuplicateEventError:
        await session.rollback()
        raise ApiError(
            ApiProblems.DUPLICATE_EVENT, f"an event with jti {st.jti} is already in the log"
        ) from None
    await enqueue_new_events(session, zd, context, to_sender=True)
    await session.commit()
    return st
