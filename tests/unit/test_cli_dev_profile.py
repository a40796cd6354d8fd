"""`fitconnect dev` registers the `local` profile: a note when it took over another checkout's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fitconnect_kit.devstack import DevOptions, DevSeed, DevStack, registered_data_dir


@pytest.fixture
def registered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "fitconnect-kit" / "profiles" / "local.json"


def _register(data_dir: Path, port: int = 8080) -> list[str]:
    """Write the profiles of a stack in ``data_dir`` as a start does; the notes it made."""
    warnings: list[str] = []
    stack = DevStack(DevOptions(port=port, data_dir=data_dir, quiet=True))
    profile_path, registered = stack._write_profiles(DevSeed.new(), warnings)
    assert profile_path == data_dir / "profile.json"
    assert registered is not None
    return warnings


def test_registration_follows_the_last_start_and_says_so(tmp_path: Path, registered: Path) -> None:
    first, second = tmp_path / "a" / ".fitconnect-dev", tmp_path / "b" / ".fitconnect-dev"
    assert _register(first) == []
    assert registered_data_dir(registered) == first
    assert json.loads(registered.read_text())["dataDir"] == str(first)
    # The same stack again (e.g. on another port): no note.
    assert _register(first, port=9090) == []
    # Another checkout's stack takes the registration over, with one note naming both.
    notes = _register(second)
    assert len(notes) == 1
    assert str(first) in notes[0]
    assert str(second) in notes[0]
    assert str(registered) in notes[0]
    assert "\n" not in notes[0]
    assert registered_data_dir(registered) == second
    # A registration whose data directory is gone is replaced silently.
    shutil.rmtree(second)
    assert _register(first) == []


def test_registration_of_an_older_version_is_recognised_by_its_key_paths(
    tmp_path: Path, registered: Path
) -> None:
    old = tmp_path / "old" / ".fitconnect-dev"
    (old / "keys").mkdir(parents=True)
    registered.parent.mkdir(parents=True)
    registered.write_text(
        json.dumps(
            {
                "environment": "local",
                "submissionApiUrl": "http://127.0.0.1:8080/v1",
                "keys": {"encryptionPrivate": str(old / "keys" / "encryption.private.jwk.json")},
            }
        )
    )
    assert registered_data_dir(registered) == old
    notes = _register(tmp_path / "new" / ".fitconnect-dev")
    assert len(notes) == 1
    assert str(old) in notes[0]
    # Unreadable or foreign registrations tell nothing.
    registered.write_text("{")
    assert registered_data_dir(registered) is None
    registered.write_text(json.dumps({"environment": "local"}))
    assert registered_data_dir(registered) is None
