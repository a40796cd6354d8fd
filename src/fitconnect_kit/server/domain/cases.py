"""Reading event logs: who may read which case or submission log (reference §8.1).

A log is readable by the sender that opened the case (its submissions) and by subscribers linked
to the case's destination (with the subscribe scope). Everyone else gets 404 — the same answer as
for an unknown case, so existence does not leak.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.domain.eventlog import read_event_log
from fitconnect_kit.server.problems import ApiError
from fitconnect_kit.server.storage.models import Case, Submission

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.storage.db import Database


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
    async with database.read_connection() as connection:
        case = (
            await connection.execute(
                select(Case.destination_id, Case.sender_client_id).where(Case.case_id == case_id)
            )
        ).first()
        if case is None or not may_read_log(
            principal, destination_id=case.destination_id, sender_client_id=case.sender_client_id
        ):
            raise ApiError(ApiProblems.CASE_NOT_FOUND, f"case {case_id} not found")
        return await read_event_log(connection, case_id=case_id, offset=offset, limit=limit)


async def submission_event_log(
    database: Database, principal: Principal, submission_id: str, *, offset: int, limit: int
) -> tuple[list[str], int]:
    """SETs of one submission in log order (one page) and the total count (read-only)."""
    async with database.read_connection() as connection:
        submission = (
            await connection.execute(
                select(Submission.destination_id, Submission.sender_client_id).where(
                    Submission.submission_id == submission_id
                )
            )
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
