"""OAuth clients, access tokens and the authenticated :class:`Principal` of a request.

* Client secrets are stored as salted scrypt hashes (``scrypt$n=..,r=..,p=..$salt$hash``) and
  compared in constant time; an unknown client costs the same hash as a wrong secret.
* Access tokens are PS512 JWTs signed with the ZD's token key: ``iss`` (base URL), ``sub``
  (client id), ``jti``, ``iat``, ``exp``, ``scope`` (space separated).
* :func:`current_principal` (and the ``*Principal`` annotations) verify the bearer token against
  the injectable clock and load the client and its destination links from the database.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import bindparam, select

from fitconnect_kit.protocol.b64 import b64url_decode, b64url_encode
from fitconnect_kit.protocol.clock import Clock, unix_time
from fitconnect_kit.protocol.errors import FitConnectError, FormatError, JoseError
from fitconnect_kit.protocol.ids import new_id, region_allows, region_of_scope
from fitconnect_kit.protocol.jose.jws import parse_compact, verify_parsed
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.problems import ApiError
from fitconnect_kit.server.server_keys import ServerKeys
from fitconnect_kit.server.state import ZD, ZdState
from fitconnect_kit.server.storage.models import Client, ClientDestination, ClientKind

SCOPE_BASE = "https://schema.fitko.de/fit-connect/oauth/scopes/"
SUBSCRIBE_SCOPE = SCOPE_BASE + "subscribe-destinations"
MANAGE_SCOPE = SCOPE_BASE + "manage-destinations"
SUBSCRIBER_SCOPES = (SUBSCRIBE_SCOPE, MANAGE_SCOPE)
DEFAULT_SENDER_SCOPES = ("send:region:DE",)
DEFAULT_SUBSCRIBER_SCOPES = (SUBSCRIBE_SCOPE,)

#: Tolerated clock difference for ``iat`` in the future (tokens of another node).
IAT_LEEWAY = timedelta(seconds=60)
REALM = "fitconnect-kit"
#: Request state key under which the rate limiter leaves an already verified token.
VERIFIED_CLAIMS_STATE_KEY = "fitconnect_access_token"


# --- client secrets ------------------------------------------------------------------------------

_SCRYPT_N = 2**14
_SCRYPT_R = 8
_SCRYPT_P = 1
_SCRYPT_LEN = 32
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def new_client_secret() -> str:
    """A fresh random client secret (256 bits, URL-safe text)."""
    return secrets.token_urlsafe(32)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int, length: int) -> bytes:
    return hashlib.scrypt(
        secret.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=_SCRYPT_MAXMEM
    )


def hash_client_secret(secret: str) -> str:
    """``scrypt$n=16384,r=8,p=1$<salt>$<hash>`` (base64url) — parameters travel with the hash."""
    salt = secrets.token_bytes(16)
    digest = _scrypt(secret, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P, _SCRYPT_LEN)
    params = f"n={_SCRYPT_N},r={_SCRYPT_R},p={_SCRYPT_P}"
    return f"scrypt${params}${b64url_encode(salt)}${b64url_encode(digest)}"


def verify_client_secret(secret: str, stored: str) -> bool:
    """Whether ``secret`` matches ``stored`` (constant-time comparison)."""
    try:
        scheme, params, salt_b64, digest_b64 = stored.split("$")
        values = dict(item.split("=", 1) for item in params.split(","))
        n, r, p = int(values["n"]), int(values["r"]), int(values["p"])
        salt = b64url_decode(salt_b64, what="salt")
        expected = b64url_decode(digest_b64, what="hash")
    except (ValueError, KeyError, FitConnectError):
        return False
    if scheme != "scrypt":
        return False
    actual = _scrypt(secret, salt, n, r, p, len(expected))
    return hmac.compare_digest(actual, expected)


# A hash of nothing in particular: unknown clients are checked against it so that they take as
# long as known clients with a wrong secret.
_DUMMY_HASH = hash_client_secret(new_client_secret())


async def check_client_secret(secret: str, stored: str | None) -> bool:
    """:func:`verify_client_secret` off the event loop; ``stored=None`` always fails."""
    ok = await asyncio.to_thread(verify_client_secret, secret, stored or _DUMMY_HASH)
    return ok and stored is not None


# --- scopes --------------------------------------------------------------------------------------


class ScopeError(FitConnectError):
    """Requested or configured scopes are not acceptable (OAuth ``invalid_scope``)."""


def validate_client_scopes(kind: ClientKind, scopes: Iterable[str]) -> list[str]:
    """Check the scopes configured for a client; returns them de-duplicated in order."""
    result: list[str] = []
    for scope in scopes:
        if kind is ClientKind.SENDER:
            try:
                region = region_of_scope(scope)
            except FormatError as exc:
                raise ScopeError(f"invalid send scope {scope!r}: {exc}") from None
            if region is None:
                raise ScopeError(f"sender scopes must look like send:region:DE…, got {scope!r}")
        elif scope not in SUBSCRIBER_SCOPES:
            raise ScopeError(
                f"subscriber scopes are {SUBSCRIBE_SCOPE} and {MANAGE_SCOPE}, got {scope!r}"
            )
        if scope not in result:
            result.append(scope)
    if not result:
        raise ScopeError("a client needs at least one scope")
    return result


def _covers(granted: Sequence[str], requested: str) -> bool:
    if requested in granted:
        return True
    try:
        region = region_of_scope(requested)
    except FormatError:
        return False
    if region is None:
        return False
    # A token may be narrowed to a sub-region of a granted region (send:region:DE → DE0101).
    return any(
        (granted_region := region_of_scope(g)) is not None and region_allows(granted_region, region)
        for g in granted
    )


def grant_scopes(granted: Sequence[str], requested: str | None) -> list[str]:
    """The scopes of a new token: all granted ones, or the requested subset."""
    if requested is None or not requested.strip():
        return list(granted)
    wanted = list(dict.fromkeys(requested.split()))
    refused = [scope for scope in wanted if not _covers(granted, scope)]
    if refused:
        raise ScopeError(f"scope not granted to this client: {refused[0]}")
    return wanted


# --- access tokens -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccessToken:
    client_id: str
    scopes: tuple[str, ...]
    token_id: str
    issued_at: datetime
    expires_at: datetime


class InvalidTokenError(FitConnectError):
    """A bearer token is missing, malformed, forged, expired or from another issuer."""


def issue_access_token(
    keys: ServerKeys,
    *,
    issuer: str,
    client_id: str,
    scopes: Sequence[str],
    lifetime: int,
    clock: Clock,
) -> str:
    now = unix_time(clock)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": client_id,
        "jti": new_id(),
        "iat": now,
        "exp": now + lifetime,
        "scope": " ".join(scopes),
    }
    return keys.token_signing.sign({"typ": "JWT"}, dumps_compact(claims))


def verify_access_token(token: str, *, keys: ServerKeys, issuer: str, clock: Clock) -> AccessToken:
    """Check signature, issuer, expiry and shape; raise :class:`InvalidTokenError`.

    The signature check of a token is done once (``keys.verified_tokens``); the claims are
    checked on every call.
    """
    claims = keys.verified_tokens.get(token)
    if claims is None:
        claims = _verified_claims(token, keys)
        keys.verified_tokens.put(token, claims)
    return _checked_claims(claims, issuer=issuer, clock=clock)


def _verified_claims(token: str, keys: ServerKeys) -> Mapping[str, Any]:
    """The claims of ``token`` if it is a well-formed JWS signed by one of our token keys."""
    try:
        parsed = parse_compact(token)
    except JoseError:
        raise InvalidTokenError("the access token is malformed") from None
    key = keys.token_verification_keys.get(parsed.kid or "")
    if key is None:
        raise InvalidTokenError("the access token was not issued by this Zustelldienst")
    try:
        verify_parsed(parsed, key.public_key)
        return MappingProxyType(loads_object(parsed.payload, what="access token claims"))
    except (JoseError, FormatError):
        raise InvalidTokenError("the access token signature does not verify") from None


def _checked_claims(claims: Mapping[str, Any], *, issuer: str, clock: Clock) -> AccessToken:
    sub, scope, jti = claims.get("sub"), claims.get("scope", ""), claims.get("jti")
    iat, exp = claims.get("iat"), claims.get("exp")
    if claims.get("iss") != issuer:
        raise InvalidTokenError("the access token was issued by another issuer")
    if not (isinstance(sub, str) and isinstance(scope, str) and isinstance(jti, str)):
        raise InvalidTokenError("the access token lacks sub, scope or jti")
    if not (isinstance(iat, int) and isinstance(exp, int)):
        raise InvalidTokenError("the access token lacks iat or exp")
    now = clock.now()
    expires_at = datetime.fromtimestamp(exp, UTC)
    issued_at = datetime.fromtimestamp(iat, UTC)
    if expires_at <= now:
        raise InvalidTokenError("the access token has expired")
    if issued_at > now + IAT_LEEWAY:
        raise InvalidTokenError("the access token is issued in the future")
    return AccessToken(sub, tuple(scope.split()), jti, issued_at, expires_at)


def bearer_token_of(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else ``None``."""
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer_token(request: Request) -> str | None:
    return bearer_token_of(request.headers.get("authorization"))


def _bearer_challenge(error: str | None = None, description: str | None = None) -> str:
    challenge = f'Bearer realm="{REALM}"'
    if error:
        challenge += f', error="{error}"'
    if description:
        challenge += f', error_description="{description}"'
    return challenge


def unauthorized(detail: str, *, error: str | None = "invalid_token") -> ApiError:
    return ApiError(
        ApiProblems.UNAUTHORIZED,
        detail,
        headers={"WWW-Authenticate": _bearer_challenge(error, detail if error else None)},
    )


def forbidden(detail: str, *, scope_missing: bool = False) -> ApiError:
    headers = {"WWW-Authenticate": _bearer_challenge("insufficient_scope")} if scope_missing else {}
    return ApiError(ApiProblems.FORBIDDEN, detail, headers=headers)


# --- principal -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """The authenticated client of a request."""

    client_id: str
    kind: ClientKind
    scopes: frozenset[str]
    token_id: str
    expires_at: datetime
    #: Destinations this (subscriber) client is linked to, and those it may manage.
    linked_destination_ids: frozenset[str]
    managed_destination_ids: frozenset[str]

    @property
    def is_sender(self) -> bool:
        return self.kind is ClientKind.SENDER

    @property
    def is_subscriber(self) -> bool:
        return self.kind is ClientKind.SUBSCRIBER

    @property
    def region_scopes(self) -> tuple[str, ...]:
        """Regions of the token's ``send:region:`` scopes (e.g. ``("DE", "DE09")``)."""
        regions = (region_of_scope(scope) for scope in sorted(self.scopes))
        return tuple(region for region in regions if region is not None)

    @property
    def can_subscribe(self) -> bool:
        return self.is_subscriber and SUBSCRIBE_SCOPE in self.scopes

    @property
    def can_manage(self) -> bool:
        return self.is_subscriber and MANAGE_SCOPE in self.scopes

    def may_send_to_region(self, region: str) -> bool:
        """Whether a send scope of the token covers ``region`` (prefix match)."""
        return self.is_sender and any(region_allows(r, region) for r in self.region_scopes)

    def may_send_to_any(self, regions: Iterable[str]) -> bool:
        return any(self.may_send_to_region(region) for region in regions)

    def require_sender(self) -> None:
        if not self.is_sender or not self.region_scopes:
            raise forbidden(
                "this operation needs a sender token with a send:region scope", scope_missing=True
            )

    def require_subscriber(self) -> None:
        if not self.can_subscribe:
            raise forbidden(f"this operation needs the scope {SUBSCRIBE_SCOPE}", scope_missing=True)

    def require_linked(self, destination_id: str) -> None:
        """403 unless this subscriber may read/act on submissions of ``destination_id``."""
        self.require_subscriber()
        if destination_id not in self.linked_destination_ids:
            raise forbidden("this client is not linked to the destination")

    def require_manager(self, destination_id: str) -> None:
        """403 unless this subscriber may change ``destination_id`` (scope and link)."""
        if not self.can_manage:
            raise forbidden(f"this operation needs the scope {MANAGE_SCOPE}", scope_missing=True)
        if destination_id not in self.managed_destination_ids:
            raise forbidden("this client may not manage the destination")


#: The client and its destination links in one read-only query (every request pays it). Built
#: once: building a select and its cache key anew costs more CPU than running it on SQLite.
_CLIENT_AND_LINKS = (
    select(
        Client.kind,
        Client.disabled,
        ClientDestination.destination_id,
        ClientDestination.can_manage,
    )
    .outerjoin(ClientDestination, ClientDestination.client_id == Client.client_id)
    .where(Client.client_id == bindparam("client_id"))
)


async def authenticate(request: Request, zd: ZdState) -> Principal:
    """Verify the request's bearer token and load its client (401 problem otherwise)."""
    token = bearer_token(request)
    if token is None:
        raise unauthorized("a bearer access token is required", error=None)
    cached = getattr(request.state, VERIFIED_CLAIMS_STATE_KEY, None)
    if isinstance(cached, AccessToken) and cached.expires_at > zd.clock.now():
        access = cached
    else:
        try:
            access = verify_access_token(
                token, keys=zd.keys, issuer=zd.config.base_url, clock=zd.clock
            )
        except InvalidTokenError as exc:
            raise unauthorized(str(exc)) from None
    async with zd.database.read_connection() as connection:
        result = await connection.execute(_CLIENT_AND_LINKS, {"client_id": access.client_id})
        rows = result.all()
    if not rows or rows[0].disabled:
        raise unauthorized("the client of this access token is unknown or disabled")
    links = [row for row in rows if row.destination_id is not None]
    return Principal(
        client_id=access.client_id,
        kind=ClientKind(rows[0].kind),
        scopes=frozenset(access.scopes),
        token_id=access.token_id,
        expires_at=access.expires_at,
        linked_destination_ids=frozenset(row.destination_id for row in links),
        managed_destination_ids=frozenset(row.destination_id for row in links if row.can_manage),
    )


async def current_principal(request: Request, zd: ZD) -> Principal:
    return await authenticate(request, zd)


async def sender_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    principal.require_sender()
    return principal


async def subscriber_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    principal.require_subscriber()
    return principal


CurrentPrincipal = Annotated[Principal, Depends(current_principal)]
SenderPrincipal = Annotated[Principal, Depends(sender_principal)]
SubscriberPrincipal = Annotated[Principal, Depends(subscriber_principal)]
