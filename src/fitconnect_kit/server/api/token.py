"""``POST /token`` — OAuth 2.0 client credentials (RFC 6749 §4.4) as FITKO's token service.

Credentials in the form body (client_secret_post, what FITKO's service expects) or HTTP Basic
(client_secret_basic); not both. Errors are OAuth error JSON (not problem JSON) with
``Cache-Control: no-store``. Unknown client and wrong secret get the same ``invalid_client``.
"""

from __future__ import annotations

import base64
import binascii
from urllib.parse import parse_qsl, unquote_plus

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import func, select

from fitconnect_kit.protocol.api import OAuthError, TokenResponse
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.api._common import problems
from fitconnect_kit.server.auth import (
    ScopeError,
    check_client_secret,
    grant_scopes,
    issue_access_token,
)
from fitconnect_kit.server.state import ZD
from fitconnect_kit.server.storage.models import Client, ClientDestination, ClientKind

router = APIRouter(tags=["Technisch"])

FORM_MEDIA_TYPE = "application/x-www-form-urlencoded"
CLIENT_CREDENTIALS = "client_credentials"
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


_BASIC_CHALLENGE = 'Basic realm="fitconnect-kit"'


class OAuthFailure(Exception):
    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers: dict[str, str] = {}


def _oauth_error_response(failure: OAuthFailure) -> JSONResponse:
    body = OAuthError(error=failure.error, error_description=failure.description).to_json()
    return JSONResponse(body, status_code=failure.status, headers={**_NO_STORE, **failure.headers})


def _parse_form(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise OAuthFailure("invalid_request", "the request body is not a valid form") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if "\x00" in name or "\x00" in value:
            raise OAuthFailure("invalid_request", "the form must not contain NUL characters")
        if name in form:
            # RFC 6749 §3.2: parameters must not be included more than once.
            raise OAuthFailure("invalid_request", f"parameter {name!r} is repeated")
        form[name] = value
    return form


def _header_auth_failure(description: str) -> OAuthFailure:
    """RFC 6749 §5.2: a client that authenticated through the ``Authorization`` header and
    failed gets 401 ``invalid_client`` with ``WWW-Authenticate`` naming the scheme we accept."""
    failure = OAuthFailure("invalid_client", description, 401)
    failure.headers["WWW-Authenticate"] = _BASIC_CHALLENGE
    return failure


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise _header_auth_failure("only HTTP Basic client authentication is supported")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _header_auth_failure("malformed HTTP Basic credentials") from None
    client_id, sep, secret = decoded.partition(":")
    if not sep or "\x00" in decoded:
        raise _header_auth_failure("malformed HTTP Basic credentials")
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote_plus(client_id), unquote_plus(secret)


async def _issue(request: Request, zd: ZD) -> TokenResponse:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != FORM_MEDIA_TYPE:
        raise OAuthFailure("invalid_request", f"the body must be {FORM_MEDIA_TYPE}")
    form = _parse_form(await request.body())
    basic = _basic_credentials(request)

    grant_type = form.get("grant_type")
    if not grant_type:
        raise OAuthFailure("invalid_request", "grant_type is missing")
    if grant_type != CLIENT_CREDENTIALS:
        raise OAuthFailure("unsupported_grant_type", "only client_credentials is supported")

    if basic is not None:
        if "client_secret" in form:
            raise OAuthFailure(
                "invalid_request", "use either HTTP Basic or client_secret in the body, not both"
            )
        if "client_id" in form and form["client_id"] != basic[0]:
            raise OAuthFailure("invalid_request", "client_id differs from the Basic credentials")
        client_id, secret = basic
    else:
        client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
        if not client_id or not secret:
            raise OAuthFailure(
                "invalid_client", "client authentication failed (client_id/client_secret)", 401
            )

    async with zd.sessions() as session:
        client = await session.get(Client, client_id) if len(client_id) <= 36 else None
        linked = 0
        if client is not None and client.kind == ClientKind.SUBSCRIBER.value:
            linked = (
                await session.scalar(
                    select(func.count())
                    .select_from(ClientDestination)
                    .where(ClientDestination.client_id == client_id)
                )
                or 0
            )
    stored_hash = client.secret_hash if client is not None else None
    if not await check_client_secret(secret, stored_hash) or client is None or client.disabled:
        if basic is not None:
            raise _header_auth_failure("client authentication failed")
        raise OAuthFailure("invalid_client", "client authentication failed", 401)

    if client.kind == ClientKind.SUBSCRIBER.value and linked == 0:
        # FITKO answers like this for a subscriber client without an assigned destination.
        raise OAuthFailure("invalid_scope", "no destination is assigned to this client")
    try:
        scopes = grant_scopes(client.scopes, form.get("scope"))
    except ScopeError as exc:
        raise OAuthFailure("invalid_scope", str(exc)) from None

    lifetime = zd.config.token_lifetime
    token = issue_access_token(
        zd.keys,
        issuer=zd.config.base_url,
        client_id=client.client_id,
        scopes=scopes,
        lifetime=lifetime,
        clock=zd.clock,
    )
    return TokenResponse(
        access_token=token,
        token_type="Bearer",  # noqa: S106
        expires_in=lifetime,
        scope=" ".join(scopes),
    )


@router.post(
    "/token",
    summary="Get an access token (OAuth 2.0 client credentials)",
    response_model=TokenResponse,
    operation_id="get-token",
    responses={
        400: {"model": OAuthError, "description": "OAuth error"},
        401: {"model": OAuthError, "description": "invalid_client"},
        # Not OAuth errors: the body limit and the rate limit answer before the token service.
        **problems(ApiProblems.PAYLOAD_TOO_LARGE, auth=False, params=False, validation=False),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                FORM_MEDIA_TYPE: {
                    "schema": {
                        "type": "object",
                        "required": ["grant_type"],
                        "properties": {
                            "grant_type": {"type": "string", "enum": [CLIENT_CREDENTIALS]},
                            "client_id": {"type": "string"},
                            "client_secret": {"type": "string"},
                            "scope": {"type": "string"},
                        },
                    }
                }
            },
        }
    },
)
async def token(request: Request, zd: ZD) -> JSONResponse:
    try:
        response = await _issue(request, zd)
    except OAuthFailure as failure:
        return _oauth_error_response(failure)
    return JSONResponse(response.to_json(), headers=_NO_STORE)
