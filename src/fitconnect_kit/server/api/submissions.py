"""Submissions: sending (``Einreichungsübermittlung``) and receiving (``Einreichungsempfang``).

Sender (``send:region:…`` scope): ``POST /v1/submissions``,
``PUT /v1/submissions/{submissionId}/attachments/{attachmentId}`` (JWE body, streamed),
``PUT /v1/submissions/{submissionId}``.
Subscriber (subscribe scope, linked destinations only): ``GET /v1/submissions``,
``GET /v1/submissions/{submissionId}``,
``GET /v1/submissions/{submissionId}/attachments/{attachmentId}``.

The rules live in :mod:`fitconnect_kit.server.domain.submissions`; this module is HTTP only.
"""

from __future__ import annotations

from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from fitconnect_kit.protocol.api import (
    AnnounceSubmission,
    SubmissionCreated,
    SubmissionList,
    SubmissionSummary,
    SubmitSubmission,
)
from fitconnect_kit.protocol.api import Submission as SubmissionResource
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.api._common import (
    JOSE_MEDIA_TYPE,
    Offset,
    ProblemRoute,
    jose_request_body,
    limit_query,
    location_header,
    problems,
)
from fitconnect_kit.server.auth import SenderPrincipal, SubscriberPrincipal
from fitconnect_kit.server.compat import (
    SUBMISSION_LIST_DEFAULT_LIMIT,
    SUBMISSION_LIST_MAX_LIMIT,
    SUBMIT_STATUS_CODE,
)
from fitconnect_kit.server.domain import submissions as domain
from fitconnect_kit.server.problems import ApiError, require_media_type
from fitconnect_kit.server.state import ZD, DbSession
from fitconnect_kit.server.storage.blobs import BlobNotFoundError

router = APIRouter(route_class=ProblemRoute)

SENDING = "Einreichungsübermittlung"
RECEIVING = "Einreichungsempfang"
P = ApiProblems
_JSON_BODY = (P.PAYLOAD_TOO_LARGE, P.UNSUPPORTED_MEDIA_TYPE, P.INVALID_REQUEST_BODY)


def _summary(submission: domain.SubmissionIds) -> SubmissionSummary:
    return SubmissionSummary(
        destination_id=submission.destination_id,
        submission_id=submission.submission_id,
        case_id=submission.case_id,
    )


def _content_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.isdigit() else None


# --- sender --------------------------------------------------------------------------------------


@router.post(
    "/v1/submissions",
    tags=[SENDING],
    summary="Announce a submission (creates it in status incomplete)",
    operation_id="create-submission",
    status_code=201,
    response_model=SubmissionCreated,
    responses={
        201: {"headers": location_header("URL of the new submission")},
        **problems(
            P.FORBIDDEN,
            P.DESTINATION_NOT_FOUND,
            P.CASE_NOT_FOUND,
            P.DESTINATION_STATE_INVALID,
            P.SERVICE_TYPE_MISMATCH,
            P.DUPLICATE_ATTACHMENT_IDS,
            P.TOO_MANY_ATTACHMENTS,
            P.INVALID_CALLBACK,
            *_JSON_BODY,
        ),
    },
)
async def create_submission(
    body: AnnounceSubmission, principal: SenderPrincipal, zd: ZD, session: DbSession
) -> JSONResponse:
    submission = await domain.announce_submission(session, zd, principal, body)
    created = SubmissionCreated(
        destination_id=submission.destination_id,
        submission_id=submission.submission_id,
        case_id=submission.case_id,
    )
    return JSONResponse(
        created.to_json(),
        status_code=201,
        headers={"Location": f"{zd.config.base_url}/v1/submissions/{submission.submission_id}"},
    )


@router.put(
    "/v1/submissions/{submissionId}/attachments/{attachmentId}",
    tags=[SENDING],
    summary="Upload one announced attachment (a JWE, streamed)",
    operation_id="add-submission-attachment",
    status_code=204,
    response_class=Response,
    openapi_extra=jose_request_body("The encrypted attachment: JWE compact serialization."),
    responses=problems(
        P.FORBIDDEN,
        P.SUBMISSION_NOT_FOUND,
        P.ATTACHMENT_NOT_FOUND,
        P.SUBMISSION_STATE_INVALID,
        P.ATTACHMENT_ALREADY_UPLOADED,
        P.ATTACHMENT_TOO_LARGE,
        P.SUBMISSION_TOO_LARGE,
        P.UNSUPPORTED_MEDIA_TYPE,
        P.INVALID_JWE,
    ),
)
async def upload_attachment(
    submissionId: UUID,
    attachmentId: UUID,
    request: Request,
    principal: SenderPrincipal,
    zd: ZD,
    session: DbSession,
) -> Response:
    require_media_type(request, JOSE_MEDIA_TYPE)
    await domain.upload_attachment(
        session,
        zd,
        principal,
        str(submissionId),
        str(attachmentId),
        request.stream(),
        content_length=_content_length(request),
    )
    return Response(status_code=204)


@router.put(
    "/v1/submissions/{submissionId}",
    tags=[SENDING],
    summary="Submit an announced submission (encrypted metadata and data)",
    operation_id="submit-submission",
    status_code=SUBMIT_STATUS_CODE,
    response_model=SubmissionSummary,
    responses=problems(
        P.FORBIDDEN,
        P.SUBMISSION_NOT_FOUND,
        P.SUBMISSION_STATE_INVALID,
        P.MISSING_ATTACHMENTS,
        P.INVALID_JWE,
        *_JSON_BODY,
    ),
)
async def submit_submission(
    submissionId: UUID,
    body: SubmitSubmission,
    principal: SenderPrincipal,
    zd: ZD,
    session: DbSession,
) -> JSONResponse:
    submission = await domain.submit_submission(session, zd, principal, str(submissionId), body)
    return JSONResponse(_summary(submission).to_json(), status_code=SUBMIT_STATUS_CODE)


# --- subscriber ----------------------------------------------------------------------------------


@router.get(
    "/v1/submissions",
    tags=[RECEIVING],
    summary="Submissions waiting for pickup (at linked destinations)",
    operation_id="list-submissions",
    response_model=SubmissionList,
    responses=problems(P.FORBIDDEN),
)
async def list_submissions(
    principal: SubscriberPrincipal,
    zd: ZD,
    session: DbSession,
    destinationId: Annotated[
        UUID | None, Query(description="Only this (linked) destination.")
    ] = None,
    offset: Offset = 0,
    limit: Annotated[
        int, limit_query(SUBMISSION_LIST_DEFAULT_LIMIT, SUBMISSION_LIST_MAX_LIMIT)
    ] = SUBMISSION_LIST_DEFAULT_LIMIT,
) -> JSONResponse:
    if destinationId is not None:
        principal.require_linked(str(destinationId))
        destination_ids = {str(destinationId)}
    else:
        destination_ids = set(principal.linked_destination_ids)
    page, total = await domain.list_waiting_submissions(
        session, zd, destination_ids, offset=offset, limit=limit
    )
    result = SubmissionList(
        count=len(page),
        offset=offset,
        total_count=total,
        submissions=[_summary(s) for s in page],
    )
    return JSONResponse(result.to_json())


@router.get(
    "/v1/submissions/{submissionId}",
    tags=[RECEIVING],
    summary="Fetch a submission (encrypted metadata and data, attachment ids)",
    operation_id="get-submission",
    response_model=SubmissionResource,
    responses=problems(P.FORBIDDEN, P.SUBMISSION_NOT_FOUND, P.SUBMISSION_STATE_INVALID),
)
async def get_submission(
    submissionId: UUID,
    principal: SubscriberPrincipal,
    zd: ZD,
    session: DbSession,
) -> JSONResponse:
    submission = await domain.fetch_submission(session, zd, principal, str(submissionId))
    resource = SubmissionResource.model_validate(
        {
            "destinationId": submission.destination_id,
            "submissionId": submission.submission_id,
            "caseId": submission.case_id,
            "serviceType": submission.service_type,
            "attachments": submission.attachments,
            "encryptedMetadata": submission.encrypted_metadata,
            "encryptedData": submission.encrypted_data,
        }
    )
    return JSONResponse(resource.to_json())


@router.get(
    "/v1/submissions/{submissionId}/attachments/{attachmentId}",
    tags=[RECEIVING],
    summary="Download an attachment (the JWE as uploaded)",
    operation_id="get-submission-attachment",
    response_class=Response,
    responses={
        200: {
            "description": "The encrypted attachment: JWE compact serialization.",
            "content": {JOSE_MEDIA_TYPE: {"schema": {"type": "string"}}},
        },
        **problems(
            P.FORBIDDEN,
            P.SUBMISSION_NOT_FOUND,
            P.ATTACHMENT_NOT_FOUND,
            P.SUBMISSION_STATE_INVALID,
        ),
    },
)
async def get_attachment(
    submissionId: UUID,
    attachmentId: UUID,
    principal: SubscriberPrincipal,
    zd: ZD,
) -> Response:
    content = await domain.open_attachment(zd, principal, str(submissionId), str(attachmentId))
    try:
        size = await zd.blobs.size(content.blob_key)
    except BlobNotFoundError:
        raise ApiError(
            P.SUBMISSION_STATE_INVALID,
            f"submission {submissionId} can no longer be fetched: its content was deleted",
        ) from None
    return StreamingResponse(
        zd.blobs.read(content.blob_key),
        media_type=JOSE_MEDIA_TYPE,
        headers={"Content-Length": str(size)},
    )
