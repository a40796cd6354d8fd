"""Pure ASGI middlewares: rate limiting and request body limits.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streamed uploads and downloads pass through
untouched.

Rate limiting is a token bucket per client (the ``sub`` of a *verified* bearer token — an
unverified one would let anybody drain another client's bucket) or per IP address for callers
without a valid token. Buckets live in the process: every node of a multi-node deployment limits
on its own, so the effective limit is the per-node limit times the number of nodes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.auth import (
    VERIFIED_CLAIMS_STATE_KEY,
    InvalidTokenError,
    bearer_token,
    verify_access_token,
)
from fitconnect_kit.server.config import RateLimitConfig
from fitconnect_kit.server.problems import PayloadTooLarge, problem_response
from fitconnect_kit.server.state import ZdState


def _zd(scope: Scope) -> ZdState:
    state: ZdState = scope["app"].state.zd
    return state


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


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, config: RateLimitConfig) -> None:
        self.app = app
        self.config = config
        self.limiter = TokenBucketLimiter(max_keys=config.max_tracked_keys)

    def _key(self, scope: Scope) -> tuple[str, bool]:
        """The bucket key and whether it is a client (vs. an IP address)."""
        request = Request(scope)
        token = bearer_token(request)
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

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                response_headers = MutableHeaders(scope=message)
                for name, value in headers.items():
                    response_headers[name] = value
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
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            response = problem_response(
                problem,
                f"request body of {declared} bytes exceeds the limit of {limit} bytes",
                instance=scope["path"],
                # The unread body makes the connection unusable for another request.
                headers={"Connection": "close"},
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
