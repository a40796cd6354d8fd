"""The worker registry: periodic passes, wake-ups, failures, clean shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fitconnect_kit.server.config import ServerConfig
from fitconnect_kit.server.workers import Worker, WorkerRegistry


class _State:
    config = ServerConfig()


async def test_loop_runs_wakes_survives_errors_and_stops() -> None:
    calls: list[str] = []
    woken = asyncio.Event()

    async def flaky(state: Any) -> None:
        calls.append("pass")
        if len(calls) == 1:
            raise RuntimeError("first pass fails")
        if len(calls) >= 3:
            woken.set()

    registry = WorkerRegistry([Worker("flaky", flaky, interval=3600)])
    registry.start(_State())  # type: ignore[arg-type]
    assert registry.running
    for _ in range(100):
        if len(calls) >= 1:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    registry.wake("flaky")  # second pass now instead of in an hour
    await asyncio.sleep(0.05)
    registry.wake("flaky")
    await asyncio.wait_for(woken.wait(), timeout=5)
    await registry.stop()
    assert not registry.running
    assert len(calls) >= 3


async def test_run_once_and_registration_rules() -> None:
    async def job(state: Any) -> int:
        return 42

    registry = WorkerRegistry()
    registry.register(Worker("job", job, interval=lambda config: config.workers.cleanup_interval))
    assert registry.get("job").interval_for(ServerConfig()) == 300.0
    assert await registry.run_once("job", _State()) == 42  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Worker("job", job, interval=1))
    with pytest.raises(KeyError, match="no worker"):
        registry.get("missing")
