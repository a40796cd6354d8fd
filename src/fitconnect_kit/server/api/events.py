"""Event logs: reading them (sender and subscriber) and posting receiver SETs (subscriber).

``GET /v1/cases/{caseId}/events``, ``GET /v1/submissions/{submissionId}/events`` and
``POST /v1/cases/{caseId}/events`` (body: a SET in JWS compact serialization,
``application/jose``). Rules: :mod:`fitconnect_kit.server.domain.cases` and
:mod:`fitconnect_kit.server.domain.decisions`.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from fitconnect_kit.protocol.api import EventLog
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.api._common import (
    JOSE_MEDIA_TYPE,
    Offset,
    ProblemRoute,
    jose_request_body,
    limit_query,
    problems,
)
from fitconnect_kit.server.auth import CurrentPrincipal, SubscriberPrincipal
from fitconnect_kit.server.compat import (
    EVENT_LOG_DEFAULT_LIMIT,
    EVENT_LOG_MAX_LIMIT,
)
from fitconnect_kit.server.domain.cases import case_event_log, submission_event_log
from fitconnect_kit.server.domain.decisions import record_posted_event
from fitconnect_kit.server.problems import require_media_type
from fitconnect_kit.server.state import ZD, DbSession

router = APIRouter(route_class=ProblemRoute)

SENDING = "Einreichungsübermittlung"
RECEIVING = "Einreichungsempfang"
P = ApiProblems

Limit = Annotated[int, limit_query(EVENT_LOG_DEFAULT_LIMIT, EVENT_LOG_MAX_LIMIT)]


def _page(tokens: list[str], total: int, offset: int) -> JSONResponse:
    log = EventLog(event_log=tokens, count=len(tokens), offset=offset, total_count=total)
    return JSONResponse(log.to_json())


@router.get(
    "/v1/cases/{caseId}/events",
    tags=[SENDING, RECEIVING],
    summary="The event log of a case (Security Event Tokens in log order)",
    operation_id="get-case-events",
    response_model=EventLog,
    responses=problems(P.CASE_NOT_FOUND),
)
async def get_case_events(
    caseId: UUID,
    principal: CurrentPrincipal,
    zd: ZD,
    offset: Offset = 0,
    limit: Limit = EVENT_LOG_DEFAULT_LIMIT,
) -> JSONResponse:
    tokens, total = await case_event_log(
        zd.database, principal, str(caseId), offset=offset, limit=limit
    )
    return _page(tokens, total, offset)


@router.get(
    "/v1/submissions/{submissionId}/events",
    tags=[SENDING, RECEIVING],
    summary="The events of one submission (Security Event Tokens in log order)",
    operation_id="get-submission-events",
    response_model=EventLog,
    responses=problems(P.SUBMISSION_NOT_FOUND),
)
async def get_submission_events(
    submissionId: UUID,
    principal: CurrentPrincipal,
    zd: ZD,
    offset: Offset = 0,
    limit: Limit = EVENT_LOG_DEFAULT_LIMIT,
) -> JSONResponse:
    tokens, total = await submission_event_log(
        zd.database, principal, str(submissionId), offset=offset, limit=limit
    )
    return _page(tokens, total, offset)


@router.post(
    "/v1/cases/{caseId}/events",
    tags=[RECEIVING],
    summary="Post a receiver's Security Event Token (accept, reject or forward a submission)",
    operation_id="create-case-event",
    status_code=204,
    response_class=Response,
    openapi_extra=jose_request_body(
        "A SET (JWS compact serialization, PS512) signed with the destination's signature key."
    ),
    responses=problems(
        P.FORBIDDEN,
        P.CASE_NOT_FOUND,
        P.SUBMISSION_STATE_INVALID,
        P.DUPLICATE_EVENT,
        P.PAYLOAD_TOO_LARGE,
        P.UNSUPPORTED_MEDIA_TYPE,
        P.INVALID_EVENT,
    ),
)
async def post_case_event(
    caseId: UUID,
    request: Request,
    principal: SubscriberPrincipal,
    zd: ZD,
    session: DbSession,
) -> Response:
    require_media_type(request, JOSE_MEDIA_TYPE)
    body = await request.body()
    await record_posted_event(session, zd, principal, str(caseId), body)
    return Response(status_code=204)
