"""Pure ASGI middlewares: rate limiting, request body limits and refusals of unread bodies.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streamed uploads and downloads pass through
untouched. They run on every request, so they read headers straight from the ASGI scope instead
of building Starlette ``Request``/``Headers`` objects.

Rate limiting is a token bucket per client (the ``sub`` of a *verified* bearer token — an
unverified one would let anybody drain another client's bucket) or per IP address for callers
without a valid token. Buckets live in the process: every node of a multi-node deployment limits
on its own, so the effective limit is the per-node limit times the number of nodes.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.auth import (
    VERIFIED_CLAIMS_STATE_KEY,
    InvalidTokenError,
    bearer_token_of,
    verify_access_token,
)
from fitconnect_kit.server.config import RateLimitConfig
from fitconnect_kit.server.problems import PayloadTooLarge, problem_response
from fitconnect_kit.server.state import ZdState


def _zd(scope: Scope) -> ZdState:
    state: ZdState = scope["app"].state.zd
    return state


def _header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI servers deliver names)."""
    for key, value in scope["headers"]:
        if key == name:
            decoded: str = value.decode("latin-1")
            return decoded
    return None


# --- rate limiting -------------------------------------------------------------------------------


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int
    remaining: int
    #: Seconds until the bucket is full again.
    reset: int
    #: Seconds until the next request would be allowed (0 when allowed).
    retry_after: int


class TokenBucketLimiter:
    """Token buckets keyed by string; ``capacity`` tokens, refilled at ``rate`` per second."""

    def __init__(self, *, max_keys: int) -> None:
        self._buckets: dict[str, _Bucket] = {}
        self._max_keys = max_keys

    def take(
        self, key: str, *, rate: float, capacity: int, now: float | None = None
    ) -> RateDecision:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict_full(now, rate, capacity)
            bucket = self._buckets[key] = _Bucket(float(capacity), now)
        else:
            bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
            bucket.updated = now
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        missing = capacity - bucket.tokens
        return RateDecision(
            allowed=allowed,
            limit=capacity,
            remaining=max(0, math.floor(bucket.tokens)),
            reset=math.ceil(missing / rate) if missing > 0 else 0,
            retry_after=0 if allowed else max(1, math.ceil((1.0 - bucket.tokens) / rate)),
        )

    def _evict_full(self, now: float, rate: float, capacity: int) -> None:
        # Buckets that have refilled completely carry no information: drop them.
        full = [
            key
            for key, bucket in self._buckets.items()
            if bucket.tokens + (now - bucket.updated) * rate >= capacity
        ]
        for key in full:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:  # still full: drop the oldest half
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].updated)
            for key in oldest[: len(oldest) // 2]:
                del self._buckets[key]


_RATE_LIMIT_HEADER_NAMES = frozenset(
    {b"ratelimit-limit", b"ratelimit-remaining", b"ratelimit-reset"}
)


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, config: RateLimitConfig) -> None:
        self.app = app
        self.config = config
        self.limiter = TokenBucketLimiter(max_keys=config.max_tracked_keys)

    def _key(self, scope: Scope) -> tuple[str, bool]:
        """The bucket key and whether it is a client (vs. an IP address)."""
        token = bearer_token_of(_header(scope, b"authorization"))
        if token is not None:
            zd = _zd(scope)
            try:
                access = verify_access_token(
                    token, keys=zd.keys, issuer=zd.config.base_url, clock=zd.clock
                )
            except InvalidTokenError:
                pass
            else:
                # The auth dependency reuses this instead of verifying again.
                scope.setdefault("state", {})[VERIFIED_CLAIMS_STATE_KEY] = access
                return f"client:{access.client_id}", True
        client = scope.get("client")
        return f"ip:{client[0] if client else 'unknown'}", False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.config.enabled:
            await self.app(scope, receive, send)
            return
        key, is_client = self._key(scope)
        if is_client:
            rate, capacity = self.config.requests_per_second, self.config.burst
        else:
            rate = self.config.anonymous_requests_per_second
            capacity = self.config.anonymous_burst
        decision = self.limiter.take(key, rate=rate, capacity=capacity)
        headers = {
            "RateLimit-Limit": str(decision.limit),
            "RateLimit-Remaining": str(decision.remaining),
            "RateLimit-Reset": str(decision.reset),
        }
        if not decision.allowed:
            response = problem_response(
                ApiProblems.TOO_MANY_REQUESTS,
                f"rate limit exceeded; retry after {decision.retry_after} s",
                instance=scope.get("path"),
                headers={**headers, "Retry-After": str(decision.retry_after)},
            )
            await response(scope, receive, send)
            return
        raw_headers = [
            (name.lower().encode("latin-1"), value.encode("latin-1"))
            for name, value in headers.items()
        ]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # A new list (the response may own the old one); replaces any of the app's own.
                kept = [
                    header
                    for header in message.get("headers", ())
                    if header[0].lower() not in _RATE_LIMIT_HEADER_NAMES
                ]
                message["headers"] = kept + raw_headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


# --- body limits ---------------------------------------------------------------------------------


class BodyLimitMiddleware:
    """413 problem for bodies over the limit of their route (declared or actually streamed)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, problem = _zd(scope).body_limit_rule_for(scope["method"], scope["path"])
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # The unread body is dealt with by RefusalDrainMiddleware (outside of this one).
            response = problem_response(
                problem,
                f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                instance=scope["path"],
            )
            await response(scope, receive, send)
            return

        received = 0

        async def receive_with_limit() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise PayloadTooLarge(limit)
            return message

        await self.app(scope, receive_with_limit, send)


# --- refusals of requests whose body is still coming -------------------------------------------


@dataclass
class _BodyState:
    declared: int | None
    complete: bool
    received: int = 0
    receive_called: bool = False


_BODY_HEADER_NAMES = frozenset({b"content-length", b"transfer-encoding", b"expect"})


def _body_headers(scope: Scope) -> tuple[int | None, bool, bool]:
    """(declared ``Content-Length``, whether a body may follow at all, ``Expect:
    100-continue``); the first value of each header counts."""
    first: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in _BODY_HEADER_NAMES:
            first.setdefault(name, value)
    content_length = first.get(b"content-length")
    chunked = b"chunked" in first.get(b"transfer-encoding", b"").lower()
    expects_continue = first.get(b"expect", b"").lower() == b"100-continue"
    if content_length is not None and content_length.isdigit():
        length = int(content_length)
        return length, length > 0, expects_continue
    return None, chunked, expects_continue


class RefusalDrainMiddleware:
    """Refusals arrive at clients that are still sending their request body.

    A request may be answered with a 4xx before its body was read (bad token, unknown
    submission, declared ``Content-Length`` over the limit, rate limit …) or while it is only
    partly read (a streamed body over the limit, an invalid JWE). Closing the connection then,
    with request bytes still arriving, makes the kernel answer them with a TCP reset, and a client
    busy sending may never read the problem; keeping it open lets the server read the rest of the
    body without bound. So, for a response with status ≥ 400 while the request body is not
    complete, the problem is always sent at once, and then:

    * **small rest** (declared ``Content-Length`` minus what was read ≤
      ``limits.refusal_drain_size``): nothing more — the connection stays open and the server
      (uvicorn) discards the rest of the body as it arrives, at most that much; then the
      connection is usable for the next request;
    * **large or unknown rest** (chunked): the response goes out with ``Connection: close``, its
      bytes complete on the wire, then up to ``refusal_drain_size`` bytes /
      ``refusal_drain_seconds`` of the body are read and discarded before the response is ended
      and the server closes — a client that reads while sending has its answer at once, one that
      reads only after sending gets it when its body ends within the bound; beyond the bound the
      connection is closed (never an unbounded drain);
    * ``Expect: 100-continue`` with nothing read yet: ``Connection: close`` and nothing is
      drained — the client has not sent its body and, told the final status, will not.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared, has_body, expects_continue = _body_headers(scope)
        if not has_body:
            await self.app(scope, receive, send)
            return
        limits = _zd(scope).config.limits
        state = _BodyState(declared=declared, complete=False)

        async def tracked_receive() -> Message:
            state.receive_called = True
            message = await receive()
            if message["type"] == "http.request":
                state.received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    state.complete = True
            elif message["type"] == "http.disconnect":
                state.complete = True
            return message

        held: Message | None = None
        passing = False

        async def guarded_send(message: Message) -> None:
            nonlocal held, passing
            if passing:
                await send(message)
                return
            if message["type"] == "http.response.start":
                if message["status"] >= 400 and not state.complete:
                    held = message
                    return
                passing = True
                await send(message)
                return
            if message["type"] == "http.response.body" and held is not None:
                start, held, passing = held, None, True
                await self._refuse(
                    start,
                    message,
                    tracked_receive,
                    send,
                    state,
                    expects_continue=expects_continue,
                    max_bytes=limits.refusal_drain_size,
                    seconds=limits.refusal_drain_seconds,
                )
                return
            await send(message)

        await self.app(scope, tracked_receive, guarded_send)

    @staticmethod
    async def _refuse(
        start: Message,
        body: Message,
        receive: Receive,
        send: Send,
        state: _BodyState,
        *,
        expects_continue: bool,
        max_bytes: int,
        seconds: float,
    ) -> None:
        response_headers = MutableHeaders(scope=start)
        if expects_continue and not state.receive_called:
            response_headers["Connection"] = "close"
            await send(start)
            await send(body)
            return
        rest = None if state.declared is None else state.declared - state.received
        if rest is not None and rest <= max_bytes:
            # Kept open: the server discards the (bounded) rest after the response.
            await send(start)
            await send(body)
            return
        response_headers["Connection"] = "close"
        if "content-length" not in response_headers or body.get("more_body", False):
            # The client cannot tell the end of this response before it ends: no early answer.
            await send(start)
            await send(body)
            return
        await send(start)
        await send({**body, "more_body": True})
        await _drain(receive, state, max_bytes, seconds)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _drain(receive: Receive, state: _BodyState, max_bytes: int, seconds: float) -> None:
    """Read and discard the request body until it ends, ``max_bytes`` or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    drained = 0
    while not state.complete and drained <= max_bytes:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        try:
            message = await asyncio.wait_for(receive(), timeout=remaining)
        except TimeoutError:
            return
        drained += len(message.get("body", b""))
