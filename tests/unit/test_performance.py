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
from tests.keycache import rsa_key
from tests.unit.test_client_fakes import JSON_SCHEMA, SERVICE, FakeZustelldienst, RecordingSleep
from tests.unit.test_client_sender import send_simple, sender_for
from tests.unit.test_subscriber_fakes import SubscriberZD, base_plan, make_subscriber, send_plan

from fitconnect_kit.client import SubmissionBuilder, eventlog
from fitconnect_kit.client import sender as sender_module
from fitconnect_kit.client.errors import (
    ApiError,
    DestinationInactiveError,
    EventLogVerificationError,
)
from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key
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
        for name in ("verify_parsed_set",):
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


# --- SET parsing and key caches of the event log reader -----------------------------------------


async def test_parsed_sets_are_remembered_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eventlog, "PARSED_CACHE_SIZE", 2)
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.accept(sent.submission_id)
        tokens = zd.case_events[sent.case_id]
        assert len(tokens) >= 3
        reader = sender._events
        first = reader.parse(tokens[0])
        assert reader.parse(tokens[0]) is first  # the same token: parsed once
        assert reader.parse(tokens[1]).set.jti != first.set.jti  # another token: its own entry
        reader.parse(tokens[2])  # a third one evicts the least recently used (tokens[0])
        assert list(reader._parsed) == [tokens[1], tokens[2]]
        assert reader.parse(tokens[0]) is not first


async def test_zustelldienst_keys_are_converted_once_per_jwks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conversions: list[str] = []
    original = eventlog.public_key_from_jwk

    def counted(jwk: Any) -> Any:
        conversions.append(jwk["kid"])
        return original(jwk)

    monkeypatch.setattr(eventlog, "public_key_from_jwk", counted)
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        assert (await sender.status(sent)).events
        zd.accept(sent.submission_id)
        assert (await sender.status(sent)).accepted
        assert conversions == [zd.zd_jwk["kid"]]  # several ZD SETs, one conversion


async def test_a_refetched_jwks_replaces_the_cached_zustelldienst_keys() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        assert (await sender.status(sent)).events  # the ZD key is now cached
        # The same kid now names another key: the SETs signed before no longer verify once the
        # JWKS is fetched again — the cached key of the old JWKS must not be used.
        other = rsa_key(4).public_key()
        replaced = jwk_from_public_key(other, alg="PS512", key_ops=["verify"], use="sig")
        replaced["kid"] = zd.zd_jwk["kid"]
        zd.zd_jwk = replaced
        sender._events.jwks_ttl = 0  # JWKS and verified SETs expire
        with pytest.raises(EventLogVerificationError, match="does not verify"):
            await sender.status(sent)


async def test_an_unknown_zustelldienst_kid_is_a_problem_not_a_cache_hit() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        assert (await sender.status(sent)).events
        zd.zd_jwk = {**zd.zd_jwk, "kid": "another-kid"}  # SETs name a kid the JWKS lacks
        sender._events.jwks_ttl = 0
        with pytest.raises(EventLogVerificationError, match="no key with kid"):
            await sender.status(sent)


# --- sender: fewer polls and thread hops --------------------------------------------------------


async def test_wait_learns_how_long_the_destination_takes() -> None:
    zd = FakeZustelldienst()
    sleep = RecordingSleep(zd.clock)
    async with sender_for(zd, sleep=sleep) as sender:
        first = await send_simple(zd, sender)
        polls = 0
        original = sender.status

        async def status(*args: Any, **kwargs: Any) -> Any:
            nonlocal polls
            polls += 1
            if polls == 2:  # decided between the first poll (2 s) and the second (5 s)
                zd.accept(first.submission_id)
            return await original(*args, **kwargs)

        sender.status = status  # type: ignore[method-assign]
        assert (await sender.wait(first, poll_interval=2, max_interval=10)).accepted
        assert sleep.delays == [2, 3]
        assert list(sender._decision_delays[zd.destination_id]) == [3.5]

        sleep.delays.clear()
        second = await send_simple(zd, sender)
        zd.accept(second.submission_id)
        sender.status = original  # type: ignore[method-assign]
        assert (await sender.wait(second, poll_interval=2, max_interval=10)).accepted
        assert sleep.delays == [3.5]  # the first poll comes when the last decision came
        assert list(sender._decision_delays[zd.destination_id]) == [3.5, 1.75]


async def test_the_learned_first_pause_stays_within_the_intervals() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sender._learn_decision_delay("fast", 0.01)
        sender._learn_decision_delay("slow", 500.0)
        assert sender._first_pause("fast", 0.25, 30.0) == 0.25
        assert sender._first_pause("slow", 0.25, 30.0) == 30.0
        assert sender._first_pause("unknown", 0.25, 30.0) == 0.25


async def test_decision_delays_are_kept_for_a_bounded_number_of_destinations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender_module, "DECISION_DELAY_DESTINATIONS", 2)
    monkeypatch.setattr(sender_module, "DECISION_DELAY_SAMPLES", 3)
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        for seconds in (1.0, 2.0, 3.0, 4.0):
            sender._learn_decision_delay("a", seconds)
        sender._learn_decision_delay("b", 1.0)
        sender._learn_decision_delay("a", 5.0)  # "a" is now the most recent
        sender._learn_decision_delay("c", 1.0)  # evicts "b", the least recent
        assert list(sender._decision_delays) == ["a", "c"]
        assert list(sender._decision_delays["a"]) == [3.0, 4.0, 5.0]


async def test_a_small_attachment_is_encrypted_in_one_thread_hop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    batches: list[int] = []
    original = sender_module._UploadAttempt._next_batch

    def counted(self: Any, chunks: Any) -> Any:
        result = original(self, chunks)
        batches.append(len(result[1]))
        return result

    monkeypatch.setattr(sender_module._UploadAttempt, "_next_batch", counted)
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
    assert len(batches) == 1
    assert batches[0] > 1  # prefix, ciphertext and tag together
    stored = zd.only_submission()
    assert zd.decrypt(stored.attachments[sent.attachment_ids[0]]) == b"attachment bytes"


async def test_a_large_attachment_is_uploaded_in_bounded_batches(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sender_module, "CHUNK_SIZE", 1000)
    content = bytes(range(256)) * 40  # 10 240 bytes: several chunks and batches
    progress: list[int] = []
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        submission = (
            SubmissionBuilder(zd.destination_id)
            .service(SERVICE, "Testantrag")
            .json_data({"antrag": "x"}, schema_uri=JSON_SCHEMA)
            .attachment(content, filename="big.bin")
            .build()
        )
        sent = await sender.send(
            submission, progress=lambda _aid, done, _total: progress.append(done)
        )
    stored = zd.only_submission()
    assert zd.decrypt(stored.attachments[sent.attachment_ids[0]]) == content
    assert len(progress) > 3
    assert progress == sorted(progress)
