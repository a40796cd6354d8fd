"""Background workers of the Zustelldienst and their registry.

A :class:`Worker` is a named coroutine function doing *one pass* of some job (deliver due
callbacks, apply deadlines, clean up). The registry runs each registered worker in its own task:
one pass, then sleep for its interval or until :meth:`WorkerRegistry.wake` is called, forever;
exceptions of a pass are logged and never stop the loop. On shutdown
(:meth:`WorkerRegistry.stop`) :attr:`WorkerRegistry.stopping` becomes true; running passes of
*graceful* workers (``Worker(graceful=True)``: the callbacks worker) get ``grace`` seconds to
finish — they check ``zd.workers.stopping`` to start nothing new — the others are cancelled at
once; all tasks are awaited. Tests disable the loops (``workers.enabled = false`` or
``create_app(workers=[])``) and trigger passes themselves with :meth:`WorkerRegistry.run_once`.

Workers must be safe when several nodes run them at once (row locks, ``dedup_key``s, conditional
updates): every node runs every worker.

To add a worker, append it in :func:`default_workers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fitconnect_kit.server.config import ServerConfig
    from fitconnect_kit.server.state import ZdState

logger = logging.getLogger("fitconnect_kit.server.workers")

WorkerPass = Callable[["ZdState"], Awaitable[object]]


@dataclass(frozen=True)
class Worker:
    """A periodic background job. ``interval`` is seconds, or read from the configuration."""

    name: str
    run_once: WorkerPass
    interval: float | Callable[[ServerConfig], float]
    #: On shutdown, a running pass of a graceful worker gets the stop's ``grace`` to finish (it
    #: should check ``zd.workers.stopping`` and start nothing new); others are cancelled at once.
    graceful: bool = False

    def interval_for(self, config: ServerConfig) -> float:
        return self.interval(config) if callable(self.interval) else self.interval


def default_workers() -> list[Worker]:
    """The workers every Zustelldienst node runs (colleagues register theirs here)."""
    # Imported here: the worker modules import the domain, which imports the state module,
    # which imports this one.
    from fitconnect_kit.server.workers.callbacks import run_callbacks_pass
    from fitconnect_kit.server.workers.cleanup import run_cleanup_pass
    from fitconnect_kit.server.workers.deadlines import run_deadlines_pass

    return [
        Worker(
            "callbacks",
            run_callbacks_pass,
            lambda config: config.workers.callback_interval,
            graceful=True,  # requests in flight finish and are recorded
        ),
        Worker("deadlines", run_deadlines_pass, lambda config: config.workers.deadline_interval),
        Worker("cleanup", run_cleanup_pass, lambda config: config.workers.cleanup_interval),
    ]


class WorkerRegistry:
    """The workers of one app; started and stopped by the app's lifespan."""

    def __init__(self, workers: Iterable[Worker] = ()) -> None:
        self._workers: dict[str, Worker] = {}
        self._wake_events: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._graceful_tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        for worker in workers:
            self.register(worker)

    def register(self, worker: Worker) -> None:
        if self._tasks:
            raise RuntimeError("workers must be registered before the app starts")
        if worker.name in self._workers:
            raise ValueError(f"a worker named {worker.name!r} is already registered")
        self._workers[worker.name] = worker

    @property
    def names(self) -> list[str]:
        return list(self._workers)

    @property
    def running(self) -> bool:
        return bool(self._tasks)

    @property
    def stopping(self) -> bool:
        """True from the start of :meth:`stop` on: passes should start nothing new."""
        return self._stopping

    def get(self, name: str) -> Worker:
        try:
            return self._workers[name]
        except KeyError:
            raise KeyError(f"no worker named {name!r}; registered: {self.names}") from None

    async def run_once(self, name: str, state: ZdState) -> object:
        """Run one pass of ``name`` now (on the caller's loop); returns what the pass returns."""
        return await self.get(name).run_once(state)

    def wake(self, name: str) -> None:
        """Ask a running worker to start its next pass now (no-op when loops are off)."""
        event = self._wake_events.get(name)
        if event is not None:
            event.set()

    def start(self, state: ZdState) -> None:
        self._stopping = False
        for worker in self._workers.values():
            event = asyncio.Event()
            self._wake_events[worker.name] = event
            task = asyncio.create_task(
                self._loop(worker, state, event), name=f"zd-worker-{worker.name}"
            )
            self._tasks.append(task)
            if worker.graceful:
                self._graceful_tasks.append(task)

    async def stop(self, grace: float = 0.0) -> None:
        """Stop the loops: running passes of graceful workers get ``grace`` seconds to finish,
        every other task is cancelled at once (and those after the grace)."""
        self._stopping = True
        for event in self._wake_events.values():
            event.set()  # sleeping loops end at once
        for task in self._tasks:
            if task not in self._graceful_tasks:
                task.cancel()
        if self._graceful_tasks and grace > 0:
            await asyncio.wait(self._graceful_tasks, timeout=grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._graceful_tasks.clear()
        self._wake_events.clear()

    def _should_stop(self) -> bool:
        # A method, not the attribute: a pass may set it meanwhile (mypy narrows attributes).
        return self._stopping

    async def _loop(self, worker: Worker, state: ZdState, wake: asyncio.Event) -> None:
        interval = worker.interval_for(state.config)
        while not self._should_stop():
            try:
                await worker.run_once(state)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("worker %s failed; retrying after its interval", worker.name)
            if self._should_stop():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=interval)
            wake.clear()
