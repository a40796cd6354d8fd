"""ServerConfig: files, environment overrides, derived values, one-line errors."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from fitconnect_kit.server.config import ConfigError, ServerConfig, load_config


def test_defaults() -> None:
    config = load_config(env={})
    assert config.base_url == "http://127.0.0.1:8080"
    assert config.token_lifetime == 1800
    assert config.database_url.startswith("sqlite+aiosqlite:///")
    assert config.database_url.endswith("zustelldienst-data/zustelldienst.sqlite3")
    assert config.blob_store == "filesystem"
    assert config.key_policy == "test"
    assert config.limits.max_attachment_size == 500_000_000
    assert config.limits.max_attachments == 100
    assert config.limits.max_submission_size == 2_000_000_000
    assert config.deadlines.incomplete_submission == timedelta(days=1)
    assert config.deadlines.reject_unfetched == timedelta(days=14)
    assert config.deadlines.delete_unfetched == timedelta(days=21)
    assert config.deadlines.delete_after_pickup == timedelta(days=7)
    assert config.deadlines.event_log_retention == timedelta(days=730)


def test_toml_file_with_relative_paths_and_env_overrides(tmp_path: Path) -> None:
    path = tmp_path / "zd.toml"
    path.write_text(
        """
base_url = "https://zd.example.org/"
data_dir = "state"
[rate_limit]
burst = 5
[deadlines]
reject_unfetched = "P10D"
delete_unfetched = 1814400
""",
        encoding="utf-8",
    )
    env = {
        "FITCONNECT_SERVER_PORT": "9000",
        "FITCONNECT_SERVER_RATE_LIMIT__BURST": "7",
        "FITCONNECT_SERVER_WORKERS__ENABLED": "false",
        "OTHER_VARIABLE": "ignored",
    }
    config = load_config(path, env=env)
    assert config.base_url == "https://zd.example.org"  # trailing slash removed
    assert config.data_dir == tmp_path / "state"
    assert config.database_url == f"sqlite+aiosqlite:///{tmp_path / 'state'}/zustelldienst.sqlite3"
    assert config.port == 9000
    assert config.rate_limit.burst == 7
    assert config.workers.enabled is False
    assert config.deadlines.reject_unfetched == timedelta(days=10)
    assert config.deadlines.delete_unfetched == timedelta(days=21)
    assert config.token_url == "https://zd.example.org/token"


def test_json_file_and_server_table(tmp_path: Path) -> None:
    path = tmp_path / "zd.json"
    path.write_text(json.dumps({"server": {"port": 1234}}), encoding="utf-8")
    assert load_config(path, env={}).port == 1234
    toml = tmp_path / "zd.toml"
    toml.write_text("[server]\nport = 4321\n", encoding="utf-8")
    assert load_config(toml, env={}).port == 4321


def test_postgres_and_multi_node_settings() -> None:
    env = {
        "FITCONNECT_SERVER_DATABASE_URL": "postgresql+asyncpg://zd:pw@db/zd",
        "FITCONNECT_SERVER_BLOB_STORE": "postgres",
    }
    config = load_config(env=env)
    assert config.uses_postgres
    assert config.redacted_database_url() == "postgresql+asyncpg://zd:***@db/zd"


def test_trust_anchors_from_env(tmp_path: Path) -> None:
    env = {
        "FITCONNECT_SERVER_KEY_POLICY": "strict",
        "FITCONNECT_SERVER_TRUST_ANCHORS": "/a.pem, /b.pem",
    }
    assert load_config(env=env).trust_anchors == (Path("/a.pem"), Path("/b.pem"))


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"FITCONNECT_SERVER_BASE_URL": "ftp://x"}, "base_url"),
        ({"FITCONNECT_SERVER_PORT": "seventy"}, "port"),
        ({"FITCONNECT_SERVER_BLOB_STORE": "postgres"}, "needs a postgresql"),
        ({"FITCONNECT_SERVER_KEY_POLICY": "strict"}, "trust_anchors"),
        ({"FITCONNECT_SERVER_DATABASE_URL": "mysql://x"}, "database_url"),
        ({"FITCONNECT_SERVER_RATE_LIMT__BURST": "1"}, "rate_limt: unknown setting"),
        ({"FITCONNECT_SERVER_DEADLINES__REJECT_UNFETCHED": "P30D"}, "delete_unfetched"),
        ({"FITCONNECT_SERVER_LIMITS__MAX_ATTACHMENTS": "[1"}, "not valid JSON"),
    ],
)
def test_errors_are_one_line(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(env=env)
    message = str(info.value)
    assert "\n" not in message
    assert fragment in message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml", env={})
    broken = tmp_path / "broken.toml"
    broken.write_text("port = = 1", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid"):
        load_config(broken, env={})


def test_config_is_immutable() -> None:
    config = ServerConfig()
    with pytest.raises(ValueError, match="frozen"):
        config.port = 1  # type: ignore[misc]
