"""The sync facade's engine: an event loop in a daemon thread.

The SDK's logic exists once, in async form. Sync classes own a :class:`Portal`, create their
async twin *on the portal's loop* (httpx clients are bound to the loop they run on) and forward
every call with :meth:`Portal.call`. Because the loop runs in its own thread, sync calls also
work from code that already runs an event loop (Jupyter, async web frameworks calling sync
helpers) — they just block the calling thread until the result is there.

Callbacks passed through a sync facade (progress callbacks) run in the portal thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from fitconnect_kit.client.errors import ClientError

T = TypeVar("T")

log = logging.getLogger("fitconnect_kit.client.sync")


class PortalClosedError(ClientError):
    """The sync client was closed; create a new one."""


def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    ready.set()
    try:
        loop.run_forever()
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _stop(loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
    if not loop.is_closed():
        loop.call_soon_threadsafe(loop.stop)
    if thread is not threading.current_thread():
        thread.join(timeout=5)


class Portal:
    """Runs coroutines on a private event loop in a daemon thread."""

    def __init__(self, name: str = "fitconnect-kit") -> None:
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(
            target=_run_loop, args=(self._loop, ready), name=name, daemon=True
        )
        self._thread.start()
        ready.wait()
        self._closed = False
        self._finalizer = weakref.finalize(self, _stop, self._loop, self._thread)

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def closed(self) -> bool:
        return self._closed

    def call(self, awaitable: Awaitable[T]) -> T:
        """Run ``awaitable`` on the portal loop and return its result (re-raising errors)."""
        if self._closed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise PortalClosedError("this client is closed; create a new one")
        if threading.current_thread() is self._thread:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise RuntimeError("a sync client method was called from its own callback thread")
        future = asyncio.run_coroutine_threadsafe(_as_coroutine(awaitable), self._loop)
        return _wait(future)

    def call_soon(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the portal loop (to create loop-bound objects)."""

        async def run() -> T:
            return fn()

        return self.call(run())

    def iterate(self, iterator: AsyncIterator[T]) -> Iterator[T]:
        """Drive an async iterator from sync code, one item per portal call."""
        try:
            while True:
                try:
                    yield self.call(_anext(iterator))
                except StopAsyncIteration:
                    return
        finally:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None and not self._closed:
                self.call(aclose())

    def close(self, cleanup: Callable[[], Awaitable[Any]] | None = None) -> None:
        """Run ``cleanup`` on the loop (e.g. closing the HTTP client), then stop the thread."""
        if self._closed:
            return
        try:
            if cleanup is not None:
                self.call(cleanup())
        finally:
            self._closed = True
            self._finalizer()


async def _anext(iterator: AsyncIterator[T]) -> T:
    return await iterator.__anext__()


async def _as_coroutine(awaitable: Awaitable[T]) -> T:
    return await awaitable


def _wait(future: concurrent.futures.Future[T]) -> T:
    try:
        return future.result()
    except BaseException:
        # KeyboardInterrupt in the calling thread: stop the work on the portal loop too.
        future.cancel()
        raise


def run_coroutine_sync(factory: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    portal = Portal(name="fitconnect-kit-oneshot")
    try:
        return portal.call(factory())
    finally:
        portal.close()


__all__ = ["Portal", "PortalClosedError", "run_coroutine_sync"]
