"""Our Zustelldienst running for real on loopback: in a thread (:class:`LiveServer`) or as a
separate process (:class:`ServerProcess`).

``LiveServer`` binds a socket to ``127.0.0.1:0`` first, so ``base_url`` (the ``iss`` of tokens
and SETs) is known before the app is built, then runs uvicorn on its own event loop in a
background thread. Tests share the injected clock (usually a ``ManualClock``) with the server and
can run coroutines on the server's loop (``live.run(...)``), e.g. a worker pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import uvicorn
from fastapi import APIRouter, FastAPI

from fitconnect_kit.protocol.clock import Clock, ManualClock
from fitconnect_kit.server.app import create_app
from fitconnect_kit.server.config import ServerConfig, config_from_mapping
from fitconnect_kit.server.server_keys import PresetServerKeys
from fitconnect_kit.server.state import ZdState
from fitconnect_kit.server.workers import Worker
from tests.keycache import rsa_key

if TYPE_CHECKING:
    from tests.support.seed import Seeder

T = TypeVar("T")

START_TIMEOUT = 60.0
#: keycache indexes of the ZD's own keys in tests (destinations use other indexes).
SET_KEY_INDEX = 100
TOKEN_KEY_INDEX = 101


def preset_server_keys() -> PresetServerKeys:
    """Cached RSA-4096 keys for the server, so tests do not generate keys on every start."""
    return PresetServerKeys(
        set_signing=rsa_key(SET_KEY_INDEX), token_signing=rsa_key(TOKEN_KEY_INDEX)
    )


def bind_loopback_socket() -> socket.socket:
    # IPPROTO_TCP, not 0: accepted sockets inherit the protocol, and asyncio disables Nagle's
    # algorithm only for sockets that say they are TCP (else ~40 ms per keep-alive request).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_config(base_url: str, port: int, settings: Mapping[str, Any]) -> ServerConfig:
    """A config for tests: workers off and generous rate limits unless ``settings`` say so."""
    data: dict[str, Any] = {
        "base_url": base_url,
        "host": "127.0.0.1",
        "port": port,
        "log_level": "warning",
        "workers": {"enabled": False},
        "rate_limit": {"burst": 10_000, "anonymous_burst": 10_000},
    }
    for key, value in settings.items():
        if isinstance(value, Mapping) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return config_from_mapping(data)


class LiveServer:
    """Our app served by uvicorn on a real loopback socket, in a background thread.

    ``settings`` are ServerConfig members (nested sections as dicts); ``base_url``, host and port
    are set here. Worker *loops* are off unless ``settings`` say ``workers={"enabled": True}``;
    the workers are registered anyway (``registered_workers``, default: the app's defaults), so a
    test runs a pass with :meth:`run_worker`. ``routers`` adds test-only endpoints.
    """

    def __init__(
        self,
        settings: Mapping[str, Any],
        *,
        clock: Clock | None = None,
        registered_workers: Iterable[Worker] | None = None,
        server_keys: PresetServerKeys | None = None,
        routers: Iterable[APIRouter] = (),
    ) -> None:
        self._sock = bind_loopback_socket()
        self.port: int = self._sock.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.clock: Clock = clock or ManualClock()
        self.config = test_config(self.base_url, self.port, settings)
        self.app: FastAPI = create_app(
            self.config,
            clock=self.clock,
            workers=registered_workers,
            server_keys=server_keys or preset_server_keys(),
        )
        for router in routers:
            self.app.include_router(router)
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                log_level="warning",
                lifespan="on",
                access_log=False,
                timeout_graceful_shutdown=5,
            )
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name=f"zd-{self.port}", daemon=True)
        self._startup_error: BaseException | None = None
        self._seeder: Seeder | None = None

    # --- lifecycle ---

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._startup_error = exc
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the live server did not start: {self._startup_error!r}")
            if time.monotonic() > deadline:
                raise TimeoutError("the live server did not start in time")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout=30)
        self._sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers ---

    @property
    def zd(self) -> ZdState:
        state: ZdState = self.app.state.zd
        return state

    @property
    def manual_clock(self) -> ManualClock:
        assert isinstance(self.clock, ManualClock), "this server was started with another clock"
        return self.clock

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` on the server's event loop (where its engine and workers live)."""
        assert self._loop is not None, "the server is not running"
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def run_worker(self, name: str) -> object:
        """One pass of a registered worker, on the server loop."""
        return self.run(self.zd.workers.run_once(name, self.zd))

    def client(self, **kwargs: Any) -> httpx.Client:
        """A sync httpx client for this server (close it, or use it in ``with``)."""
        return httpx.Client(base_url=self.base_url, timeout=30, **kwargs)

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def seed(self) -> Seeder:
        from tests.support.seed import Seeder

        if self._seeder is None:
            self._seeder = Seeder(self)
        return self._seeder


# --- separate process ----------------------------------------------------------------------------


def write_config_file(path: Path, config: Mapping[str, Any]) -> Path:
    import json

    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    return path


class ServerProcess:
    """``python -m fitconnect_kit.server`` (or ``fitconnect serve``) as a child process.

    With ``inherit_socket`` (default) the parent binds ``127.0.0.1:0`` and hands the listening
    socket to the child (``--fd``): no port race. Otherwise a free port is picked and passed with
    ``--port`` (``use_cli`` runs ``fitconnect serve``, which only takes ``--port``).
    """

    def __init__(
        self,
        config_file: Path,
        *,
        port: int | None = None,
        sock: socket.socket | None = None,
        use_cli: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config_file = config_file
        self.sock = sock
        self.port = sock.getsockname()[1] if sock is not None else port
        assert self.port is not None
        self.base_url = f"http://127.0.0.1:{self.port}"
        if use_cli:
            bin_dir = Path(sys.executable).parent
            command = [str(bin_dir / "fitconnect"), "serve", "--config", str(config_file)]
            command += ["--port", str(self.port)]
        else:
            command = [sys.executable, "-m", "fitconnect_kit.server", "--config", str(config_file)]
            if sock is not None:
                command += ["--fd", str(sock.fileno())]
            else:
                command += ["--port", str(self.port)]
        self.command = command
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: a chatty child must never block on a full pipe.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in output()/stop()

    def start(self, *, wait: bool = True) -> ServerProcess:
        pass_fds = (self.sock.fileno(),) if self.sock is not None else ()
        self.process = subprocess.Popen(
            self.command,
            env=self.env,
            pass_fds=pass_fds,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server process exited early:\n{self.output()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/v1/info", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"server process did not become ready:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        """Send ``sig`` and wait; returns the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.sock is not None:
            self.sock.close()
        return self.process.returncode

    def output(self) -> str:
        """Everything the process printed (only once it has ended)."""
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")


def free_port() -> int:
    with contextlib.closing(bind_loopback_socket()) as sock:
        port: int = sock.getsockname()[1]
        return port
