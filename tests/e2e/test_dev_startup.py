"""`fitconnect dev`: startup, welcome text, seeded data, profile, idempotent restart."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import sys
from pathlib import Path

import httpx
import pytest

from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, DEMO_SERVICE_IDENTIFIER
from fitconnect_kit.devstack import cli_prefix
from tests.e2e.conftest import DevProcess, cli_base

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
#: How ``make run`` starts the stack: ``$(VENV)/bin/fitconnect dev`` in the repository root.
MAKE_RUN_ARGV0 = ".venv/bin/fitconnect"


def _secrets(dev: DevProcess) -> list[str]:
    seed = json.loads((dev.data_dir / "seed.json").read_text())
    return [
        seed["sender"]["clientSecret"],
        seed["subscriber"]["clientSecret"],
        seed["demoCallback"]["secret"],
    ]


def test_welcome_names_urls_profile_and_three_commands(dev: DevProcess) -> None:
    welcome = dev.welcome
    for url in (
        f"{dev.base_url}/v1",
        f"{dev.base_url}/token",
        f"{dev.base_url}/docs",
        f"{dev.base_url}/.well-known/jwks.json",
    ):
        assert url in welcome
    assert ".fitconnect-dev/profile.json" in welcome
    registered = dev.xdg / "fitconnect-kit" / "profiles" / "local.json"
    assert str(registered) in welcome
    commands = dev.commands()
    assert len(commands) == 3, welcome
    assert " send --env local --data .fitconnect-dev/antrag.json" in commands[0]
    assert " status --env local --last" in commands[1]
    assert commands[2].endswith(" dev inbox")
    # Secrets are never printed, neither in the welcome nor in the log.
    output = dev.output()
    for secret in _secrets(dev):
        assert secret not in output


def readme_quick_start_commands() -> list[str]:
    """The command lines of the ``sh`` block after ``make run`` under "## Quick start", without
    trailing ``# …`` comments and whitespace."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## Quick start\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.DOTALL | re.MULTILINE)
    assert [block.strip() for block in blocks[:1]] == ["make run"], blocks
    assert len(blocks) >= 2, "no command block after `make run` in the quick start"
    lines = [re.sub(r"(?:^|\s)#.*$", "", line).strip() for line in blocks[1].splitlines()]
    return [line for line in lines if line]


def test_readme_quick_start_matches_the_welcome_commands(
    dev: DevProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README's three quick-start commands are exactly what `fitconnect dev` prints, with the
    prefix it prints when started as ``make run`` does (``.venv/bin/fitconnect`` in the
    repository root); the dev process of these tests runs the venv's script by absolute path."""
    readme = readme_quick_start_commands()
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.setattr(sys, "argv", [MAKE_RUN_ARGV0, "dev"])
    make_run_prefix = cli_prefix(REPO_ROOT)
    assert make_run_prefix == ".venv/bin/fitconnect"
    started_as = shlex.join(cli_base())
    welcome = dev.commands()
    assert len(welcome) == 3, dev.welcome
    for command in welcome:
        assert command.startswith(started_as + " "), (command, started_as)
    normalised = [make_run_prefix + command[len(started_as) :] for command in welcome]
    assert readme == normalised


def test_seeded_files_and_profile(dev: DevProcess) -> None:
    data = dev.data_dir
    for name in ("seed.json", "profile.json"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600
    for name in ("encryption.private.jwk.json", "signing.private.jwk.json"):
        assert stat.S_IMODE(os.stat(data / "keys" / name).st_mode) == 0o600
    for name in ("antrag.json", "antrag.xml", "nachweis.txt", "antrag-ungueltig.json"):
        assert (data / name).is_file()
    profile = json.loads((data / "profile.json").read_text())
    assert profile["environment"] == "local"
    assert profile["submissionApiUrl"] == f"{dev.base_url}/v1"
    assert profile["tokenUrl"] == f"{dev.base_url}/token"
    assert profile["serviceIdentifier"] == DEMO_SERVICE_IDENTIFIER
    assert profile["dataSchemaUri"] == DEMO_JSON_SCHEMA_URI
    assert profile["keys"]["encryptionPrivate"] == "keys/encryption.private.jwk.json"
    registered = json.loads((dev.xdg / "fitconnect-kit/profiles/local.json").read_text())
    assert registered["sender"] == profile["sender"]
    assert registered["keys"]["encryptionPrivate"] == str(
        data / "keys" / "encryption.private.jwk.json"
    )


def test_profile_show_masks_secrets(dev: DevProcess) -> None:
    shown = dev.cli("profile", "show", "--env", "local", "--json")
    assert shown.returncode == 0, shown.output
    secrets = _secrets(dev)
    for secret in secrets:
        assert secret not in shown.output
    document = json.loads(shown.stdout)
    assert document["profile"]["sender"]["clientSecret"] == "********"
    assert document["path"] == str(dev.data_dir / "profile.json")
    revealed = dev.cli("profile", "show", "--env", "local", "--json", "--show-secrets")
    assert json.loads(revealed.stdout)["profile"]["sender"]["clientSecret"] == secrets[0]
    # From anywhere else, --env local finds the registered copy.
    elsewhere = dev.root / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    other = dev.cli("profile", "show", "--env", "local", "--json", cwd=elsewhere)
    assert other.returncode == 0, other.output
    assert json.loads(other.stdout)["path"] == str(dev.xdg / "fitconnect-kit/profiles/local.json")


def test_token_service_and_destination_work(dev: DevProcess) -> None:
    profile = json.loads((dev.data_dir / "profile.json").read_text())
    for role in ("sender", "subscriber"):
        response = httpx.post(
            profile["tokenUrl"],
            data={
                "grant_type": "client_credentials",
                "client_id": profile[role]["clientId"],
                "client_secret": profile[role]["clientSecret"],
            },
        )
        assert response.status_code == 200, response.text
    assert httpx.get(f"{dev.base_url}/docs").status_code == 200
    assert httpx.get(f"{dev.base_url}/.well-known/jwks.json").json()["keys"]


def test_second_instance_on_the_same_data_dir_is_refused(dev: DevProcess) -> None:
    result = dev.cli("dev", "--port", "0", timeout=60)
    assert result.returncode != 0
    assert "another `fitconnect dev` is using" in result.output


def test_restart_is_idempotent(dev: DevProcess) -> None:
    """SIGINT stops with status 0; the next start reuses everything (and keeps running)."""
    seed_before = (dev.data_dir / "seed.json").read_text()
    profile_before = (dev.data_dir / "profile.json").read_text()
    assert dev.stop(signal.SIGINT) == 0
    assert "fitconnect dev stopped" in dev.output()
    dev.start()
    assert (dev.data_dir / "seed.json").read_text() == seed_before
    assert (dev.data_dir / "profile.json").read_text() == profile_before
    assert "created the" not in dev.output()  # nothing seeded twice
