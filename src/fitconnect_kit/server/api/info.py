"""Technical endpoints: ``GET /v1/info`` and ``GET /.well-known/jwks.json``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from fitconnect_kit import __version__
from fitconnect_kit.protocol.api import ApiInfo, ApiVersion
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.server.api._common import problems
from fitconnect_kit.server.compat import (
    INFO_IMPLEMENTATION_NAME,
    JWKS_MAX_AGE,
    JWKS_PATH,
    SUBMISSION_API_VERSION,
)
from fitconnect_kit.server.state import ZD

router = APIRouter(tags=["Technisch"])


def api_info() -> ApiInfo:
    major, minor, patch = SUBMISSION_API_VERSION
    return ApiInfo(
        version=ApiVersion(major=major, minor=minor, patch=patch),
        implementation={"name": INFO_IMPLEMENTATION_NAME, "version": __version__},
    )


@router.get(
    "/v1/info",
    summary="Information about this Zustelldienst instance",
    response_model=ApiInfo,
    operation_id="get-info",
    responses=problems(auth=False, params=False, validation=False),
)
async def info() -> Response:
    # The same document on every call: serialized once, not validated and encoded per request.
    return Response(_INFO_JSON, media_type="application/json")


_INFO_JSON = dumps_compact(api_info().to_json())


@router.get(
    JWKS_PATH,
    summary="Public keys that verify the Security Event Tokens issued by this Zustelldienst",
    operation_id="get-zd-jwks",
    responses={
        200: {"description": "JWK Set (RSA-4096, PS512, key_ops verify)"},
        **problems(auth=False, params=False, validation=False),
    },
)
async def jwks(zd: ZD) -> JSONResponse:
    return JSONResponse(
        zd.keys.jwks(),
        media_type="application/json",
        headers={"Cache-Control": f"public, max-age={JWKS_MAX_AGE}"},
    )
