"""A subscriber worker: wake on callbacks, poll as a fallback, process each submission once.

:class:`SubscriberWorker` lists the destination's pending submissions, receives each one into
its own directory (``<out_dir>/<submissionId>/``), lets the application's handler look at it,
and posts the decision. It is **idempotent across restarts**: a small SQLite file records per
submission how far it got —

``fetched``
    downloaded, decrypted and verified;
``handled``
    the application's handler ran; its decision (accept / reject + problems) is recorded;
``decided``
    the signed SET is recorded (so a repeat posts the very same SET, same ``jti``);
``posted``
    the Zustelldienst has the SET (a repeat refused as a duplicate counts as posted).

After a restart each submission resumes at its recorded step: a ``handled`` or ``decided``
submission is never handed to the handler again. (The one unavoidable window: the process
dies after the handler returned but before ``handled`` was committed — then the handler runs
again. Make handlers idempotent on the submission id if that matters.)

The handler gets the :class:`~fitconnect_kit.client.subscriber.ReceivedSubmission` and returns
:class:`Accept`, :class:`Reject` or ``None`` (= automatic: accept when valid, reject with the
problems found otherwise). An invalid submission is always rejected (a returned
:class:`Accept` is overruled). A submission that could not be verified because of local
configuration (e.g. a missing data schema) is not handed to the handler; it is retried on
every pass until the configuration is fixed.

Wiring a callback endpoint::

    worker = SubscriberWorker(subscriber, handler, state_path="state.sqlite3", out_dir="inbox")
    app = CallbackApp(secret, on_new_submissions=worker.notify)   # wakes the worker at once
    await worker.run()                                            # until worker.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from fitconnect_kit.client.errors import ClientError, ConflictError, NotFoundError
from fitconnect_kit.client.subscriber import (
    AsyncSubscriber,
    ProblemInput,
    ReceivedSubmission,
    parse_problem,
)
from fitconnect_kit.client.verification import Verdict
from fitconnect_kit.protocol.events import AuthenticationTags, Event, parse_set
from fitconnect_kit.protocol.problems import Problem

log = logging.getLogger("fitconnect_kit.client.worker")

DEFAULT_POLL_INTERVAL = 60.0
SCHEMA_VERSION = 1


class Stage(StrEnum):
    """How far a submission got (the order is the processing order)."""

    FETCHED = "fetched"
    HANDLED = "handled"
    DECIDED = "decided"
    POSTED = "posted"
    FAILED = "failed"  # cannot be finished (e.g. gone from the Zustelldienst); not retried


@dataclass(frozen=True)
class Accept:
    """Handler result: accept the submission."""


@dataclass(frozen=True)
class Reject:
    """Handler result: reject it with these problems (default: the problems found)."""

    problems: Sequence[ProblemInput] = ()


HandlerResult = Accept | Reject | None
Handler = Callable[[ReceivedSubmission], "HandlerResult | Awaitable[HandlerResult]"]


@dataclass(frozen=True)
class Record:
    """One row of the state store."""

    submission_id: str
    case_id: str
    destination_id: str
    stage: Stage
    directory: str | None = None
    verdict: str | None = None
    received: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    token: str | None = field(default=None, repr=False)
    jti: str | None = None
    error: str | None = None
    attempts: int = 0


class StateStore:
    """The worker's persistent state: one SQLite file, one row per submission."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            """CREATE TABLE IF NOT EXISTS submissions (
                submission_id TEXT PRIMARY KEY,
                case_id TEXT NOT NULL,
                destination_id TEXT NOT NULL,
                stage TEXT NOT NULL,
                directory TEXT,
                verdict TEXT,
                received TEXT,
                decision TEXT,
                token TEXT,
                jti TEXT,
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                updated_at REAL NOT NULL
            )"""
        )
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def get(self, submission_id: str) -> Record | None:
        with self._lock:
            row = self._db.execute(
                "SELECT submission_id, case_id, destination_id, stage, directory, verdict, "
                "received, decision, token, jti, error, attempts FROM submissions "
                "WHERE submission_id = ?",
                (submission_id,),
            ).fetchone()
        return None if row is None else _record(row)

    def unfinished(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                "SELECT submission_id, case_id, destination_id, stage, directory, verdict, "
                "received, decision, token, jti, error, attempts FROM submissions "
                "WHERE stage NOT IN ('posted', 'failed') ORDER BY updated_at",
            ).fetchall()
        return [_record(r) for r in rows]

    def all(self) -> list[Record]:
        with self._lock:
            rows = self._db.execute(
                "SELECT submission_id, case_id, destination_id, stage, directory, verdict, "
                "received, decision, token, jti, error, attempts FROM submissions "
                "ORDER BY updated_at",
            ).fetchall()
        return [_record(r) for r in rows]

    def save(self, record: Record) -> None:
        """Insert or replace a row, durably (one transaction)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO submissions (submission_id, case_id, destination_id, "
                "stage, directory, verdict, received, decision, token, jti, error, attempts, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.submission_id,
                    record.case_id,
                    record.destination_id,
                    record.stage.value,
                    record.directory,
                    record.verdict,
                    json.dumps(record.received) if record.received is not None else None,
                    json.dumps(record.decision) if record.decision is not None else None,
                    record.token,
                    record.jti,
                    record.error,
                    record.attempts,
                    time.time(),
                ),
            )


def _record(row: Sequence[Any]) -> Record:
    return Record(
        submission_id=row[0],
        case_id=row[1],
        destination_id=row[2],
        stage=Stage(row[3]),
        directory=row[4],
        verdict=row[5],
        received=json.loads(row[6]) if row[6] else None,
        decision=json.loads(row[7]) if row[7] else None,
        token=row[8],
        jti=row[9],
        error=row[10],
        attempts=int(row[11]),
    )


@dataclass
class PassReport:
    """What one :meth:`SubscriberWorker.run_once` pass did."""

    accepted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # local configuration problem
    failed: list[str] = field(default_factory=list)  # error this pass, retried later
    given_up: list[str] = field(default_factory=list)

    @property
    def processed(self) -> int:
        return len(self.accepted) + len(self.rejected)


def _summary(received: ReceivedSubmission) -> dict[str, Any]:
    """What is needed later to build the decision SET without the files."""
    return {
        "verdict": received.verdict.value,
        "problems": [p.to_json() for p in received.problems],
        "authenticationTags": received.authentication_tags.to_json(),
        "tagsConfirmed": received.tags_confirmed,
    }


class SubscriberWorker:
    """Processes a destination's submissions once each; see the module docs.

    ``subscriber``: a configured :class:`~fitconnect_kit.client.subscriber.AsyncSubscriber`
    (keys, signing key, schemas). ``handler``: called with each verified submission (sync
    handlers run in a thread); ``None`` decides automatically. ``state_path``: the SQLite file.
    ``out_dir``: received submissions go to ``out_dir/<submissionId>/``. ``poll_interval``:
    seconds between passes when no callback wakes the worker. ``on_step(stage, submission_id)``
    is called after each recorded step (monitoring; tests use it to simulate crashes).
    ``concurrency``: how many submissions are processed at once (default 1, one after the
    other); more overlap the network round trips and the decryption of several submissions —
    the handler is then called concurrently too (sync handlers in several threads).
    """

    def __init__(
        self,
        subscriber: AsyncSubscriber,
        handler: Handler | None = None,
        *,
        state_path: str | Path,
        out_dir: str | Path,
        destination_id: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_attempts: int = 20,
        on_step: Callable[[Stage, str], None] | None = None,
        concurrency: int = 1,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.subscriber = subscriber
        self.handler = handler
        self.store = StateStore(state_path)
        self.out_dir = Path(out_dir)
        self.destination_id = destination_id or subscriber.destination_id
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.on_step = on_step
        self.concurrency = concurrency
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._running = False

    def __repr__(self) -> str:
        return f"SubscriberWorker(destination={self.destination_id!r})"

    # --- control ---------------------------------------------------------------------------------

    def notify(self, payload: Any = None) -> None:
        """Wake the worker now (e.g. from a NEW_SUBMISSIONS callback); thread-safe."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(wake.set)

    def _should_stop(self) -> bool:
        return self._stopping

    def stop(self) -> None:
        """Ask :meth:`run` to end after the submission in progress; thread-safe."""
        self._stopping = True
        self.notify()

    def close(self) -> None:
        self.store.close()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Poll and process until :meth:`stop` (or ``stop`` is set)."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._stopping = False
        self._running = True
        stopper: asyncio.Task[None] | None = None
        if stop is not None:

            async def watch() -> None:
                await stop.wait()
                self.stop()

            stopper = asyncio.create_task(watch())
        log.info("worker for destination %s started", self.destination_id)
        try:
            while not self._should_stop():
                self._wake.clear()
                try:
                    await self.run_once()
                except (ClientError, OSError) as exc:
                    log.warning("worker pass failed: %s; retrying later", exc)
                if self._should_stop():
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
        finally:
            self._running = False
            if stopper is not None:
                stopper.cancel()
            log.info("worker for destination %s stopped", self.destination_id)

    # --- one pass --------------------------------------------------------------------------------

    async def run_once(self) -> PassReport:
        """Finish what an earlier run left unfinished, then process every pending submission
        (up to ``concurrency`` at a time)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        report = PassReport()
        pending = self._pending()
        try:
            if self.concurrency == 1:
                async for sid, case_id in pending:
                    await self._process(sid, case_id, report)
            else:
                await self._process_concurrently(pending, report)
        finally:
            await pending.aclose()
        return report

    async def _pending(self) -> AsyncGenerator[tuple[str, str], None]:
        """``(submission id, case id)``: unfinished ones first, then the destination's list."""
        done: set[str] = set()
        for record in await asyncio.to_thread(self.store.unfinished):
            if self._stopping:
                return
            done.add(record.submission_id)
            yield record.submission_id, record.case_id
        async for item in self.subscriber.iter_submissions(self.destination_id):
            if self._stopping:
                return
            if item.submission_id in done:
                continue
            done.add(item.submission_id)
            existing = await asyncio.to_thread(self.store.get, item.submission_id)
            if existing is not None and existing.stage in (Stage.POSTED, Stage.FAILED):
                continue
            yield item.submission_id, item.case_id

    async def _process_concurrently(
        self, pending: AsyncIterator[tuple[str, str]], report: PassReport
    ) -> None:
        """Up to ``concurrency`` submissions at once; the first exception that escapes
        :meth:`_process` (e.g. cancellation) stops the pass and is raised once the others end."""
        slots = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        escaped: list[BaseException] = []

        async def one(sid: str, case_id: str) -> None:
            try:
                await self._process(sid, case_id, report)
            except BaseException as exc:  # handed to the pass, raised below
                escaped.append(exc)
            finally:
                slots.release()

        try:
            async for sid, case_id in pending:
                await slots.acquire()
                if escaped or self._stopping:
                    slots.release()
                    break
                task = asyncio.create_task(one(sid, case_id), name=f"fitconnect-receive-{sid}")
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # cancelled: so are the submissions in flight
                for task in tasks:
                    task.cancel()
            raise  # a failed listing: after the submissions in flight are finished
        finally:
            if tasks:
                await asyncio.wait(set(tasks))
        if escaped:
            raise escaped[0]

    def _step(self, stage: Stage, submission_id: str) -> None:
        if self.on_step is not None:
            self.on_step(stage, submission_id)

    async def _save(self, record: Record) -> None:
        await asyncio.to_thread(self.store.save, record)
        self._step(record.stage, record.submission_id)

    async def _process(self, sid: str, case_id: str, report: PassReport) -> None:
        record = await asyncio.to_thread(self.store.get, sid)
        try:
            if record is None or record.stage is Stage.FETCHED:
                record = await self._fetch_and_handle(sid, record, report)
                if record is None:
                    return
            if record.stage is Stage.HANDLED:
                record = await self._decide(record)
            if record.stage is Stage.DECIDED:
                record = await self._post(record)
        except (NotFoundError, ConflictError) as exc:
            # Gone (deleted, or fetched by another system) or decided already (e.g. the ZD's
            # 14-day rejection): nothing this worker can still do for it.
            current = await asyncio.to_thread(self.store.get, sid)
            await self._give_up(sid, case_id, current, str(exc))
            report.given_up.append(sid)
            return
        except Exception as exc:  # one broken submission must not stop the others
            current = await asyncio.to_thread(self.store.get, sid)
            await self._failed(sid, case_id, current, exc, report)
            return
        if record.stage is Stage.POSTED:
            event = (record.decision or {}).get("event")
            target = (
                report.accepted if event == Event.ACCEPT_SUBMISSION.short_name else report.rejected
            )
            target.append(sid)

    async def _fetch_and_handle(
        self, sid: str, record: Record | None, report: PassReport
    ) -> Record | None:
        directory = self.out_dir / sid
        received = await self.subscriber.receive(sid, directory, overwrite=True)
        attempts = record.attempts if record is not None else 0
        base = Record(
            submission_id=sid,
            case_id=received.case_id,
            destination_id=received.destination_id,
            stage=Stage.FETCHED,
            directory=str(directory),
            verdict=received.verdict.value,
            received=_summary(received),
            attempts=attempts,
        )
        if received.verdict is Verdict.CONFIGURATION_ERROR:
            issue = received.local_issues[0].message if received.local_issues else "unknown"
            log.warning("submission %s waits for local configuration: %s", sid, issue)
            await self._save(_replace(base, error=issue))
            report.waiting.append(sid)
            return None
        await self._save(base)
        outcome = await self._call_handler(received)
        decision = self._resolve(received, outcome)
        handled = _replace(base, stage=Stage.HANDLED, decision=decision, error=None)
        await self._save(handled)
        return handled

    async def _call_handler(self, received: ReceivedSubmission) -> HandlerResult:
        if self.handler is None:
            return None
        if inspect.iscoroutinefunction(self.handler):
            result: Any = await self.handler(received)
        else:
            result = await asyncio.to_thread(self.handler, received)
            if inspect.isawaitable(result):
                result = await result
        if result is not None and not isinstance(result, Accept | Reject):
            raise TypeError("a worker handler must return Accept(), Reject(...) or None")
        return result

    @staticmethod
    def _resolve(received: ReceivedSubmission, outcome: HandlerResult) -> dict[str, Any]:
        """The decision to record: ``{"event": ..., "problems": [...]}``."""
        if received.verdict is Verdict.INVALID:
            if isinstance(outcome, Accept):
                log.warning(
                    "submission %s is invalid; the handler's Accept is overruled (rejected)",
                    received.submission_id,
                )
            chosen: list[Problem] = list(received.problems)
            if isinstance(outcome, Reject) and outcome.problems:
                chosen = [parse_problem(p) for p in outcome.problems]
            return {
                "event": Event.REJECT_SUBMISSION.short_name,
                "problems": [p.to_json() for p in chosen],
            }
        if isinstance(outcome, Reject):
            if not outcome.problems:
                raise ValueError("Reject() of a valid submission needs the problems")
            return {
                "event": Event.REJECT_SUBMISSION.short_name,
                "problems": [parse_problem(p).to_json() for p in outcome.problems],
            }
        return {"event": Event.ACCEPT_SUBMISSION.short_name, "problems": []}

    async def _decide(self, record: Record) -> Record:
        decision = record.decision or {}
        received = record.received or {}
        tags = AuthenticationTags.from_json(received.get("authenticationTags", {}))
        payload: dict[str, Any]
        if decision.get("event") == Event.ACCEPT_SUBMISSION.short_name:
            event = Event.ACCEPT_SUBMISSION
            payload = {"authenticationTags": tags}
        else:
            event = Event.REJECT_SUBMISSION
            payload = {"problems": [Problem.model_validate(p) for p in decision["problems"]]}
            if received.get("tagsConfirmed"):
                payload["authenticationTags"] = tags
        # Signing (RSA-4096) in a thread: cryptography releases the GIL, the loop goes on.
        token = await asyncio.to_thread(
            self.subscriber.build_event,
            event,
            submission_id=record.submission_id,
            case_id=record.case_id,
            destination_id=record.destination_id,
            payload=payload,
        )
        decided = _replace(record, stage=Stage.DECIDED, token=token, jti=parse_set(token).jti)
        await self._save(decided)
        return decided

    async def _post(self, record: Record) -> Record:
        assert record.token is not None
        await self.subscriber.post_event_token(record.token)
        posted = _replace(record, stage=Stage.POSTED, error=None)
        await self._save(posted)
        log.info(
            "submission %s: %s posted",
            record.submission_id,
            (record.decision or {}).get("event"),
        )
        return posted

    async def _failed(
        self,
        sid: str,
        case_id: str,
        record: Record | None,
        exc: Exception,
        report: PassReport,
    ) -> None:
        attempts = (record.attempts if record is not None else 0) + 1
        message = f"{type(exc).__name__}: {exc}"
        log.warning("submission %s: %s (attempt %d)", sid, message, attempts)
        if record is None:
            # Nothing recorded yet: nothing to resume, the next pass starts afresh.
            report.failed.append(sid)
            return
        if attempts >= self.max_attempts:
            await self._give_up(sid, case_id, record, message)
            report.given_up.append(sid)
            return
        await asyncio.to_thread(self.store.save, _replace(record, error=message, attempts=attempts))
        report.failed.append(sid)

    async def _give_up(self, sid: str, case_id: str, record: Record | None, why: str) -> None:
        log.warning("submission %s: giving up: %s", sid, why)
        base = record or Record(
            submission_id=sid,
            case_id=case_id,
            destination_id=self.destination_id or "",
            stage=Stage.FAILED,
        )
        await self._save(_replace(base, stage=Stage.FAILED, error=why))


def _replace(record: Record, **changes: Any) -> Record:
    from dataclasses import replace

    return replace(record, **changes)


__all__ = [
    "Accept",
    "Handler",
    "HandlerResult",
    "PassReport",
    "Record",
    "Reject",
    "Stage",
    "StateStore",
    "SubscriberWorker",
]
