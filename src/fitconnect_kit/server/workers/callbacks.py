"""The ``callbacks`` worker: delivers the callback outbox (``callback_deliveries``).

One pass (:func:`run_callbacks_pass`):

1. **claim** due rows (``pending``, ``next_attempt_at <= now``, no live lease) by setting a lease
   (``locked_until = now + callbacks.lock_seconds``, ``locked_by = node_id``) in one short
   transaction — on PostgreSQL the candidates are selected ``FOR UPDATE SKIP LOCKED``; the
   conditional ``UPDATE … WHERE locked_until IS NULL OR locked_until < now`` (under the write
   lock that SQLite's ``BEGIN IMMEDIATE`` takes) sets the lease. On SQLite the candidates are
   read before, without the write lock (an idle pass takes none); a node that finds them all
   claimed by another meanwhile looks again. Several nodes never claim the same row; a crashed
   node's lease expires;
2. **send** them concurrently (at most ``callbacks.max_concurrency`` at once): ``POST`` of the
   stored body bytes with ``Content-Type: application/json``, ``callback-timestamp`` and
   ``callback-authentication`` computed now with ``zd.clock``; the whole request is bounded by
   ``callbacks.request_timeout``; redirects are not followed; the response body is not read;
3. **record** the result, conditional on still holding the lease: any 2xx → ``delivered``
   (NEW_SUBMISSIONS → ZD ``notify-submission`` ``{notifyType: "callback"}`` at most once per
   submission, plus NEW_EVENTS to the sender); otherwise retry after an exponential backoff with
   jitter, or ``failed`` after ``max_attempts`` / ``give_up_after``. A URL that is not allowed
   (not HTTPS; plain HTTP only to loopback hosts under the ``test`` key policy) fails at once.

While deliveries are in flight the pass keeps claiming newly due rows (after each completion,
at the latest every ``workers.callback_interval``), so a hanging receiver delays nobody else. The
pass ends when nothing is in flight and nothing is due. Delivery is at-least-once: a node that
crashes after sending and before recording causes one more request once its lease expired.

**Shutdown**: once the registry is stopping, the pass claims nothing new and gives the requests
in flight ``workers.shutdown_grace`` seconds to finish and be recorded. Deliveries it still holds
when it is cancelled — claimed but not sent yet, or interrupted mid-request — get their lease
released at once (``locked_until``/``locked_by`` cleared, the attempt not counted), so another
node delivers them on its next pass instead of waiting for the lease to expire. An interrupted
request may have reached the receiver: that is the at-least-once duplicate a crash would cause
too, only sooner.

**SSRF guard** (``callbacks.block_private_addresses``, ``server/callback_guard.py``): the HTTP
client connects only to public addresses it resolved and checked itself; a target that is (or
resolves to) a private, loopback or link-local address fails at once, without retries.

Nothing here logs callback secrets, bodies or full URLs (only the host).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import ColumnElement, Integer, Row, bindparam, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fitconnect_kit import __version__
from fitconnect_kit.protocol.callbacks import sign_callback
from fitconnect_kit.protocol.events import Event, NotifyType
from fitconnect_kit.server.callback_guard import (
    callback_ssl_context,
    guarded_transport,
    is_guard_refusal,
)
from fitconnect_kit.server.compat import CALLBACK_BACKOFF_JITTER, CALLBACK_USER_AGENT
from fitconnect_kit.server.config import CallbackConfig
from fitconnect_kit.server.domain.eventlog import append_zd_event
from fitconnect_kit.server.domain.outbox import CallbackKind, enqueue_new_events
from fitconnect_kit.server.storage.models import (
    CALLBACK_DELIVERIES,
    DESTINATIONS,
    SUBMISSIONS,
    DeliveryStatus,
    SubmissionStatus,
    UtcDateTime,
)

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

logger = logging.getLogger("fitconnect_kit.server.callbacks")

WORKER_NAME = "callbacks"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost."})
#: Submission states in which a delivered NEW_SUBMISSIONS still means "the receiver was told".
_NOTIFIABLE = (SubmissionStatus.SUBMITTED.value, SubmissionStatus.FORWARDED.value)


# --- policy --------------------------------------------------------------------------------------


def is_loopback_host(host: str) -> bool:
    """``localhost``, 127.0.0.0/8 or ``::1``."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def callback_url_refusal(url: str, *, allow_insecure_loopback: bool) -> str | None:
    """Why the ZD must not call ``url`` (``None`` = allowed). The reason never echoes the URL."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a bad port
    except ValueError:
        return "callback URL is malformed"
    if not host:
        return "callback URL has no host"
    if parts.scheme == "https":
        return None
    if parts.scheme == "http" and is_loopback_host(host):
        if allow_insecure_loopback:
            return None
        return (
            "callback URL must use https: plain http to loopback hosts is allowed only with "
            "key_policy 'test'"
        )
    if parts.scheme == "http":
        return (
            "callback URL must use https (plain http only to loopback hosts with key_policy 'test')"
        )
    return "callback URL must be an https URL"


def retry_delay(
    config: CallbackConfig, attempts: int, *, rng: Callable[[], float] = random.random
) -> timedelta:
    """Wait before attempt ``attempts + 1`` after ``attempts`` failed ones (≥ 1).

    ``initial_backoff · backoff_factor^(attempts-1)``, capped at ``max_backoff``, shortened by a
    random fraction of up to :data:`~fitconnect_kit.server.compat.CALLBACK_BACKOFF_JITTER`.
    """
    exponent = max(attempts - 1, 0)
    try:
        base = config.initial_backoff * config.backoff_factor**exponent
    except OverflowError:
        base = config.max_backoff
    base = min(base, config.max_backoff)
    return timedelta(seconds=base * (1.0 - CALLBACK_BACKOFF_JITTER * rng()))


# --- claiming ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    id: int
    kind: str
    url: str = field(repr=False)
    body: bytes = field(repr=False)
    secret: str | None = field(repr=False)
    to_destination: bool
    submission_id: str | None
    attempts: int
    created_at: datetime

    @property
    def host(self) -> str:
        try:
            return urlsplit(self.url).hostname or "?"
        except ValueError:
            return "?"


_D = CALLBACK_DELIVERIES.c


def _due_conditions() -> list[ColumnElement[bool]]:
    now = bindparam("now", type_=UtcDateTime())
    return [
        _D.status == DeliveryStatus.PENDING.value,
        _D.next_attempt_at <= now,
        or_(_D.locked_until.is_(None), _D.locked_until < now),
    ]


def _candidates(*, lock: bool) -> Any:
    """Due deliveries (``limit``, oldest first) with the secrets that sign them (read when
    claimed, as ever). ``lock``: ``FOR UPDATE SKIP LOCKED`` of the delivery rows (PostgreSQL)."""
    statement = (
        select(
            _D.id,
            DESTINATIONS.c.callback_secret.label("destination_secret"),
            SUBMISSIONS.c.sender_callback_secret.label("sender_secret"),
        )
        .select_from(
            CALLBACK_DELIVERIES.outerjoin(
                DESTINATIONS, DESTINATIONS.c.destination_id == _D.destination_id
            ).outerjoin(SUBMISSIONS, SUBMISSIONS.c.submission_id == _D.submission_id)
        )
        .where(*_due_conditions())
        .order_by(_D.next_attempt_at, _D.id)
        .limit(bindparam("limit", type_=Integer))
    )
    if lock:
        statement = statement.with_for_update(skip_locked=True, of=CALLBACK_DELIVERIES)
    return statement


_CANDIDATES = _candidates(lock=False)
_CANDIDATES_LOCKED = _candidates(lock=True)
#: The lease, only on rows that are still due (the check that counts on SQLite, where the
#: candidates are read without the write lock).
_CLAIM = (
    update(CALLBACK_DELIVERIES)
    .where(_D.id.in_(bindparam("ids", expanding=True)), *_due_conditions())
    .values(
        locked_until=bindparam("lease", type_=UtcDateTime()),
        locked_by=bindparam("node_id"),
    )
    .returning(
        _D.id,
        _D.kind,
        _D.target_url,
        _D.destination_id,
        _D.submission_id,
        _D.payload,
        _D.attempts,
        _D.next_attempt_at,
        _D.created_at,
    )
)


async def claim_due(zd: ZdState, limit: int) -> list[_Job]:
    """Lease up to ``limit`` due deliveries to this node; returns them with their secrets."""
    if limit <= 0:
        return []
    now = zd.clock.now()
    lease = now + timedelta(seconds=zd.config.callbacks.lock_seconds)
    database = zd.database
    params = {"now": now, "limit": limit}
    if database.is_postgres:
        async with database.engine.begin() as connection:
            # Two statements on purpose: PostgreSQL may evaluate a ``LIMIT … FOR UPDATE SKIP
            # LOCKED`` subquery inside ``UPDATE … WHERE id IN (…)`` more than once and so claim
            # more than ``limit`` rows. The ids selected here are locked until the commit.
            candidates = (await connection.execute(_CANDIDATES_LOCKED, params)).all()
            if not candidates:
                return []
            claimed = await _claim(connection, zd, candidates, now, lease)
    else:
        # SQLite: look without the write lock first (an idle pass takes no lock at all); the
        # conditional UPDATE under BEGIN IMMEDIATE decides which rows are still due. Another
        # node may have claimed them all meanwhile: then look again (it made progress).
        while True:
            async with database.read_connection() as connection:
                candidates = (await connection.execute(_CANDIDATES, params)).all()
            if not candidates:
                return []
            async with database.engine.begin() as connection:
                claimed = await _claim(connection, zd, candidates, now, lease)
            if claimed:
                break
    secrets = {row.id: row for row in candidates}
    jobs = []
    for delivery in sorted(claimed, key=lambda row: (row.next_attempt_at, row.id)):
        to_destination = delivery.destination_id is not None
        candidate = secrets[delivery.id]
        jobs.append(
            _Job(
                id=delivery.id,
                kind=delivery.kind,
                url=delivery.target_url,
                body=bytes(delivery.payload),
                secret=candidate.destination_secret if to_destination else candidate.sender_secret,
                to_destination=to_destination,
                submission_id=delivery.submission_id,
                attempts=delivery.attempts,
                created_at=delivery.created_at,
            )
        )
    return jobs


async def _claim(
    connection: AsyncConnection,
    zd: ZdState,
    candidates: Sequence[Row[Any]],
    now: datetime,
    lease: datetime,
) -> Sequence[Row[Any]]:
    result = await connection.execute(
        _CLAIM,
        {"ids": [row.id for row in candidates], "now": now, "lease": lease, "node_id": zd.node_id},
    )
    return result.all()


# --- sending and recording -----------------------------------------------------------------------


@dataclass
class CallbackPassResult:
    """What one pass did (for tests and logs)."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    failed: int = 0
    #: Deliveries whose lease another node took over before the result was recorded.
    lost: int = 0
    #: Deliveries handed back unsent or interrupted on shutdown (lease released).
    released: int = 0


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    error: str | None = None
    final: bool = False  # fail without retrying


async def _send(zd: ZdState, client: httpx.AsyncClient, job: _Job) -> _Outcome:
    refusal = callback_url_refusal(
        job.url, allow_insecure_loopback=zd.config.allows_insecure_loopback_callbacks
    )
    if refusal is not None:
        return _Outcome(False, refusal, final=True)
    if not job.secret:
        return _Outcome(False, "no callback secret is configured any more", final=True)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"{CALLBACK_USER_AGENT}/{__version__}",
        **sign_callback(job.body, job.secret, clock=zd.clock),
    }
    timeout = zd.config.callbacks.request_timeout
    try:
        async with (
            asyncio.timeout(timeout),
            client.stream("POST", job.url, content=job.body, headers=headers) as response,
        ):
            status = response.status_code
    except TimeoutError:
        return _Outcome(False, f"no response within {timeout:g} s")
    except httpx.TimeoutException:
        return _Outcome(False, f"no response within {timeout:g} s")
    except httpx.HTTPError as exc:
        guard = is_guard_refusal(exc)
        if guard is not None:
            return _Outcome(False, guard, final=True)
        return _Outcome(False, f"request failed: {type(exc).__name__}")
    if 200 <= status < 300:
        return _Outcome(True)
    if 300 <= status < 400:
        return _Outcome(False, f"HTTP {status} (redirects are not followed)")
    return _Outcome(False, f"HTTP {status}")


def _record_statement(**values: Any) -> Any:
    """Record a result on a delivery this node still holds (``None`` back: the lease is lost)."""
    return (
        update(CALLBACK_DELIVERIES)
        .where(
            _D.id == bindparam("delivery_id"),
            _D.status == DeliveryStatus.PENDING.value,
            _D.locked_by == bindparam("node_id"),
        )
        .values(**values, locked_until=None, locked_by=None)
        .returning(_D.id)
    )


_RECORD_DELIVERED = _record_statement(
    status=DeliveryStatus.DELIVERED.value,
    attempts=bindparam("new_attempts", type_=Integer),
    delivered_at=bindparam("now", type_=UtcDateTime()),
    last_error=None,
)
_RECORD_RETRY = _record_statement(
    attempts=bindparam("new_attempts", type_=Integer),
    last_error=bindparam("error"),
    next_attempt_at=bindparam("retry_at", type_=UtcDateTime()),
)
_RECORD_FAILED = _record_statement(
    status=DeliveryStatus.FAILED.value,
    attempts=bindparam("new_attempts", type_=Integer),
    last_error=bindparam("error"),
)
_ANNOUNCED_SUBMISSION = select(
    SUBMISSIONS.c.submission_id,
    SUBMISSIONS.c.case_id,
    SUBMISSIONS.c.destination_id,
    SUBMISSIONS.c.status,
    SUBMISSIONS.c.sender_callback_url,
    SUBMISSIONS.c.sender_callback_secret,
).where(SUBMISSIONS.c.submission_id == bindparam("submission_id"))
_RELEASE = (
    update(CALLBACK_DELIVERIES)
    .where(
        _D.id.in_(bindparam("ids", expanding=True)),
        _D.status == DeliveryStatus.PENDING.value,
        _D.locked_by == bindparam("node_id"),
    )
    .values(locked_until=None, locked_by=None)
    .returning(_D.id)
)


async def _notify_callback(session: AsyncSession, zd: ZdState, submission_id: str) -> None:
    """After a delivered NEW_SUBMISSIONS: ``notify-submission`` (callback), once per submission."""
    submission = (
        await session.execute(_ANNOUNCED_SUBMISSION, {"submission_id": submission_id})
    ).first()
    if submission is None or submission.status not in _NOTIFIABLE:
        return
    record = await append_zd_event(
        session,
        zd,
        case_id=submission.case_id,
        submission_id=submission_id,
        event=Event.NOTIFY_SUBMISSION,
        payload={"notifyType": NotifyType.CALLBACK.value},
        dedup_key=f"notify-submission:{submission_id}:callback",
    )
    if record is not None:
        await enqueue_new_events(session, zd, submission, to_sender=True)


async def _record(zd: ZdState, job: _Job, outcome: _Outcome, result: CallbackPassResult) -> None:
    config = zd.config.callbacks
    now = zd.clock.now()
    attempts = job.attempts + 1
    # (Keys of bound values in an UPDATE must not be column names: SQLAlchemy would SET them.)
    held = {"delivery_id": job.id, "node_id": zd.node_id, "new_attempts": attempts}
    async with zd.sessions() as session, session.begin():
        if outcome.ok:
            updated = await session.scalar(_RECORD_DELIVERED, {**held, "now": now})
            if updated is None:
                result.lost += 1
                return
            if (
                job.kind == CallbackKind.NEW_SUBMISSIONS.value
                and job.to_destination
                and job.submission_id is not None
            ):
                await _notify_callback(session, zd, job.submission_id)
            result.delivered += 1
            logger.info(
                "callback %d (%s) delivered to %s after %d attempt(s)",
                job.id,
                job.kind,
                job.host,
                attempts,
            )
            return
        give_up = (
            outcome.final
            or attempts >= config.max_attempts
            or now - job.created_at >= config.give_up_after
        )
        if give_up:
            next_attempt_at = None
            updated = await session.scalar(_RECORD_FAILED, {**held, "error": outcome.error})
        else:
            next_attempt_at = now + retry_delay(config, attempts)
            updated = await session.scalar(
                _RECORD_RETRY, {**held, "error": outcome.error, "retry_at": next_attempt_at}
            )
    if updated is None:
        result.lost += 1
    elif next_attempt_at is None:
        result.failed += 1
        logger.warning(
            "callback %d (%s) to %s failed for good after %d attempt(s): %s",
            job.id,
            job.kind,
            job.host,
            attempts,
            outcome.error,
        )
    else:
        result.retried += 1
        logger.info(
            "callback %d (%s) to %s failed (attempt %d: %s); next attempt at %s",
            job.id,
            job.kind,
            job.host,
            attempts,
            outcome.error,
            next_attempt_at.isoformat(),
        )


async def _deliver(
    zd: ZdState,
    client: httpx.AsyncClient,
    job: _Job,
    result: CallbackPassResult,
) -> None:
    outcome = await _send(zd, client, job)
    await _record(zd, job, outcome, result)


async def release_leases(zd: ZdState, ids: Collection[int]) -> int:
    """Give up this node's leases on ``ids`` (still pending) without counting an attempt."""
    if not ids:
        return 0
    async with zd.database.engine.begin() as connection:
        released = await connection.execute(_RELEASE, {"ids": sorted(ids), "node_id": zd.node_id})
        return len(released.all())


def make_http_client(zd: ZdState) -> httpx.AsyncClient:
    """The HTTP client of one pass: no redirects, no proxies from the environment; with the
    SSRF guard on, connections only to public addresses (``callback_guard.py``)."""
    config = zd.config.callbacks
    limits = httpx.Limits(
        max_connections=config.max_concurrency,
        max_keepalive_connections=config.max_concurrency,
    )
    transport = (
        guarded_transport(max_connections=config.max_concurrency)
        if zd.config.blocks_private_callback_targets
        else None
    )
    return httpx.AsyncClient(
        timeout=httpx.Timeout(config.request_timeout),
        follow_redirects=False,
        trust_env=False,
        verify=callback_ssl_context(),  # built once per process, not per pass
        limits=limits,
        transport=transport,
    )


async def run_callbacks_pass(zd: ZdState) -> CallbackPassResult:
    """Deliver every due callback (see the module docstring); returns what happened."""
    result = CallbackPassResult()
    capacity = zd.config.callbacks.max_concurrency
    poll = zd.config.workers.callback_interval
    in_flight: dict[asyncio.Task[None], int] = {}
    async with make_http_client(zd) as client:
        try:
            while True:
                stopping = zd.workers.stopping
                jobs = [] if stopping else await claim_due(zd, capacity - len(in_flight))
                result.claimed += len(jobs)
                for job in jobs:
                    task = asyncio.create_task(
                        _deliver(zd, client, job, result), name=f"zd-callback-{job.id}"
                    )
                    in_flight[task] = job.id
                if not in_flight:
                    break
                done, _pending = await asyncio.wait(
                    in_flight, timeout=poll, return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    del in_flight[task]
                    exc = task.exception()
                    if exc is not None:
                        # The lease expires and another pass retries the delivery.
                        # (Only the type: database errors may quote statement parameters.)
                        logger.error(
                            "recording a callback delivery failed (%s); retried after its lease",
                            type(exc).__name__,
                        )
        finally:
            unfinished = [job_id for task, job_id in in_flight.items() if not task.done()]
            for task in in_flight:
                task.cancel()
            for task in in_flight:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if unfinished:
                await _release_on_exit(zd, unfinished, result)
    return result


async def _release_on_exit(zd: ZdState, unfinished: list[int], result: CallbackPassResult) -> None:
    """Hand back the deliveries a cancelled pass still held (see "Shutdown" above)."""
    try:
        result.released += await asyncio.shield(release_leases(zd, unfinished))
    except BaseException as exc:  # the lease simply expires instead
        logger.warning(
            "could not release %d callback lease(s) (%s); they expire instead",
            len(unfinished),
            type(exc).__name__,
        )
        if not isinstance(exc, Exception):
            raise
        return
    logger.info("shutdown: released %d callback lease(s) (unsent or interrupted)", len(unfinished))
