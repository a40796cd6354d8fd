"""A real callback receiver on a loopback port, for tests of the ZD's callback delivery.

:class:`CallbackReceiver` runs a small threaded HTTP server. Every request is recorded with its
raw body bytes and headers, and checked with ``protocol.callbacks.verify_callback_request``
(secret and clock as given). The answer is scripted: ``statuses`` are used one per request,
then ``default_status``; ``hang`` seconds make the receiver stall before answering (until
:meth:`release` or :meth:`stop`). A request that fails verification is answered 401.

Usage::

    with CallbackReceiver(secret="s3cret", clock=clock, statuses=[500, 500]) as receiver:
        ... receiver.url ...
        receiver.wait_for(1)
        assert receiver.received[0].verified
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fitconnect_kit.protocol.callbacks import CallbackRejectedError, verify_callback_request
from fitconnect_kit.protocol.clock import Clock


@dataclass(frozen=True)
class ReceivedCallback:
    path: str
    headers: dict[str, str]
    body: bytes = field(repr=False)
    verified: bool
    failure: str | None
    answered: int
    monotonic: float


class CallbackReceiver:
    def __init__(
        self,
        *,
        secret: str,
        clock: Clock,
        statuses: Iterable[int] = (),
        default_status: int = 200,
        hang: float = 0.0,
        path: str = "/callbacks",
    ) -> None:
        self.secret = secret
        self.clock = clock
        self.default_status = default_status
        self.hang = hang
        self.path = path
        self.received: list[ReceivedCallback] = []
        self._statuses = list(statuses)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._release = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self.port: int = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"callback-receiver-{self.port}", daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    def script(self, statuses: Iterable[int]) -> None:
        """Answer the next requests with ``statuses`` (then ``default_status``)."""
        with self._lock:
            self._statuses = list(statuses)

    def release(self) -> None:
        """Let hanging requests finish."""
        self._release.set()

    def bodies(self) -> list[bytes]:
        with self._lock:
            return [r.body for r in self.received]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedCallback]:
        """Wait until at least ``count`` requests arrived; return all received so far."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"expected {count} callbacks, got {len(self.received)}")
                self._changed.wait(remaining)
            return list(self.received)

    def _next_status(self) -> int:
        with self._lock:
            return self._statuses.pop(0) if self._statuses else self.default_status

    def _record(self, item: ReceivedCallback) -> None:
        with self._changed:
            self.received.append(item)
            self._changed.notify_all()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                failure: str | None = None
                try:
                    verify_callback_request(
                        headers, body, secret=receiver.secret, clock=receiver.clock
                    )
                except CallbackRejectedError as exc:
                    failure = exc.reason.value
                status = receiver._next_status() if failure is None else 401
                receiver._record(
                    ReceivedCallback(
                        path=self.path,
                        headers=headers,
                        body=body,
                        verified=failure is None,
                        failure=failure,
                        answered=status,
                        monotonic=time.monotonic(),
                    )
                )
                if receiver.hang > 0:
                    receiver._release.wait(receiver.hang)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler

    def start(self) -> CallbackReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> CallbackReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
