"""HTTP core of the SDK: one async implementation on ``httpx.AsyncClient``.

* Access tokens (OAuth2 client credentials, credentials in the form body as FITKO wants) are
  fetched on demand, cached until shortly before ``expires_in`` and refreshed once when the
  Zustelldienst answers 401; the request is then repeated once if its body can be replayed.
* Retries with exponential backoff and full jitter on 429 (honouring ``Retry-After`` /
  ``RateLimit-Reset``), 502/503/504 and transport errors — but only where repeating is safe:
  :attr:`Safety.IDEMPOTENT` (GET, PUT, the token POST) retries all of them,
  :attr:`Safety.UNSENT_ONLY` (``POST /v1/submissions``) only 429 and errors that prove the request
  never reached the server (connect errors, pool timeouts), :attr:`Safety.NEVER` nothing.
* Every HTTP error becomes a typed :class:`~fitconnect_kit.client.errors.ApiError` subclass with
  the parsed RFC 7807 problem.

Sleep, randomness and clock are injectable so tests run instantly. Nothing secret is ever logged:
no request or response bodies, no headers, no tokens, no client secrets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import httpx

from fitconnect_kit import __version__
from fitconnect_kit.client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    InvalidClientError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidScopeError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TokenError,
    TransportError,
)
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import FormatError
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_strict

if TYPE_CHECKING:
    from fitconnect_kit.client.config import Credentials
    from fitconnect_kit.client.environments import Environment
    from fitconnect_kit.protocol.problems import Problem

log = logging.getLogger("fitconnect_kit.client.http")
token_log = logging.getLogger("fitconnect_kit.client.token")

USER_AGENT = f"fitconnect-kit/{__version__} (python-httpx/{httpx.__version__})"
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=30.0)
RETRY_STATUSES = frozenset({429, 502, 503, 504})
_MAX_ERROR_BODY = 64 * 1024

Sleep = Callable[[float], Awaitable[None]]
RequestBody = bytes | AsyncIterable[bytes]
BodyFactory = Callable[[], RequestBody]


class Safety(enum.Enum):
    """How safe it is to send a request again after a failure whose outcome is unknown."""

    IDEMPOTENT = "idempotent"
    """Repeating cannot do harm (GET, PUT of a set-once resource, the token POST)."""
    UNSENT_ONLY = "unsent-only"
    """Repeat only when the server provably did not process it (429, connect errors)."""
    NEVER = "never"
    """Never repeat automatically."""


@dataclass(frozen=True)
class RetryPolicy:
    """Retry limits: ``max_attempts`` tries in total, delays ``min(max_delay, base·2ⁿ)·rand``.

    A server wait hint (``Retry-After``/``RateLimit-Reset``) replaces the computed delay; hints
    longer than ``max_retry_after`` seconds are not waited for (the error is raised instead).
    """

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 120.0

    def backoff(self, retry_number: int, rand: float) -> float:
        """Full-jitter delay before retry ``retry_number`` (1 = first retry)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        return float(ceiling * rand)


NO_RETRY = RetryPolicy(max_attempts=1)


@dataclass
class Attempt:
    """What happened to one attempt of a request (for callers that must resolve ambiguity).

    ``maybe_processed`` is true when the server may have acted on the request although the
    client saw a failure (5xx, read timeout, broken connection after sending).
    """

    number: int
    status: int | None = None
    error: str | None = None
    maybe_processed: bool = False


@dataclass
class _CachedToken:
    value: str = field(repr=False)
    refresh_at: datetime
    expires_at: datetime


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _safe_url(url: httpx.URL | str) -> str:
    """The URL for messages/logs: without userinfo and query string."""
    u = httpx.URL(str(url))
    return str(u.copy_with(query=None, fragment=None, username=None, password=None))


def parse_retry_after(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait per ``Retry-After`` (seconds or HTTP date) or ``RateLimit-Reset``."""
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            if when.tzinfo is None:
                return None
            return max(0.0, (when - now).total_seconds())
    reset = headers.get("ratelimit-reset") or headers.get("x-ratelimit-reset")
    if reset:
        try:
            seconds = float(reset.strip())
        except ValueError:
            return None
        if seconds >= 0:
            # RFC draft: delta seconds. Values that look like Unix timestamps are converted.
            if seconds > 10**9:
                return max(0.0, seconds - now.timestamp())
            return seconds
    return None


def _parse_problem(response: httpx.Response) -> Problem | None:
    ctype = response.headers.get("content-type", "")
    if "json" not in ctype or not response.content or len(response.content) > _MAX_ERROR_BODY:
        return None
    try:
        data = loads_strict(response.content, what="problem")
    except FormatError:
        return None
    if not isinstance(data, dict) or ("type" not in data and "title" not in data):
        return None
    from pydantic import ValidationError

    from fitconnect_kit.protocol.problems import Problem

    data.setdefault("type", "about:blank")
    data.setdefault("status", response.status_code)
    try:
        return Problem.model_validate(data)
    except ValidationError:
        return None


_STATUS_HINTS = {
    400: "the request was refused as malformed",
    401: "the access token was refused",
    403: "this client is not allowed to do this",
    404: "not found",
    409: "the request conflicts with the current state of the resource",
    413: "the request body is too large",
    422: "the request was refused as invalid",
    429: "too many requests",
}


def api_error_for(
    response: httpx.Response,
    *,
    what: str | None = None,
    environment_name: str | None = None,
    now: datetime | None = None,
) -> ApiError:
    """The typed :class:`ApiError` for an error response (message says what to fix)."""
    status = response.status_code
    problem = _parse_problem(response)
    method = response.request.method
    url = _safe_url(response.request.url)
    env_hint = f" on environment {environment_name!r}" if environment_name else ""
    subject = what or f"{method} {url}"
    details = ""
    if problem is not None:
        parts = [p for p in (problem.title, problem.detail) if p]
        if parts:
            details = ": " + _one_line(" — ".join(str(p) for p in parts))
        if problem.type and str(problem.type) != "about:blank":
            details += f" [{problem.type}]"
    kwargs: dict[str, Any] = {"status": status, "problem": problem, "method": method, "url": url}
    if status == 404:
        msg = f"{subject} not found{env_hint} (HTTP 404){details}; check the id and the environment"
        return NotFoundError(msg, **kwargs)
    if status == 401:
        msg = (
            f"{subject}: the Zustelldienst refused the access token (HTTP 401){details}; check "
            "that the client credentials belong to this environment and client type"
        )
        return AuthenticationError(msg, **kwargs)
    if status == 403:
        msg = (
            f"{subject}: permission denied (HTTP 403){details}; a sender needs a send scope "
            "covering the destination (and no sender restriction on it), a subscriber must be "
            "linked to the destination in the Self-Service-Portal"
        )
        return PermissionDeniedError(msg, **kwargs)
    if status == 409:
        return ConflictError(f"{subject}: conflict (HTTP 409){details}", **kwargs)
    if status == 429:
        wait = parse_retry_after(response.headers, now or SYSTEM_CLOCK.now())
        hint = f"; the server asks to wait {wait:.0f} s" if wait is not None else ""
        msg = f"{subject}: rate limited (HTTP 429){details}{hint}; retry later"
        return RateLimitedError(msg, retry_after=wait, **kwargs)
    if 500 <= status <= 599:
        msg = f"{subject}: server error (HTTP {status}){details}; retry later"
        return ServerError(msg, **kwargs)
    if status in (400, 413, 422):
        msg = f"{subject}: {_STATUS_HINTS[status]} (HTTP {status}){details}"
        return InvalidRequestError(msg, **kwargs)
    return ApiError(f"{subject}: unexpected HTTP status {status}{details}", **kwargs)


class TokenManager:
    """Fetches and caches the OAuth access token of one client (client credentials grant)."""

    def __init__(
        self,
        token_url: str,
        credentials: Credentials,
        *,
        scope: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        refresh_margin: float = 60.0,
        default_lifetime: float = 300.0,
    ) -> None:
        self.token_url = token_url
        self.credentials = credentials
        self.scope = scope
        self.clock = clock
        self.refresh_margin = refresh_margin
        self.default_lifetime = default_lifetime
        self._cached: _CachedToken | None = None
        self._lock = asyncio.Lock()
        self.fetch_count = 0

    def __repr__(self) -> str:
        client_id = self.credentials.client_id
        return f"TokenManager(token_url={self.token_url!r}, client_id={client_id!r})"

    def _valid(self) -> str | None:
        cached = self._cached
        if cached is not None and self.clock.now() < cached.refresh_at:
            return cached.value
        return None

    async def token(self, core: HttpCore) -> str:
        """A valid access token (cached, or freshly fetched through ``core``)."""
        value = self._valid()
        if value is not None:
            return value
        async with self._lock:
            value = self._valid()
            if value is not None:
                return value
            return await self._fetch(core)

    def invalidate(self, token: str | None = None) -> None:
        """Forget the cached token (only if it is still ``token``, when given)."""
        if self._cached is not None and (token is None or self._cached.value == token):
            self._cached = None

    async def _fetch(self, core: HttpCore) -> str:
        from pydantic import ValidationError

        from fitconnect_kit.protocol.api import TokenResponse

        form = {
            "grant_type": "client_credentials",
            "client_id": self.credentials.client_id,
            "client_secret": self.credentials.client_secret,
        }
        if self.scope:
            form["scope"] = self.scope
        content = urlencode(form).encode("ascii")
        response = await core.send(
            "POST",
            self.token_url,
            content=content,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            auth=False,
            safety=Safety.IDEMPOTENT,
            raise_for_status=False,
        )
        if response.status_code != 200:
            raise self._token_error(response)
        try:
            data = loads_strict(response.content, what="token response")
            parsed = TokenResponse.model_validate(data)
        except (FormatError, ValidationError) as exc:
            raise InvalidResponseError(
                f"the token service at {self.token_url} sent an unusable token response; is "
                "tokenUrl right?",
                status=response.status_code,
                method="POST",
                url=self.token_url,
            ) from exc
        token = parsed.access_token
        lifetime = float(parsed.expires_in) if parsed.expires_in else self.default_lifetime
        margin = min(self.refresh_margin, lifetime / 10)
        now = self.clock.now()
        self._cached = _CachedToken(
            value=token,
            refresh_at=now + timedelta(seconds=lifetime - margin),
            expires_at=now + timedelta(seconds=lifetime),
        )
        self.fetch_count += 1
        token_log.info(
            "fetched access token for client %s (expires in %.0f s)",
            self.credentials.client_id,
            lifetime,
        )
        return token

    def _token_error(self, response: httpx.Response) -> ApiError:
        status = response.status_code
        error: str | None = None
        description: str | None = None
        ctype = response.headers.get("content-type", "")
        if "json" in ctype and response.content and len(response.content) <= _MAX_ERROR_BODY:
            try:
                data = loads_strict(response.content, what="token error")
            except FormatError:
                data = None
            if isinstance(data, dict):
                raw_error = data.get("error")
                raw_desc = data.get("error_description")
                error = raw_error if isinstance(raw_error, str) else None
                description = _one_line(raw_desc, 200) if isinstance(raw_desc, str) else None
        client = self.credentials.client_id
        said = f" ({description})" if description else ""
        kwargs: dict[str, Any] = {
            "status": status,
            "method": "POST",
            "url": _safe_url(self.token_url),
            "error": error,
            "description": description,
        }
        if error == "invalid_client":
            return InvalidClientError(
                f"the token service {_safe_url(self.token_url)} rejected client {client!r} "
                f"(invalid_client){said}: the client id or secret is wrong, or the client was "
                "created for another environment (test, stage and prod have separate "
                "Self-Service-Portals)",
                **kwargs,
            )
        if error == "invalid_scope":
            return InvalidScopeError(
                f"the token service refused the requested scope for client {client!r} "
                f"(invalid_scope){said}; if this is a subscriber client: is a destination "
                "assigned to it in the Self-Service-Portal?",
                **kwargs,
            )
        if error is not None:
            return TokenError(
                f"the token service refused to issue a token for client {client!r} ({error}){said}",
                **kwargs,
            )
        if status in (429,) or status >= 500:
            base = api_error_for(response, what="token request", now=self.clock.now())
            return base
        return TokenError(
            f"the token service {_safe_url(self.token_url)} answered HTTP {status} without an "
            "OAuth error; is tokenUrl right?",
            **kwargs,
        )


class HttpCore:
    """Authenticated, retrying HTTP access to one environment's Zustelldienst.

    ``transport`` (any ``httpx.AsyncBaseTransport``) or a complete ``http_client`` can be
    injected; an injected client is not closed by :meth:`aclose`.
    """

    def __init__(
        self,
        environment: Environment,
        credentials: Credentials,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        http_client: httpx.AsyncClient | None = None,
        timeout: httpx.Timeout | float | None = None,
        retry: RetryPolicy | None = None,
        clock: Clock = SYSTEM_CLOCK,
        sleep: Sleep | None = None,
        rand: Callable[[], float] | None = None,
        scope: str | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        self.environment = environment
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self._sleep: Sleep = sleep or asyncio.sleep
        self._rand = rand or secrets.SystemRandom().random
        self.tokens = TokenManager(environment.token_url, credentials, scope=scope, clock=clock)
        if http_client is not None:
            self.client = http_client
            self._owns_client = False
        else:
            self.client = httpx.AsyncClient(
                transport=transport,
                timeout=timeout if timeout is not None else DEFAULT_TIMEOUT,
                headers={"User-Agent": user_agent},
                follow_redirects=False,
            )
            self._owns_client = True

    def __repr__(self) -> str:
        return f"HttpCore(environment={self.environment.name!r})"

    async def aclose(self) -> None:
        if self._owns_client:
            await self.client.aclose()

    # --- public helpers ------------------------------------------------------------------------

    async def get_json(
        self,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        auth: bool = True,
        what: str | None = None,
    ) -> Any:
        """GET a JSON document (retried; 404 etc. raise typed errors)."""
        response = await self.send("GET", path, params=params, auth=auth, what=what)
        return self.json_of(response, what=what)

    def json_of(self, response: httpx.Response, *, what: str | None = None) -> Any:
        try:
            return loads_strict(response.content, what=what or "response")
        except FormatError as exc:
            raise InvalidResponseError(
                f"{what or _safe_url(response.request.url)}: the server's answer is not valid "
                "JSON; is submissionApiUrl right?",
                status=response.status_code,
                method=response.request.method,
                url=_safe_url(response.request.url),
            ) from exc

    async def send(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        content: bytes | None = None,
        body: BodyFactory | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str | int] | None = None,
        auth: bool = True,
        safety: Safety | None = None,
        what: str | None = None,
        raise_for_status: bool = True,
        trace: list[Attempt] | None = None,
        stream: bool = False,
    ) -> httpx.Response:
        """Send a request with token handling, retries and typed errors.

        The body is ``json`` (serialised compactly), ``content`` (bytes) or ``body`` — a factory
        called once per attempt, so streaming bodies can be re-created for a retry (a factory
        that cannot re-create its stream raises :class:`RuntimeError`, ending the retries).
        ``safety`` defaults to IDEMPOTENT for GET/HEAD/PUT/DELETE/OPTIONS and NEVER otherwise.
        ``trace`` receives one :class:`Attempt` per attempt. With ``stream`` a successful
        response is returned unread (the caller reads and closes it; see :meth:`stream`).
        """
        url = self.environment.api_url(path)
        if safety is None:
            safety = (
                Safety.IDEMPOTENT
                if method.upper() in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS")
                else Safety.NEVER
            )
        req_headers = dict(headers or {})
        if json is not None:
            content = dumps_compact(json)
            req_headers.setdefault("Content-Type", "application/json")
        factory: BodyFactory | None
        if body is not None:
            factory = body
        elif content is not None:
            data = content

            def factory() -> RequestBody:
                return data
        else:
            factory = None

        attempts = trace if trace is not None else []
        refreshed = False
        number = 0
        pending: Exception | None = None  # what we raise if the request cannot be repeated
        while True:
            number += 1
            attempt = Attempt(number=number)
            attempts.append(attempt)
            send_headers = dict(req_headers)
            token: str | None = None
            if auth:
                token = await self.tokens.token(self)
                send_headers["Authorization"] = f"Bearer {token}"
            try:
                payload = factory() if factory is not None else None
            except RuntimeError as exc:
                # The body cannot be re-created: we cannot repeat the request after all.
                attempts.pop()
                if pending is not None:
                    raise pending from exc
                raise
            started = time.monotonic()
            try:
                response = await self._send_once(
                    method, url, send_headers, payload, params, stream=stream
                )
            except httpx.TransportError as exc:
                attempt.error = type(exc).__name__
                unsent = isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                unsent = unsent or isinstance(exc, httpx.PoolTimeout)
                attempt.maybe_processed = not unsent
                retryable = (safety is Safety.IDEMPOTENT and _transient(exc)) or (
                    safety is Safety.UNSENT_ONLY and unsent
                )
                error = self._transport_error(method, url, exc)
                if retryable and number < self.retry.max_attempts:
                    delay = self.retry.backoff(number, self._rand())
                    log.warning(
                        "%s %s: %s, retrying in %.1f s (attempt %d/%d)",
                        method,
                        _safe_url(url),
                        type(exc).__name__,
                        delay,
                        number + 1,
                        self.retry.max_attempts,
                    )
                    await self._sleep(delay)
                    pending = error
                    continue
                raise error from exc

            status = response.status_code
            attempt.status = status
            attempt.maybe_processed = status >= 500
            if log.isEnabledFor(logging.DEBUG):  # _safe_url parses the URL: only when logged
                log.debug(
                    "%s %s -> %d (%.0f ms, attempt %d)",
                    method,
                    _safe_url(url),
                    status,
                    (time.monotonic() - started) * 1000,
                    number,
                )

            if status == 401 and auth and not refreshed:
                refreshed = True
                self.tokens.invalidate(token)
                log.info("%s %s: HTTP 401, fetching a new access token", method, _safe_url(url))
                pending = self._error(response, what)
                number -= 1  # the token refresh does not use up a retry
                attempts.pop()
                continue

            if status in RETRY_STATUSES:
                retryable = safety is Safety.IDEMPOTENT or (
                    safety is Safety.UNSENT_ONLY and status == 429
                )
                if retryable and number < self.retry.max_attempts:
                    hint = parse_retry_after(response.headers, self.clock.now())
                    if hint is not None and hint > self.retry.max_retry_after:
                        log.warning(
                            "%s %s: %d, server asks to wait %.0f s — not waiting that long",
                            method,
                            _safe_url(url),
                            status,
                            hint,
                        )
                    else:
                        if hint is None:
                            hint = self.retry.backoff(number, self._rand())
                        delay = hint
                        log.warning(
                            "%s %s: HTTP %d, retrying in %.1f s (attempt %d/%d)",
                            method,
                            _safe_url(url),
                            status,
                            delay,
                            number + 1,
                            self.retry.max_attempts,
                        )
                        await self._sleep(delay)
                        pending = self._error(response, what)
                        continue

            if raise_for_status and not 200 <= status <= 299:
                raise self._error(response, what)
            return response

    def _error(self, response: httpx.Response, what: str | None) -> ApiError:
        return api_error_for(
            response, what=what, environment_name=self.environment.name, now=self.clock.now()
        )

    # --- internals -----------------------------------------------------------------------------

    async def _send_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        payload: RequestBody | None,
        params: Mapping[str, str | int] | None,
        *,
        stream: bool = False,
    ) -> httpx.Response:
        request = self.client.build_request(
            method, url, headers=headers, content=payload, params=params
        )
        response = await self.client.send(request, stream=True)
        if stream and 200 <= response.status_code <= 299:
            return response
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response

    @contextlib.asynccontextmanager
    async def stream(self, method: str, path: str, **kwargs: Any) -> AsyncIterator[httpx.Response]:
        """Like :meth:`send`, but the successful response body is left to be streamed
        (``response.aiter_bytes()``), e.g. for downloading large attachments::

            async with core.stream("GET", f"/submissions/{sid}/attachments/{aid}") as response:
                async for chunk in response.aiter_bytes():
                    ...
        """
        response = await self.send(method, path, stream=True, **kwargs)
        try:
            yield response
        finally:
            await response.aclose()

    def _transport_error(self, method: str, url: str, exc: httpx.TransportError) -> TransportError:
        safe = _safe_url(url)
        host = httpx.URL(url).host
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            hint = (
                f"cannot connect to {host}: {_one_line(str(exc)) or type(exc).__name__}; is the "
                f"URL of environment {self.environment.name!r} right and the service reachable?"
            )
        elif isinstance(exc, httpx.TimeoutException):
            hint = f"timed out ({type(exc).__name__}); retry later or raise the timeout"
        else:
            hint = f"{type(exc).__name__}: {_one_line(str(exc)) or 'connection failed'}"
        return TransportError(f"{method} {safe}: {hint}", method=method, url=safe)


def _transient(exc: httpx.TransportError) -> bool:
    """Transport errors worth retrying for idempotent requests."""
    return isinstance(
        exc,
        httpx.ConnectError
        | httpx.ConnectTimeout
        | httpx.PoolTimeout
        | httpx.ReadTimeout
        | httpx.WriteTimeout
        | httpx.ReadError
        | httpx.WriteError
        | httpx.RemoteProtocolError,
    )


__all__ = [
    "NO_RETRY",
    "USER_AGENT",
    "Attempt",
    "HttpCore",
    "RetryPolicy",
    "Safety",
    "TokenManager",
    "api_error_for",
    "parse_retry_after",
]
