"""Destinations: the public view and keys (for senders) and management (``Zustellpunktverwaltung``).

Public: ``GET /v1/destinations/{destinationId}`` (any valid token; managers get the owner view)
and ``GET /v1/destinations/{destinationId}/keys/{keyId}`` (no token needed).
Management (subscriber token with the manage scope, client allowed to manage the destination):
``GET/POST /v1/destinations``, ``PUT/PATCH/DELETE /v1/destinations/{destinationId}``,
``POST /v1/destinations/{destinationId}/keys``. Rules: :mod:`fitconnect_kit.server.domain.
destinations`.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote
from uuid import UUID

from fastapi import APIRouter, Body, Response
from fastapi.responses import JSONResponse

from fitconnect_kit.protocol.api import (
    DestinationCreate,
    DestinationPatch,
    DestinationUpdate,
)
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.api._common import (
    Offset,
    ProblemRoute,
    limit_query,
    location_header,
    problems,
)
from fitconnect_kit.server.auth import MANAGE_SCOPE, CurrentPrincipal, Principal, forbidden
from fitconnect_kit.server.compat import (
    ADD_KEY_STATUS_CODE,
    DESTINATION_LIST_DEFAULT_LIMIT,
    DESTINATION_LIST_MAX_LIMIT,
)
from fitconnect_kit.server.domain import destinations as domain
from fitconnect_kit.server.domain.destinations import DestinationList, OwnerDestination, PublicJwk
from fitconnect_kit.server.state import ZD, DbSession

router = APIRouter(route_class=ProblemRoute)

MANAGEMENT = "Zustellpunktverwaltung"
SENDING = "Einreichungsübermittlung"
P = ApiProblems
_JSON_BODY = (P.PAYLOAD_TOO_LARGE, P.UNSUPPORTED_MEDIA_TYPE, P.INVALID_REQUEST_BODY)


def _require_manage_scope(principal: Principal) -> None:
    if not principal.can_manage:
        raise forbidden(f"this operation needs the scope {MANAGE_SCOPE}", scope_missing=True)


async def _managed(session: DbSession, principal: Principal, destination_id: str) -> None:
    """404 for unknown destinations, then 403 unless the client may manage this one."""
    _require_manage_scope(principal)
    if not await domain.destination_exists(session, destination_id):
        await session.rollback()
        raise domain.not_found(destination_id)
    principal.require_manager(destination_id)


def _location(zd: ZD, path: str) -> dict[str, str]:
    return {"Location": f"{zd.config.base_url}{path}"}


# --- public ------------------------------------------------------------------------------------


@router.get(
    "/v1/destinations/{destinationId}",
    tags=[SENDING, MANAGEMENT],
    summary="A destination: public view (managers get the owner view)",
    operation_id="get-destination",
    response_model=OwnerDestination,
    responses={
        200: {
            "description": "The public view (PublicDestination); clients allowed to manage the "
            "destination get the owner view with callback URL, contact information and name."
        },
        **problems(P.DESTINATION_NOT_FOUND),
    },
)
async def get_destination(
    destinationId: UUID,
    principal: CurrentPrincipal,
    session: DbSession,
) -> JSONResponse:
    view = await domain.destination_view(session, principal, str(destinationId))
    return JSONResponse(view.to_json())


@router.get(
    "/v1/destinations/{destinationId}/keys/{keyId}",
    tags=[SENDING],
    summary="A public key of a destination (JWK); no access token needed",
    operation_id="get-destination-key",
    response_model=PublicJwk,
    responses=problems(P.DESTINATION_NOT_FOUND, P.KEY_NOT_FOUND, auth=False),
)
async def get_destination_key(
    destinationId: UUID,
    keyId: str,
    session: DbSession,
) -> JSONResponse:
    jwk = await domain.destination_key(session, str(destinationId), keyId)
    return JSONResponse(jwk.to_json())


# --- management ---------------------------------------------------------------------------------


@router.get(
    "/v1/destinations",
    tags=[MANAGEMENT],
    summary="The destinations this client may manage",
    operation_id="get-my-destinations",
    response_model=DestinationList,
    responses=problems(P.FORBIDDEN),
)
async def list_destinations(
    principal: CurrentPrincipal,
    session: DbSession,
    offset: Offset = 0,
    limit: Annotated[
        int, limit_query(DESTINATION_LIST_DEFAULT_LIMIT, DESTINATION_LIST_MAX_LIMIT)
    ] = DESTINATION_LIST_DEFAULT_LIMIT,
) -> JSONResponse:
    _require_manage_scope(principal)
    result = await domain.own_destinations(session, principal, offset=offset, limit=limit)
    return JSONResponse(result.to_json())


@router.post(
    "/v1/destinations",
    tags=[MANAGEMENT],
    summary="Create a destination (status created; the client may manage it)",
    operation_id="create-destination",
    status_code=201,
    response_model=OwnerDestination,
    responses={
        201: {"headers": location_header("URL of the new destination")},
        **problems(P.FORBIDDEN, P.INVALID_KEY, P.INVALID_CALLBACK, *_JSON_BODY),
    },
)
async def create_destination(
    body: DestinationCreate, principal: CurrentPrincipal, zd: ZD, session: DbSession
) -> JSONResponse:
    _require_manage_scope(principal)
    view = await domain.create_destination(session, zd, principal, body)
    return JSONResponse(
        view.to_json(),
        status_code=201,
        headers=_location(zd, f"/v1/destinations/{view.destination_id}"),
    )


_CHANGE_PROBLEMS = (
    P.FORBIDDEN,
    P.DESTINATION_NOT_FOUND,
    P.DESTINATION_STATE_INVALID,
    P.INVALID_CALLBACK,
    *_JSON_BODY,
)


@router.put(
    "/v1/destinations/{destinationId}",
    tags=[MANAGEMENT],
    summary="Replace a destination's settings",
    operation_id="update-destination",
    response_model=OwnerDestination,
    responses=problems(*_CHANGE_PROBLEMS),
)
async def replace_destination(
    destinationId: UUID,
    body: DestinationUpdate,
    principal: CurrentPrincipal,
    zd: ZD,
    session: DbSession,
) -> JSONResponse:
    await _managed(session, principal, str(destinationId))
    view = await domain.replace_destination(session, zd, str(destinationId), body)
    return JSONResponse(view.to_json())


@router.patch(
    "/v1/destinations/{destinationId}",
    tags=[MANAGEMENT],
    summary="Change some of a destination's settings (e.g. status, encryptionKid, callback)",
    operation_id="patch-destination",
    response_model=OwnerDestination,
    responses=problems(*_CHANGE_PROBLEMS),
)
async def patch_destination(
    destinationId: UUID,
    body: DestinationPatch,
    principal: CurrentPrincipal,
    zd: ZD,
    session: DbSession,
) -> JSONResponse:
    await _managed(session, principal, str(destinationId))
    view = await domain.patch_destination(session, zd, str(destinationId), body)
    return JSONResponse(view.to_json())


@router.delete(
    "/v1/destinations/{destinationId}",
    tags=[MANAGEMENT],
    summary="Delete a destination that is still in status created",
    operation_id="delete-destination",
    status_code=204,
    response_class=Response,
    responses=problems(P.FORBIDDEN, P.DESTINATION_NOT_FOUND, P.DESTINATION_STATE_INVALID),
)
async def delete_destination(
    destinationId: UUID,
    principal: CurrentPrincipal,
    session: DbSession,
) -> Response:
    await _managed(session, principal, str(destinationId))
    await domain.delete_destination(session, str(destinationId))
    return Response(status_code=204)


@router.post(
    "/v1/destinations/{destinationId}/keys",
    tags=[MANAGEMENT],
    summary="Register a public key (encryption or signature verification) on a destination",
    operation_id="create-destination-key",
    status_code=ADD_KEY_STATUS_CODE,
    response_model=PublicJwk,
    responses={
        ADD_KEY_STATUS_CODE: {"headers": location_header("URL of the key")},
        **problems(
            P.FORBIDDEN,
            P.DESTINATION_NOT_FOUND,
            P.DESTINATION_STATE_INVALID,
            P.KEY_ALREADY_EXISTS,
            P.INVALID_KEY,
            *_JSON_BODY,
        ),
    },
)
async def add_destination_key(
    destinationId: UUID,
    jwk: Annotated[dict[str, Any], Body(description="A public RSA JWK with x5c chain.")],
    principal: CurrentPrincipal,
    zd: ZD,
    session: DbSession,
) -> JSONResponse:
    await _managed(session, principal, str(destinationId))
    stored = await domain.add_key(session, zd, str(destinationId), jwk)
    return JSONResponse(
        stored.to_json(),
        status_code=ADD_KEY_STATUS_CODE,
        headers=_location(
            zd, f"/v1/destinations/{destinationId}/keys/{quote(stored.kid, safe='')}"
        ),
    )
