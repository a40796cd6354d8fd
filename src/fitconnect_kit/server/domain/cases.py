"""Reading event logs: who may read which case or submission log (reference §8.1).

A log is readable by the sender that opened the case (its submissions) and by subscribers linked
to the case's destination (with the subscribe scope). Everyone else gets 404 — the same answer as
for an unknown case, so existence does not leak.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import Integer, bindparam, func, select

from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.domain.eventlog import read_event_log
from fitconnect_kit.server.problems import ApiError
from fitconnect_kit.server.storage.models import CASES, EVENTS, SUBMISSIONS

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.storage.db import Database

_CASE_READERS = select(CASES.c.destination_id, CASES.c.sender_client_id).where(
    CASES.c.case_id == bindparam("case_id")
)
#: Who may read the case and one page of its log (with the total) in one statement; the case
#: row comes with every event (a case without events: one row, ``token`` NULL).
_CASE_READERS_AND_PAGE = (
    select(
        CASES.c.destination_id,
        CASES.c.sender_client_id,
        EVENTS.c.token,
        func.count(EVENTS.c.seq).over().label("total"),
    )
    .select_from(CASES.outerjoin(EVENTS, EVENTS.c.case_id == CASES.c.case_id))
    .where(CASES.c.case_id == bindparam("case_id"))
    .order_by(EVENTS.c.seq)
    .offset(bindparam("offset", type_=Integer))
    .limit(bindparam("limit", type_=Integer))
)
_SUBMISSION_READERS = select(SUBMISSIONS.c.destination_id, SUBMISSIONS.c.sender_client_id).where(
    SUBMISSIONS.c.submission_id == bindparam("submission_id")
)


def may_read_log(
    principal: Principal, *, destination_id: str, sender_client_id: str | None
) -> bool:
    """The sender of the case/submission, or a subscriber linked to its destination."""
    if principal.is_sender:
        return sender_client_id is not None and sender_client_id == principal.client_id
    return principal.can_subscribe and destination_id in principal.linked_destination_ids


async def case_event_log(
    database: Database, principal: Principal, case_id: str, *, offset: int, limit: int
) -> tuple[list[str], int]:
    """SETs of a case in log order (one page) and the total count (read-only connection)."""
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    not_found = ApiError(ApiProblems.CASE_NOT_FOUND, f"case {case_id} not found")
    async with database.read_connection() as connection:
        rows = (
            await connection.execute(
                _CASE_READERS_AND_PAGE, {"case_id": case_id, "offset": offset, "limit": limit}
            )
        ).all()
        if rows:
            first = rows[0]
            if not may_read_log(
                principal,
                destination_id=first.destination_id,
                sender_client_id=first.sender_client_id,
            ):
                raise not_found
            if first.token is None:  # the case has no events (yet)
                return [], 0
            return [row.token for row in rows], int(first.total)
        # No row: an unknown case, or a page past the end of the log.
        case = (await connection.execute(_CASE_READERS, {"case_id": case_id})).first()
        if case is None or not may_read_log(
            principal, destination_id=case.destination_id, sender_client_id=case.sender_client_id
        ):
            raise not_found
        return await read_event_log(connection, case_id=case_id, offset=offset, limit=limit)


async def submission_event_log(
    database: Database, principal: Principal, submission_id: str, *, offset: int, limit: int
) -> tuple[list[str], int]:
    """SETs of one submission in log order (one page) and the total count (read-only)."""
    async with database.read_connection() as connection:
        submission = (
            await connection.execute(_SUBMISSION_READERS, {"submission_id": submission_id})
        ).first()
        if submission is None or not may_read_log(
            principal,
            destination_id=submission.destination_id,
            sender_client_id=submission.sender_client_id,
        ):
            raise ApiError(
                ApiProblems.SUBMISSION_NOT_FOUND, f"submission {submission_id} not found"
            )
        return await read_event_log(
            connection, submission_id=submission_id, offset=offset, limit=limit
        )
