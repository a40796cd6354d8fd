"""Receiving Zustelldienst callbacks (webhooks) in a web application (reference §9).

The Zustelldienst announces new submissions (NEW_SUBMISSIONS) and new events (NEW_EVENTS) with
``POST <callback url>``, authenticated with HMAC-SHA512 over ``<timestamp>.<raw body>``. These
helpers verify exactly the raw body bytes (never a re-serialized body), refuse timestamps older
than 5 minutes, compare in constant time, answer invalid requests with 401 and ignore them, and
answer valid ones with 2xx at once — the application's handler runs afterwards:

* :class:`CallbackApp` — a ready ASGI endpoint (FastAPI/Starlette ``app.mount(...)``, uvicorn,
  Hypercorn)::

      app = CallbackApp(secret, on_new_submissions=worker.notify)

  Handlers get the parsed payload; async callables run as tasks on the server's loop, plain
  callables in a worker thread.
* :func:`verify_callback` — verify a request you already have (headers + raw body) and get the
  parsed payload, e.g. in a Flask or Django view::

      payload = verify_callback(request.headers, request.get_data(), secret)

* :func:`verify_wsgi_environ` / :class:`CallbackWsgiApp` — the same for plain WSGI (the app can
  wrap another WSGI app and only take the callback path).

Invalid callbacks are logged at INFO with the reason — never the secret or the body.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any, Final

from pydantic import SecretStr

from fitconnect_kit.protocol.api import CallbackPayload, NewEventsCallback, NewSubmissionsCallback
from fitconnect_kit.protocol.callbacks import (
    MAX_AGE,
    CallbackRejectedError,
    CallbackType,
    parse_callback_body,
    verify_callback_request,
)
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import FormatError

log = logging.getLogger("fitconnect_kit.client.callbacks")

MAX_CALLBACK_BODY: Final = 1024 * 1024
Payload = NewSubmissionsCallback | NewEventsCallback | CallbackPayload
Handler = Callable[[Any], Awaitable[Any] | Any]

ASGIScope = Mapping[str, Any]
ASGIReceive = Callable[[], Awaitable[Mapping[str, Any]]]
ASGISend = Callable[[Mapping[str, Any]], Awaitable[None]]


class CallbackBodyError(FormatError):
    """The callback's HMAC verified, but its body is not a callback payload."""


def verify_callback(
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    secret: str | SecretStr,
    *,
    clock: Clock = SYSTEM_CLOCK,
    max_age: timedelta = MAX_AGE,
) -> Payload:
    """Verify a callback request (headers + the exact raw body) and parse its payload.

    Raises :class:`~fitconnect_kit.protocol.callbacks.CallbackRejectedError` (HMAC, timestamp;
    answer 401 and ignore the request) or :class:`CallbackBodyError` (a signed but malformed
    body; answer 400).
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    lowered = {str(k).lower(): str(v) for k, v in pairs}
    verify_callback_request(lowered, bytes(body), secret=secret, clock=clock, max_age=max_age)
    try:
        return parse_callback_body(bytes(body))
    except FormatError as exc:
        raise CallbackBodyError(f"callback body is not a callback payload: {exc}") from None


def _callback_secret(secret: str | SecretStr) -> SecretStr:
    """The endpoint's HMAC secret; an empty one would accept anybody's callbacks."""
    if not (secret.get_secret_value() if isinstance(secret, SecretStr) else secret):
        raise ValueError("the callback secret must not be empty")
    return secret if isinstance(secret, SecretStr) else SecretStr(secret)


def _dispatch_target(
    payload: Payload,
    on_new_submissions: Handler | None,
    on_new_events: Handler | None,
    on_other: Handler | None,
) -> Handler | None:
    kind = payload.type
    if kind == CallbackType.NEW_SUBMISSIONS:
        return on_new_submissions
    if kind == CallbackType.NEW_EVENTS:
        return on_new_events
    return on_other


class CallbackApp:
    """ASGI endpoint for Zustelldienst callbacks.

    ``POST`` with a valid HMAC and fresh timestamp → ``202`` at once, then the handler for the
    callback ``type`` gets the parsed payload (:class:`~fitconnect_kit.protocol.api.
    NewSubmissionsCallback`, :class:`~fitconnect_kit.protocol.api.NewEventsCallback`, or a
    generic :class:`~fitconnect_kit.protocol.api.CallbackPayload` for other types). Invalid
    HMAC, stale/future timestamp or missing headers → ``401``, handler not called; a signed but
    malformed body → ``400``; other methods → ``405``; bodies over ``max_body`` → ``413``.

    ``path``: serve only this path (``404`` elsewhere); ``None`` serves every path (mount it).
    Handler errors are logged, never sent back. ``await app.drain()`` waits for running
    handlers (tests, graceful shutdown).
    """

    def __init__(
        self,
        secret: str | SecretStr,
        *,
        on_new_submissions: Handler | None = None,
        on_new_events: Handler | None = None,
        on_other: Handler | None = None,
        path: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_age: timedelta = MAX_AGE,
        max_body: int = MAX_CALLBACK_BODY,
    ) -> None:
        self._secret = _callback_secret(secret)
        self.on_new_submissions = on_new_submissions
        self.on_new_events = on_new_events
        self.on_other = on_other
        self.path = path
        self.clock = clock
        self.max_age = max_age
        self.max_body = max_body
        self._tasks: set[asyncio.Task[None]] = set()
        self.accepted = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"CallbackApp(path={self.path!r})"

    async def __call__(self, scope: ASGIScope, receive: ASGIReceive, send: ASGISend) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        if self.path is not None and scope.get("path") != self.path:
            await _respond(send, 404, b"not found")
            return
        if scope.get("method") != "POST":
            await _respond(send, 405, b"method not allowed", [(b"allow", b"POST")])
            return
        body = await self._read_body(receive)
        if body is None:
            await _respond(send, 413, b"callback body too large")
            return
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]]
        try:
            payload = verify_callback(
                headers, body, self._secret, clock=self.clock, max_age=self.max_age
            )
        except CallbackRejectedError as exc:
            self.refused += 1
            log.info("callback refused: %s", exc.reason.value)
            await _respond(send, 401, b"invalid callback")
            return
        except CallbackBodyError:
            self.refused += 1
            log.info("callback refused: the signed body is not a callback payload")
            await _respond(send, 400, b"invalid callback body")
            return
        self.accepted += 1
        await _respond(send, 202, b"")
        handler = _dispatch_target(
            payload, self.on_new_submissions, self.on_new_events, self.on_other
        )
        if handler is not None:
            task = asyncio.get_running_loop().create_task(self._run(handler, payload))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _read_body(self, receive: ASGIReceive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _run(self, handler: Handler, payload: Payload) -> None:
        try:
            if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
                getattr(handler, "__call__", None)  # noqa: B004 - async callable objects
            ):
                await handler(payload)
            else:
                result = await asyncio.to_thread(handler, payload)
                if inspect.isawaitable(result):
                    await result
        except Exception:
            log.exception("the callback handler for %s failed", payload.type)

    async def drain(self) -> None:
        """Wait until every handler started so far has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _lifespan(self, receive: ASGIReceive, send: ASGISend) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.drain()
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _respond(
    send: ASGISend, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode("ascii")),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


# --- WSGI ---------------------------------------------------------------------------------------


def _wsgi_headers(environ: Mapping[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_") and isinstance(value, str):
            headers[key[5:].replace("_", "-").lower()] = value
    return headers


def read_wsgi_body(environ: Mapping[str, Any], max_body: int = MAX_CALLBACK_BODY) -> bytes:
    """The raw request body of a WSGI request (at most ``max_body`` bytes, else ValueError)."""
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > max_body:
        raise ValueError("callback body too large")
    stream = environ.get("wsgi.input")
    if stream is None or length <= 0:
        return b""
    data: bytes = stream.read(length)
    return data


def verify_wsgi_environ(
    environ: Mapping[str, Any],
    secret: str | SecretStr,
    *,
    clock: Clock = SYSTEM_CLOCK,
    max_age: timedelta = MAX_AGE,
    body: bytes | None = None,
) -> Payload:
    """Verify a WSGI request as a callback and return its parsed payload.

    Reads the raw body from ``wsgi.input`` (pass ``body`` when the framework already read it,
    e.g. Flask's ``request.get_data()``). Raises like :func:`verify_callback`.
    """
    raw = read_wsgi_body(environ) if body is None else body
    return verify_callback(_wsgi_headers(environ), raw, secret, clock=clock, max_age=max_age)


WsgiStartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], WsgiStartResponse], Iterable[bytes]]


class CallbackWsgiApp:
    """WSGI endpoint for Zustelldienst callbacks (same behaviour as :class:`CallbackApp`).

    Handlers are plain callables; they run in a small thread pool after the ``202`` was
    produced. With ``path`` and ``app`` it is a middleware: requests to ``path`` are callbacks,
    everything else goes to ``app``.
    """

    def __init__(
        self,
        secret: str | SecretStr,
        *,
        on_new_submissions: Callable[[Any], Any] | None = None,
        on_new_events: Callable[[Any], Any] | None = None,
        on_other: Callable[[Any], Any] | None = None,
        path: str | None = None,
        app: WsgiApp | None = None,
        clock: Clock = SYSTEM_CLOCK,
        max_age: timedelta = MAX_AGE,
        max_body: int = MAX_CALLBACK_BODY,
        workers: int = 2,
    ) -> None:
        self._secret = _callback_secret(secret)
        self.on_new_submissions = on_new_submissions
        self.on_new_events = on_new_events
        self.on_other = on_other
        self.path = path
        self.app = app
        self.clock = clock
        self.max_age = max_age
        self.max_body = max_body
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="fitconnect-callback"
        )
        self._lock = threading.Lock()
        self._futures: list[Any] = []

    def __call__(
        self, environ: dict[str, Any], start_response: WsgiStartResponse
    ) -> Iterable[bytes]:
        if self.path is not None and environ.get("PATH_INFO") != self.path:
            if self.app is not None:
                return self.app(environ, start_response)
            return _wsgi_respond(start_response, "404 Not Found", b"not found")
        if environ.get("REQUEST_METHOD") != "POST":
            return _wsgi_respond(
                start_response, "405 Method Not Allowed", b"method not allowed", [("Allow", "POST")]
            )
        try:
            body = read_wsgi_body(environ, self.max_body)
        except ValueError:
            return _wsgi_respond(start_response, "413 Payload Too Large", b"too large")
        try:
            payload = verify_wsgi_environ(
                environ, self._secret, clock=self.clock, max_age=self.max_age, body=body
            )
        except CallbackRejectedError as exc:
            log.info("callback refused: %s", exc.reason.value)
            return _wsgi_respond(start_response, "401 Unauthorized", b"invalid callback")
        except CallbackBodyError:
            log.info("callback refused: the signed body is not a callback payload")
            return _wsgi_respond(start_response, "400 Bad Request", b"invalid callback body")
        handler = _dispatch_target(
            payload, self.on_new_submissions, self.on_new_events, self.on_other
        )
        if handler is not None:
            future = self._executor.submit(self._run, handler, payload)
            with self._lock:
                self._futures = [f for f in self._futures if not f.done()] + [future]
        return _wsgi_respond(start_response, "202 Accepted", b"")

    @staticmethod
    def _run(handler: Callable[[Any], Any], payload: Payload) -> None:
        try:
            result = handler(payload)
            if inspect.isawaitable(result):
                asyncio.run(_await(result))
        except Exception:
            log.exception("the callback handler for %s failed", payload.type)

    def drain(self, timeout: float | None = None) -> None:
        """Wait for the handlers started so far."""
        with self._lock:
            futures = list(self._futures)
        for future in futures:
            future.result(timeout=timeout)

    def close(self) -> None:
        self._executor.shutdown(wait=True)


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _wsgi_respond(
    start_response: WsgiStartResponse,
    status: str,
    body: bytes,
    headers: list[tuple[str, str]] | None = None,
) -> list[bytes]:
    start_response(
        status,
        [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *(headers or []),
        ],
    )
    return [body]


__all__ = [
    "CallbackApp",
    "CallbackBodyError",
    "CallbackWsgiApp",
    "Payload",
    "read_wsgi_body",
    "verify_callback",
    "verify_wsgi_environ",
]
