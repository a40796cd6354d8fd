"""Loose ends of the Zustelldienst: refusals reach clients that are still sending, PATCH with
``null`` (merge patch), the ``cleanup`` worker, callback leases on shutdown, the SSRF guard."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import update

from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.server.callback_guard import is_public_address
from fitconnect_kit.server.config import ServerConfig, config_from_mapping
from fitconnect_kit.server.storage.blobs import FileBlobStore
from fitconnect_kit.server.storage.models import Blob, CallbackDelivery, Destination
from fitconnect_kit.server.workers import Worker, WorkerRegistry
from fitconnect_kit.server.workers.callbacks import CallbackPassResult
from fitconnect_kit.server.workers.cleanup import CleanupPassResult
from tests.integration.conftest import StartServer
from tests.support.callback_receiver import CallbackReceiver
from tests.support.live import LiveServer
from tests.support.seed import (
    SeededDestination,
    announce_body,
    assert_problem,
    encrypt_for,
    shared_live_server,
)
from tests.support.submissions import create_submission, fetch_submission, load_deliveries

SECRET = "hardening-callback-secret-0123456789"
#: Small limits so that refusals of "large" bodies are cheap to provoke.
ATTACHMENT_LIMIT = 1_000_000
DRAIN_LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    settings = {
        "limits": {
            "max_attachment_size": ATTACHMENT_LIMIT,
            "refusal_drain_size": DRAIN_LIMIT,
            "refusal_drain_seconds": 5,
        }
    }
    with shared_live_server("sqlite", tmp_path_factory.mktemp("zd"), **settings) as server:
        yield server


@pytest.fixture(scope="module")
def sender_auth(live: LiveServer) -> dict[str, str]:
    return {**live.seed.auth(live.seed.sender()), "Content-Type": "application/jose"}


_DESTINATIONS: dict[int, SeededDestination] = {}


def _destination(live: LiveServer) -> SeededDestination:
    if id(live) not in _DESTINATIONS:
        _DESTINATIONS[id(live)] = live.seed.destination()
    return _DESTINATIONS[id(live)]


def _unknown_attachment_path() -> str:
    return f"/v1/submissions/{new_id()}/attachments/{new_id()}"


class _Body:
    """A streamed request body that counts what the client managed to send (``prefix``, then
    base64url characters)."""

    def __init__(self, total: int, chunk: int = 64 * 1024, prefix: bytes = b"") -> None:
        self.total = total
        self.sent = 0
        self._chunk = b"e" * chunk
        self._prefix = prefix

    def __iter__(self) -> Iterator[bytes]:
        if self._prefix:
            self.sent += len(self._prefix)
            yield self._prefix
        while self.sent < self.total:
            piece = self._chunk[: min(len(self._chunk), self.total - self.sent)]
            self.sent += len(piece)
            yield piece


def _problem(response: httpx.Response, status: int, name: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("/" + name)


# --- refusals of bodies that are still coming ---------------------------------------------------


@pytest.mark.parametrize(
    ("declared", "size", "status", "name"),
    [
        (True, 600_000, 404, "submission-not-found"),  # small rest: discarded, kept alive
        (True, 50_000_000, 413, "attachment-too-large"),  # Content-Length over the limit
        (False, 50_000_000, 413, "attachment-too-large"),  # chunked, cut off at the limit
        (False, 50_000_000, 422, "invalid-jwe"),  # chunked, refused by the streaming check
    ],
    ids=["unknown-small", "declared-too-large", "streamed-too-large", "streamed-invalid"],
)
def test_client_streaming_a_refused_upload_receives_the_problem(
    live: LiveServer,
    sender_auth: dict[str, str],
    declared: bool,
    size: int,
    status: int,
    name: str,
) -> None:
    prefix = b""
    if status == 413 and not declared:
        # A syntactically valid start (header, key, iv) so that only the size is wrong.
        prefix = encrypt_for(_destination(live), b"x").rsplit(".", 2)[0].encode() + b"."
    body = _Body(size, prefix=prefix)
    headers = dict(sender_auth)
    if declared:
        headers["Content-Length"] = str(size)
    with live.client() as http:
        path = _unknown_attachment_path()  # refused before the body is read (404 or 413)
        if not declared:  # an announced attachment: refused while the body streams in
            attachment_id = new_id()
            created = http.post(
                "/v1/submissions",
                json=announce_body(_destination(live).destination_id, [attachment_id]),
                headers={"Authorization": sender_auth["Authorization"]},
            )
            assert created.status_code == 201, created.text
            path = f"/v1/submissions/{created.json()['submissionId']}/attachments/{attachment_id}"
        response = http.put(path, headers=headers, content=body)
    _problem(response, status, name)
    if size <= DRAIN_LIMIT:
        assert body.sent == size
        assert "connection" not in response.headers  # the connection stays usable
    else:
        assert response.headers["connection"] == "close"
        assert body.sent < size  # the server stopped reading after a bounded drain


def test_endless_unwanted_upload_is_drained_only_up_to_the_bound(live: LiveServer) -> None:
    """Without a token, refused before reading; an endless chunked body is not read forever."""
    body = _Body(2 * 1024**3)  # "endless": an unbounded drain would take it all
    with live.client() as http:
        response = http.put(
            _unknown_attachment_path(),
            headers={"Content-Type": "application/jose"},
            content=body,
        )
    _problem(response, 401, "unauthorized")
    assert body.sent < 200 * 1024 * 1024  # the drain bound plus socket buffers


def _read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_drained_refusal_keeps_the_connection_and_expect_continue_is_answered_at_once(
    live: LiveServer, sender_auth: dict[str, str]
) -> None:
    token = sender_auth["Authorization"]
    body = b"x" * 300_000
    request = (
        f"PUT {_unknown_attachment_path()} HTTP/1.1\r\nHost: zd\r\nAuthorization: {token}\r\n"
        f"Content-Type: application/jose\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(request + body)
        first = _read_response(sock)
        assert first.startswith(b"HTTP/1.1 404 ")
        sock.sendall(b"GET /v1/info HTTP/1.1\r\nHost: zd\r\n\r\n")  # same connection
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")

    # A client waiting for "100 Continue" gets the final answer instead, and no invitation.
    request = (
        f"PUT {_unknown_attachment_path()} HTTP/1.1\r\nHost: zd\r\nAuthorization: {token}\r\n"
        "Content-Type: application/jose\r\nExpect: 100-continue\r\nContent-Length: 400000\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
        sock.sendall(request)
        answer = _read_response(sock)
        assert answer.startswith(b"HTTP/1.1 404 "), answer[:40]
        assert b"connection: close" in answer.lower()
        assert sock.recv(100) == b""  # closed cleanly (FIN), nothing else sent


# --- PATCH: explicit null removes (merge patch) ---------------------------------------------------


def test_patch_null_removes_optional_members(live: LiveServer) -> None:
    dest = live.seed.destination(
        callback_url="https://fachverfahren.example/cb", callback_secret=SECRET
    )
    manager = live.seed.auth(live.seed.subscriber(dest.destination_id, manage=True))
    url = f"/v1/destinations/{dest.destination_id}"
    with live.client(headers=manager) as http:
        before = http.patch(url, json={"contactInformation": {"email": "it@example.org"}})
        assert before.json()["callback"] == {"url": "https://fachverfahren.example/cb"}
        assert before.json()["name"] == "Test-Zustellpunkt"
        # Absent members stay; null removes.
        after = http.patch(url, json={"callback": None, "name": None})
        assert after.status_code == 200, after.text
        body = after.json()
        assert "callback" not in body
        assert "name" not in body
        assert body["contactInformation"] == {"email": "it@example.org"}
        assert (
            http.patch(url, json={"contactInformation": None}).json().get("contactInformation")
            is None
        )
        for member in ("status", "services", "encryptionKid", "metadataVersions"):
            problem = assert_problem(
                http.patch(url, json={member: None}), 422, "invalid-request-body"
            )
            assert problem["violations"][0]["path"] == f"$.{member}"
        assert http.get(url).json()["status"] == "active"

    async def stored() -> Destination | None:
        async with live.zd.sessions() as session:
            return await session.get(Destination, dest.destination_id)

    row = live.run(stored())
    assert row is not None
    assert (row.callback_url, row.callback_secret) == (None, None)


# --- cleanup worker -----------------------------------------------------------------------------


def _age_blob(live: LiveServer, key: str, seconds: float) -> None:
    store = live.zd.blobs
    if isinstance(store, FileBlobStore):
        path = store.path_for(key)
        past = time.time() - seconds
        os.utime(path, (past, past))
        return

    async def run() -> None:
        async with live.zd.sessions() as session, session.begin():
            await session.execute(
                update(Blob)
                .where(Blob.blob_key == key)
                .values(created_at=datetime.now(UTC) - timedelta(seconds=seconds))
            )

    live.run(run())


def test_cleanup_removes_old_orphans_and_temp_files_only(start_server: StartServer) -> None:
    live = start_server()
    assert "cleanup" in live.zd.workers.names
    grace = live.config.workers.cleanup_grace.total_seconds()
    destination = live.seed.destination()
    kept = create_submission(live, destination, attachments=1)

    async def write(key: str) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"orphan ciphertext"

        await live.zd.blobs.write(key, chunks())

    old_orphan = f"submissions/{new_id()}/attachments/{new_id()}/{new_id()}"
    young_orphan = f"submissions/{new_id()}/attachments/{new_id()}/{new_id()}"
    for key in (old_orphan, young_orphan):
        live.run(write(key))
    _age_blob(live, old_orphan, grace + 60)
    for key in kept.blob_keys:  # referenced: never removed, however old
        _age_blob(live, key, grace * 10)
    temp_files: list[Path] = []
    if isinstance(live.zd.blobs, FileBlobStore):
        shard = live.zd.blobs.path_for(old_orphan).parent
        for age in (grace + 60, 0):
            temp = shard / f".{'0' * 64}.{os.urandom(8).hex()}.part"
            temp.write_bytes(b"half an upload")
            os.utime(temp, (time.time() - age, time.time() - age))
            temp_files.append(temp)

    result = live.run_worker("cleanup")
    assert isinstance(result, CleanupPassResult)
    assert result.orphan_blobs == 1
    assert not live.run(live.zd.blobs.exists(old_orphan))
    assert live.run(live.zd.blobs.exists(young_orphan))
    assert all(live.run(live.zd.blobs.exists(key)) for key in kept.blob_keys)
    if temp_files:
        assert result.temp_files == 1
        assert [t.exists() for t in temp_files] == [False, True]
    # A second pass (or another node's, at the same time) finds nothing more to do.
    again = live.run_worker("cleanup")
    assert isinstance(again, CleanupPassResult)
    assert (again.orphan_blobs, again.temp_files) == (0, 0)


# --- callback leases on graceful shutdown ---------------------------------------------------------


def test_shutdown_releases_the_leases_of_unfinished_callbacks(
    start_server: StartServer, clock: ManualClock
) -> None:
    with CallbackReceiver(secret=SECRET, clock=clock, hang=30) as hanging:
        live = start_server(
            workers={"enabled": True, "callback_interval": 0.2, "shutdown_grace": 0.3},
            callbacks={"request_timeout": 20, "lock_seconds": 60},
        )
        destination = live.seed.destination(callback_url=hanging.url, callback_secret=SECRET)
        create_submission(live, destination, attachments=0)
        hanging.wait_for(1, timeout=10)  # in flight, leased by this node
        [row] = load_deliveries(live)
        assert row.locked_by == live.zd.node_id
        started = time.monotonic()
        live.stop()  # graceful: 0.3 s for the hanging request, then cancelled and released
        assert time.monotonic() - started < 10
        hanging.release()

    # Another node on the same database (same, unadvanced clock: the old lease would still
    # be valid) takes the delivery over at once.
    second = start_server()
    [row] = load_deliveries(second)
    assert (row.status, row.locked_by, row.locked_until, row.attempts) == ("pending", None, None, 0)
    with CallbackReceiver(secret=SECRET, clock=clock) as receiver:
        second.run(_retarget(second, receiver.url))
        result = second.run_worker("callbacks")
        assert isinstance(result, CallbackPassResult)
        assert result.delivered == 1
        assert len(receiver.received) == 1


async def test_stop_gives_graceful_passes_time_and_cancels_the_others() -> None:
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def graceful_pass(zd: Any) -> None:
        while not zd.workers.stopping:  # noqa: ASYNC110 - polls like the callbacks pass
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # winds down: the requests in flight finish
        finished.set()

    async def other_pass(zd: Any) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    registry = WorkerRegistry(
        [
            Worker("graceful", graceful_pass, interval=3600, graceful=True),
            Worker("other", other_pass, interval=3600),
        ]
    )
    state = SimpleNamespace(config=ServerConfig(), workers=registry)
    registry.start(state)  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await registry.stop(grace=10)
    assert finished.is_set()
    assert cancelled.is_set()
    assert time.monotonic() - started < 5  # not the whole grace: the pass ended by itself
    assert not registry.running


async def _retarget(live: LiveServer, url: str) -> None:
    async with live.zd.sessions() as session, session.begin():
        await session.execute(update(CallbackDelivery).values(target_url=url))


# --- SSRF guard ---------------------------------------------------------------------------------


def test_public_address_classification() -> None:
    refused = [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fd00::1",
        "::ffff:10.0.0.1",
        "192.0.2.10",
    ]
    allowed = ["93.184.216.34", "2a00:1450:4001:82b::200e", "::ffff:93.184.216.34"]
    for text in refused:
        assert not is_public_address(ipaddress.ip_address(text)), text
    for text in allowed:
        assert is_public_address(ipaddress.ip_address(text)), text


def test_guard_defaults_follow_the_key_policy(tmp_path: Path) -> None:
    anchor = tmp_path / "anchor.pem"
    anchor.write_text("unused", encoding="utf-8")
    assert not config_from_mapping({}).blocks_private_callback_targets
    strict = config_from_mapping({"key_policy": "strict", "trust_anchors": [str(anchor)]})
    assert strict.blocks_private_callback_targets
    off = config_from_mapping(
        {
            "key_policy": "strict",
            "trust_anchors": [str(anchor)],
            "callbacks": {"block_private_addresses": False},
        }
    )
    assert not off.blocks_private_callback_targets
    assert config_from_mapping(
        {"callbacks": {"block_private_addresses": True}}
    ).blocks_private_callback_targets


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Test key policy (plain-HTTP loopback URLs pass the URL rule) with the guard on."""
    with shared_live_server(
        "sqlite", tmp_path_factory.mktemp("guarded"), callbacks={"block_private_addresses": True}
    ) as server:
        yield server


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/cb",
        "https://10.0.0.7:8443/cb",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/cb",
        "https://[fd00::5]/cb",
        "https://localhost/cb",
        "http://127.0.0.1:9/cb",
    ],
)
def test_guard_refuses_private_targets_when_configured(guarded: LiveServer, url: str) -> None:
    destination = guarded.seed.destination()
    manager = guarded.seed.auth(guarded.seed.subscriber(destination.destination_id, manage=True))
    sender = guarded.seed.auth(guarded.seed.sender())
    callback = {"url": url, "secret": SECRET}
    with guarded.client() as http:
        announced = http.post(
            "/v1/submissions",
            json=announce_body(destination.destination_id, callback=callback),
            headers=sender,
        )
        problem = assert_problem(announced, 422, "invalid-callback")
        assert "non-public address" in problem["detail"]
        assert SECRET not in announced.text
        assert_problem(
            http.patch(
                f"/v1/destinations/{destination.destination_id}",
                json={"callback": callback},
                headers=manager,
            ),
            422,
            "invalid-callback",
        )


def test_guard_accepts_public_and_unresolvable_targets(guarded: LiveServer) -> None:
    destination = guarded.seed.destination()
    sender = guarded.seed.auth(guarded.seed.sender())
    with guarded.client() as http:
        for url in ("https://93.184.216.34/cb", "https://fachverfahren.invalid/cb"):
            callback = {"url": url, "secret": SECRET}
            announced = http.post(
                "/v1/submissions",
                json=announce_body(destination.destination_id, callback=callback),
                headers=sender,
            )
            assert announced.status_code == 201, announced.text


def test_guard_refuses_private_targets_at_delivery(guarded: LiveServer) -> None:
    """A target stored before the guard was on (or resolving differently later) is refused
    when it is delivered: no request reaches it, no retries."""
    with CallbackReceiver(secret=SECRET, clock=guarded.clock) as receiver:
        destination = guarded.seed.destination()
        targets = [receiver.url, receiver.url.replace("127.0.0.1", "localhost")]
        for target in targets:
            seeded = create_submission(
                guarded, destination, attachments=0, sender_callback=(target, SECRET)
            )
            fetch_submission(guarded, seeded.submission_id)  # NEW_EVENTS to the sender
        started = time.monotonic()
        result = guarded.run_worker("callbacks")
        assert isinstance(result, CallbackPassResult)
        assert result.failed == 2
        assert time.monotonic() - started < 5
        assert receiver.received == []
    rows = [r for r in load_deliveries(guarded) if r.target_url in targets]
    assert [r.status for r in rows] == ["failed", "failed"]
    assert all(r.attempts == 1 for r in rows)
    assert all("non-public address" in (r.last_error or "") for r in rows)
