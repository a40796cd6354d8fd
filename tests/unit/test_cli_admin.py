"""`fitconnect admin client create --scope`: short scope forms expand to the full URIs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.support.cli import run_cli

from fitconnect_kit.cli import admin as cli_admin
from fitconnect_kit.server.auth import MANAGE_SCOPE, SUBSCRIBE_SCOPE


def test_short_forms_are_the_servers_scope_uris() -> None:
    assert cli_admin.SCOPE_SHORT_FORMS == {
        "subscribe-destinations": SUBSCRIBE_SCOPE,
        "manage-destinations": MANAGE_SCOPE,
    }
    assert cli_admin.expand_scopes(["manage-destinations", SUBSCRIBE_SCOPE, "send:region:DE"]) == [
        MANAGE_SCOPE,
        SUBSCRIBE_SCOPE,
        "send:region:DE",
    ]


def test_help_names_the_full_uris(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    code, out, _ = run_cli(capsys, "admin", "client", "create", "--help")
    assert code == 0
    assert SUBSCRIBE_SCOPE in out
    assert MANAGE_SCOPE in out
    assert "manage-destinations" in out


def test_create_subscriber_with_short_scopes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "zd.json"
    config.write_text(
        json.dumps({"base_url": "http://127.0.0.1:8080", "data_dir": str(tmp_path / "data")})
    )
    monkeypatch.delenv("FITCONNECT_CONFIG", raising=False)
    admin = ("admin", "--config", str(config), "client", "create")
    code, out, err = run_cli(
        capsys,
        *admin,
        "--kind",
        "subscriber",
        "--scope",
        "subscribe-destinations",
        "--scope",
        "manage-destinations",
        "--json",
    )
    assert code == 0, err
    assert json.loads(out)["scopes"] == [SUBSCRIBE_SCOPE, MANAGE_SCOPE]
    code, out, err = run_cli(
        capsys, *admin, "--kind", "subscriber", "--scope", MANAGE_SCOPE, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["scopes"] == [MANAGE_SCOPE]
    # Anything else is still checked by the server side: a usage error in one line.
    code, _, err = run_cli(capsys, *admin, "--kind", "subscriber", "--scope", "subscribe")
    assert code == 2
    assert len(err.strip().splitlines()) == 1
