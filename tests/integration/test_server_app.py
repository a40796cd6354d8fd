"""The app factory's hooks: worker registry in a live server, state lifecycle."""

from __future__ import annotations

import asyncio
import threading

import pytest

from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.server.app import create_app
from fitconnect_kit.server.config import ServerConfig
from fitconnect_kit.server.state import ZdState
from fitconnect_kit.server.workers import Worker
from tests.support.db import DbBackend
from tests.support.live import LiveServer


def test_workers_run_in_the_server_and_stop_with_it(sqlite_backend: DbBackend) -> None:
    passes: list[str] = []
    cancelled = threading.Event()

    async def tick(zd: ZdState) -> str:
        # Workers get the app state: database, clock, config …
        async with zd.sessions() as session:
            assert session is not None
        passes.append(zd.clock.now().isoformat())
        return "ok"

    async def forever(zd: ZdState) -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    workers = [Worker("tick", tick, interval=3600), Worker("forever", forever, interval=1)]
    server = LiveServer(
        sqlite_backend.config(workers={"enabled": True}),
        clock=ManualClock(),
        registered_workers=workers,
    ).start()
    try:
        for _ in range(200):
            if passes:
                break
            threading.Event().wait(0.01)
        assert len(passes) == 1  # first pass right at start-up
        assert server.run_worker("tick") == "ok"  # an extra pass on demand
        server.run(_wake(server.zd, "tick"))
        for _ in range(200):
            if len(passes) >= 3:
                break
            threading.Event().wait(0.01)
        assert len(passes) >= 3
    finally:
        server.stop()
    assert cancelled.is_set()


async def _wake(zd: ZdState, name: str) -> None:
    zd.workers.wake(name)


def test_state_before_start_is_explicit() -> None:
    app = create_app(ServerConfig())
    zd: ZdState = app.state.zd
    with pytest.raises(RuntimeError, match="lifespan"):
        _ = zd.database
    with pytest.raises(RuntimeError, match="lifespan"):
        _ = zd.keys
    assert zd.body_limit_for("PUT", "/v1/submissions/a/attachments/b") == 500_000_000
    assert zd.body_limit_for("PUT", "/v1/submissions/a") == zd.config.limits.max_json_body_size
