"""Server processes and the admin CLI: ``fitconnect serve``, ``python -m fitconnect_kit.server``
(several processes on one PostgreSQL), ``uvicorn --factory …:create_app_from_env`` and
``fitconnect admin`` round trips."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import httpx
import pytest

from fitconnect_kit.cli.main import main
from fitconnect_kit.protocol.keygen import write_key_set
from fitconnect_kit.server.config import CONFIG_PATH_ENV, ENV_PREFIX
from tests.integration.conftest import StartServer
from tests.support.db import DbBackend
from tests.support.live import ServerProcess, bind_loopback_socket, free_port, write_config_file
from tests.support.seed import DEFAULT_SCHEMA_URI, ClientCredentials, destination_key_set


def _config_file(tmp_path: Path, backend: DbBackend, port: int, **extra: object) -> Path:
    config = backend.config(
        base_url=f"http://127.0.0.1:{port}", port=port, log_level="warning", **extra
    )
    return write_config_file(tmp_path / f"zd-{port}.json", config)


def _run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err


@pytest.mark.slow
@pytest.mark.parametrize("use_cli", [True, False], ids=["fitconnect-serve", "python-m"])
def test_serve_starts_and_stops_cleanly(
    tmp_path: Path, sqlite_backend: DbBackend, use_cli: bool
) -> None:
    port = free_port()
    config = _config_file(tmp_path, sqlite_backend, port)
    server = ServerProcess(config, port=port, use_cli=use_cli).start()
    try:
        info = httpx.get(f"{server.base_url}/v1/info", timeout=10)
        assert info.status_code == 200
    finally:
        status = server.stop(signal.SIGTERM)
    assert status == 0, server.output()
    assert "Traceback" not in server.output()


class UvicornFactoryProcess(ServerProcess):
    """``uvicorn --factory fitconnect_kit.server.app:create_app_from_env`` with ``env`` only:
    the configuration comes from ``FITCONNECT_CONFIG``/``FITCONNECT_SERVER_*`` (the inherited
    environment's own such variables are dropped)."""

    def __init__(self, port: int, env: dict[str, str]) -> None:
        super().__init__(Path(os.devnull), port=port)
        self.command = [
            *(sys.executable, "-m", "uvicorn", "--factory"),
            "fitconnect_kit.server.app:create_app_from_env",
            *("--host", "127.0.0.1", "--port", str(port), "--log-level", "info"),
        ]
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(ENV_PREFIX) and name != CONFIG_PATH_ENV
        }
        self.env = {**inherited, **env}


@pytest.mark.slow
@pytest.mark.parametrize("source", ["environment", "config-file"])
def test_uvicorn_factory_starts_and_stops_cleanly(
    tmp_path: Path, sqlite_backend: DbBackend, source: str
) -> None:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    if source == "environment":
        env = {
            f"{ENV_PREFIX}BASE_URL": base_url,
            f"{ENV_PREFIX}DATA_DIR": str(sqlite_backend.data_dir),
            f"{ENV_PREFIX}DATABASE_URL": sqlite_backend.database_url,
            f"{ENV_PREFIX}BLOB_STORE": sqlite_backend.blob_store,
            f"{ENV_PREFIX}RATE_LIMIT__BURST": "500",  # a nested field
        }
    else:
        # The file has a wrong base URL; the environment overrides it.
        config = write_config_file(
            tmp_path / "zd.json",
            sqlite_backend.config(base_url="http://wrong.invalid", log_level="warning"),
        )
        env = {CONFIG_PATH_ENV: str(config), f"{ENV_PREFIX}BASE_URL": base_url}
    database = sqlite_backend.data_dir / "zustelldienst.sqlite3"
    assert not database.exists()
    server = UvicornFactoryProcess(port, env).start()
    try:
        info = httpx.get(f"{server.base_url}/v1/info", timeout=10)
        assert info.status_code == 200
        assert info.json()["implementation"]["name"]
        assert database.is_file()  # the configured SQLite database, migrated at startup
        spec = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
        assert spec["servers"] == [{"url": base_url}]
    finally:
        status = server.stop(signal.SIGTERM)
    output = server.output()
    # A clean stop: the lifespan shut down (workers, database), then uvicorn (≥ 0.29) re-raises
    # the SIGTERM it captured, so the exit status is -SIGTERM, not 0 — not a kill after timeout.
    assert status == -signal.SIGTERM, output
    assert "Application shutdown complete." in output, output
    assert "Finished server process" in output, output
    assert "Traceback" not in output
    assert "ERROR" not in output


@pytest.mark.slow
def test_serve_stops_on_sigint(tmp_path: Path, sqlite_backend: DbBackend) -> None:
    port = free_port()
    server = ServerProcess(_config_file(tmp_path, sqlite_backend, port), port=port).start()
    assert server.stop(signal.SIGINT) == 0, server.output()


def test_serve_reports_bad_config(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('base_url = "ftp://nope"\n', encoding="utf-8")
    code, _out, err = _run_cli(["serve", "--config", str(bad)], capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert "base_url" in err


@pytest.mark.slow
@pytest.mark.postgres
def test_two_processes_on_one_postgres_share_keys(
    tmp_path: Path, postgres_backend: DbBackend
) -> None:
    """Both start at once on an empty database, generate candidate keys, and agree."""
    sockets = [bind_loopback_socket() for _ in range(2)]
    servers = [
        ServerProcess(_config_file(tmp_path, postgres_backend, s.getsockname()[1]), sock=s)
        for s in sockets
    ]
    for server in servers:
        server.start(wait=False)
    try:
        for server in servers:
            server.wait_ready()
        jwks = [httpx.get(f"{s.base_url}/.well-known/jwks.json").json() for s in servers]
        assert jwks[0] == jwks[1]
        assert len(jwks[0]["keys"]) == 1
    finally:
        for server in servers:
            assert server.stop() == 0, server.output()


def test_admin_cli_round_trip(
    tmp_path: Path,
    db_backend: DbBackend,
    start_server: StartServer,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The server owns the base URL; the admin CLI works on the same database.
    server = start_server()
    config = write_config_file(tmp_path / "zd.json", db_backend.config(base_url=server.base_url))
    admin = ["admin", "--config", str(config)]

    code, out, _ = _run_cli([*admin, "client", "create", "--kind", "sender", "--json"], capsys)
    assert code == 0
    sender = json.loads(out)
    assert sender["scopes"] == ["send:region:DE"]
    code, out, _ = _run_cli(
        [*admin, "client", "create", "--kind", "subscriber", "--name", "Fachverfahren", "--json"],
        capsys,
    )
    subscriber = json.loads(out)

    keys_dir = tmp_path / "keys"
    write_key_set(destination_key_set(server), keys_dir)
    secret_file = tmp_path / "callback-secret"
    secret_file.write_text("s3cr3t-callback-secret\n", encoding="utf-8")
    code, out, err = _run_cli(
        [
            *admin,
            "destination",
            "create",
            "--service",
            "99123456760610",
            "--schema",
            DEFAULT_SCHEMA_URI,
            "--region",
            "DE09",
            "--reply-channel",
            "eMail",
            "--keys-dir",
            str(keys_dir),
            "--callback-url",
            "https://fachverfahren.example/callbacks",
            "--callback-secret-file",
            str(secret_file),
            "--name",
            "Bauamt",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    destination = json.loads(out)
    destination_id = destination["destinationId"]
    assert destination["status"] == "active"
    assert destination["services"][0]["identifier"] == "urn:de:fim:leika:leistung:99123456760610"
    assert destination["callback"] == {
        "url": "https://fachverfahren.example/callbacks",
        "secretSet": True,
    }
    assert "s3cr3t" not in out
    assert all("d" not in key for key in destination["keys"])

    code, out, _ = _run_cli(
        [
            *admin,
            "destination",
            "link",
            "--client",
            subscriber["clientId"],
            "--destination",
            destination_id,
        ],
        capsys,
    )
    assert code == 0
    code, out, _ = _run_cli([*admin, "destination", "show", destination_id], capsys)
    assert json.loads(out)["linkedClientIds"] == [subscriber["clientId"]]
    code, out, _ = _run_cli([*admin, "client", "list", "--json"], capsys)
    listed = {c["clientId"]: c for c in json.loads(out)}
    assert listed[subscriber["clientId"]]["destinationIds"] == [destination_id]
    assert "clientSecret" not in out
    assert sender["clientSecret"] not in out

    # The printed credentials work against the running server.
    for created in (sender, subscriber):
        creds = ClientCredentials(created["clientId"], created["clientSecret"], created["kind"], ())
        assert server.seed.token_response(creds).status_code == 200

    # Errors: one line, documented exit codes.
    code, _, err = _run_cli(
        [*admin, "destination", "show", "00000000-0000-4000-8000-000000000000"], capsys
    )
    assert code == 4
    assert err.count("\n") == 1
    code, _, err = _run_cli([*admin, "client", "create", "--kind", "robot"], capsys)
    assert code == 2
    code, _, err = _run_cli(
        [*admin, "client", "create", "--kind", "sender", "--scope", "send:region:FR"], capsys
    )
    assert code == 2
    assert "send:region" in err
