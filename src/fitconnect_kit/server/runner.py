"""Run the Zustelldienst with uvicorn in this process (``fitconnect serve`` and
``python -m fitconnect_kit.server``).

uvicorn handles SIGINT and SIGTERM: it stops accepting connections, finishes running requests
(up to ``GRACEFUL_SHUTDOWN_SECONDS``), runs the app's shutdown (workers cancelled, database
closed) and returns.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Generator, Sequence

import uvicorn

from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.server.app import create_app
from fitconnect_kit.server.config import CONFIG_PATH_ENV, ServerConfig, load_config

GRACEFUL_SHUTDOWN_SECONDS = 10
_HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising the signal after the graceful shutdown.

    uvicorn re-raises SIGTERM/SIGINT once it has shut down, so the process would end "killed by
    signal"; after a complete shutdown we exit normally (status 0) instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        original = {sig: signal.signal(sig, self.handle_exit) for sig in _HANDLED_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in original.items():
                signal.signal(sig, handler)


def _configure_logging(config: ServerConfig) -> None:
    # uvicorn configures only its own loggers; ours (fitconnect_kit.*) log in the same style.
    logger = logging.getLogger("fitconnect_kit")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)-9s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(config.log_level.upper())


def serve(config: ServerConfig, *, sock: socket.socket | None = None) -> None:
    """Serve until SIGINT/SIGTERM. With ``sock`` (already bound), host/port are not used."""
    _configure_logging(config)
    app = create_app(config)
    uvicorn_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=config.log_level,
        lifespan="on",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        server_header=False,
        # X-Forwarded-For is honoured from $FORWARDED_ALLOW_IPS (uvicorn default: 127.0.0.1),
        # so per-IP rate limits see client addresses behind a reverse proxy.
        proxy_headers=True,
    )
    server = _Server(uvicorn_config)
    server.run(sockets=[sock] if sock is not None else None)
    if not server.started:
        raise FitConnectError("the Zustelldienst did not start; see the log above")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fitconnect_kit.server [--config FILE] [--host H] [--port P] [--fd N]``."""
    parser = argparse.ArgumentParser(prog="python -m fitconnect_kit.server")
    parser.add_argument("--config", help=f"TOML/JSON config file (default: ${CONFIG_PATH_ENV})")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--fd", type=int, help="serve on this inherited, bound TCP socket")
    args = parser.parse_args(argv)
    path = args.config or os.environ.get(CONFIG_PATH_ENV) or None
    try:
        config = load_config(path, overrides={"host": args.host, "port": args.port})
        sock = socket.socket(fileno=args.fd) if args.fd is not None else None
        serve(config, sock=sock)
    except FitConnectError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0
