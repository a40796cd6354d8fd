"""Throughput changes (bench/e2e.py, docs/performance.md): correct caches, safe concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update
from tests.unit.test_client_fakes import SERVICE, FakeZustelldienst
from tests.unit.test_client_sender import send_simple, sender_for
from tests.unit.test_subscriber_fakes import SubscriberZD, base_plan, make_subscriber, send_plan

from fitconnect_kit.client import eventlog
from fitconnect_kit.client.errors import (
    ApiError,
    DestinationInactiveError,
    EventLogVerificationError,
)
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.callback_guard import callback_ssl_context
from fitconnect_kit.server.config import ServerConfig
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.migrate import upgrade_database
from fitconnect_kit.server.storage.models import Client
from fitconnect_kit.server.workers.callbacks import make_http_client


def _pool_ssl_context(client: httpx.AsyncClient) -> Any:
    return client._transport._pool._ssl_context  # type: ignore[attr-defined]


@pytest.mark.parametrize("guarded", [False, True])
async def test_callback_clients_share_one_tls_context(guarded: bool) -> None:
    config = ServerConfig(callbacks={"block_private_addresses": guarded})
    zd: Any = SimpleNamespace(config=config)
    first, second = make_http_client(zd), make_http_client(zd)
    try:
        context = _pool_ssl_context(first)
        assert context is callback_ssl_context()
        assert _pool_ssl_context(second) is context
        # Still httpx's defaults: certificates and host names are verified.
        assert context.check_hostname
        assert context.verify_mode.name == "CERT_REQUIRED"
    finally:
        await first.aclose()
        await second.aclose()


# --- the sender reuses a passed destination check ----------------------------------------------


def _checks(zd: Any) -> tuple[int, int]:
    return (
        zd.count("GET", r"/v1/destinations/[^/]+"),
        zd.count("GET", r"/v1/destinations/.+/keys/.+"),
    )


async def test_sender_reuses_a_destination_check_within_its_ttl() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd, destination_check_ttl=60) as sender:
        await send_simple(zd, sender)
        await send_simple(zd, sender)
        assert _checks(zd) == (1, 1)  # the second submission used the first check
        zd.clock.advance(61)
        await send_simple(zd, sender)
        assert _checks(zd) == (2, 2)  # expired: checked again
    assert len(zd.submissions) == 3


async def test_a_failed_send_drops_the_reused_destination_check() -> None:

    zd = FakeZustelldienst()
    async with sender_for(zd, destination_check_ttl=60) as sender:
        await send_simple(zd, sender)
        zd.inject("POST", "/v1/submissions", zd.problem(ApiProblems.DESTINATION_STATE_INVALID))
        with pytest.raises(ApiError):
            await send_simple(zd, sender)
        assert _checks(zd) == (1, 1)
        # The destination changed meanwhile: the next send checks afresh and notices.
        zd.destination["status"] = "inactive"
        with pytest.raises(DestinationInactiveError):
            await send_simple(zd, sender)
        assert _checks(zd) == (2, 1)


async def test_destination_check_ttl_zero_checks_every_time() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd, destination_check_ttl=0) as sender:
        await send_simple(zd, sender)
        await send_simple(zd, sender)
    assert _checks(zd) == (2, 2)


async def test_explicit_destination_checks_are_never_cached() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        await sender.check_destination(zd.destination_id, service=SERVICE)
        await sender.check_destination(zd.destination_id, service=SERVICE)
    assert _checks(zd) == (2, 2)


# --- read-only connections on SQLite neither take nor wait for the write lock --------------------


async def test_sqlite_read_connection_does_not_wait_for_a_writer(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/zd.sqlite3")
    try:
        await upgrade_database(database.engine)
        async with database.sessions() as writer:
            # BEGIN IMMEDIATE: this session holds the write lock until it ends.
            await writer.execute(
                update(Client).where(Client.client_id == "nobody").values(disabled=True)
            )

            async def read() -> int | None:
                async with database.read_connection() as connection:
                    return await connection.scalar(select(func.count()).select_from(Client))

            # A BEGIN IMMEDIATE reader would wait for the writer (busy timeout 30 s).
            assert await asyncio.wait_for(read(), timeout=5) == 0

            await writer.rollback()
    finally:
        await database.dispose()


# --- status polls verify each SET once -----------------------------------------------------------


class _CountingVerify:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        for name in ("verify_set", "verify_set_with_jwks"):
            original = getattr(eventlog, name)

            def counted(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
                self.calls += 1
                return _original(*args, **kwargs)

            monkeypatch.setattr(eventlog, name, counted)


async def test_status_polls_verify_each_set_once(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingVerify(monkeypatch)
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        first = await sender.status(sent)
        after_first = counter.calls
        assert after_first == len(first.events)
        again = await sender.status(sent)
        assert counter.calls == after_first  # nothing new in the log: nothing verified again
        assert [e.set.jti for e in again.events] == [e.set.jti for e in first.events]
        zd.accept(sent.submission_id)
        report = await sender.status(sent)
        assert report.accepted
        assert counter.calls == after_first + 1  # only the new accept-submission
        sender._events.jwks_ttl = 0  # expired entries are verified again
        await sender.status(sent)
        assert counter.calls == after_first + 1 + len(report.events)


async def test_cached_sets_still_meet_the_expected_destination() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.accept(sent.submission_id)
        assert (await sender.status(sent)).accepted  # verified and remembered
        other = "0b799252-deb9-42b0-98d3-c50d24bbafe0"
        with pytest.raises(EventLogVerificationError, match="sent to destination"):
            await sender.status(sent.case_id, destination_id=other)


async def test_a_modified_set_is_never_taken_from_the_cache() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.accept(sent.submission_id)
        assert (await sender.status(sent)).accepted
        log = zd.case_events[sent.case_id]
        header, payload, signature = log[-1].split(".")
        log[-1] = f"{header}.{payload}.{signature[:-4]}AAAA"  # another signature
        with pytest.raises(EventLogVerificationError):
            await sender.status(sent)


# --- streamed decryption never waits on a thread of the loop's default executor -----------------


class _ThreadedAttachments(httpx.AsyncBaseTransport):
    """The fake ZD, but attachment bodies are produced by the loop's default executor — as our
    Zustelldienst does (blob files are read in threads) when it runs in the same process."""

    def __init__(self, zd: SubscriberZD) -> None:
        self.inner = zd.transport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if "/attachments/" not in request.url.path or response.status_code != 200:
            return response
        body = await response.aread()

        async def produced_in_threads() -> AsyncIterator[bytes]:
            for start in range(0, len(body), 7):
                yield await asyncio.to_thread(lambda at=start: body[at : at + 7])

        return httpx.Response(200, headers=response.headers, content=produced_in_threads())


async def test_attachment_decryption_does_not_starve_the_default_executor(
    tmp_path: Path,
) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=1))
    subscriber = make_subscriber(zd, transport=_ThreadedAttachments(zd))
    try:
        received = await asyncio.wait_for(
            subscriber.receive(built.submission_id or "", tmp_path / "in"), timeout=30
        )
    finally:
        await subscriber.aclose()
    assert received.valid
    assert [a.error for a in received.attachments] == [None]
