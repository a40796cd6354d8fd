"""Fixtures for integration tests: database backends and live Zustelldienst servers.

* ``db_backend`` — parametrized over ``sqlite`` and ``postgres`` (a fresh PostgreSQL database per
  test, dropped afterwards; skipped with a message when PostgreSQL is unreachable).
* ``clock`` — a ``ManualClock`` shared with the server.
* ``live_server`` — our app on a loopback port with the test's backend and clock (workers off).
* ``start_server`` — factory for servers with other settings, workers or extra routers.
* ``live`` — one server per test module (module-scoped), parametrized over ``sqlite`` and
  ``postgres``, default settings; tests create their own clients and destinations. Modules that
  need other settings define their own ``live``.

Usage::

    def test_something(live_server: LiveServer) -> None:
        sender = live_server.seed.sender()
        with live_server.client(headers=live_server.seed.auth(sender)) as http:
            assert http.get("/v1/info").status_code == 200
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fitconnect_kit.protocol.clock import ManualClock
from tests.support.db import DbBackend, make_backend, postgres_unavailable_reason
from tests.support.live import LiveServer
from tests.support.seed import shared_live_server

StartServer = Callable[..., LiveServer]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbBackend]:
    if request.param == "postgres":
        reason = postgres_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    with make_backend(request.param, tmp_path) as backend:
        yield backend


@pytest.fixture
def sqlite_backend(tmp_path: Path) -> Iterator[DbBackend]:
    """SQLite only, for tests where the database does not matter."""
    with make_backend("sqlite", tmp_path) as backend:
        yield backend


@pytest.fixture
def postgres_backend(tmp_path: Path) -> Iterator[DbBackend]:
    reason = postgres_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with make_backend("postgres", tmp_path) as backend:
        yield backend


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def start_server(db_backend: DbBackend, clock: ManualClock) -> Iterator[StartServer]:
    """``start_server(rate_limit={...}, registered_workers=[...], routers=[...])`` → a server.

    Keyword arguments other than ``backend``, ``clock``, ``registered_workers``, ``server_keys``
    and ``routers`` are ServerConfig settings, e.g. ``workers={"enabled": True}``.
    """
    servers: list[LiveServer] = []

    def start(*, backend: DbBackend | None = None, **kwargs: Any) -> LiveServer:
        options = {
            k: kwargs.pop(k)
            for k in ("registered_workers", "server_keys", "routers")
            if k in kwargs
        }
        server_clock = kwargs.pop("clock", clock)
        chosen = backend or db_backend
        server = LiveServer(chosen.config(**kwargs), clock=server_clock, **options)
        servers.append(server)
        return server.start()

    yield start
    for server in reversed(servers):
        server.stop()


@pytest.fixture
def live_server(start_server: StartServer) -> LiveServer:
    return start_server()


@pytest.fixture(
    scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with shared_live_server(request.param, tmp_path_factory.mktemp("zd")) as server:
        yield server
