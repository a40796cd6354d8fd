"""The dev stack started programmatically (as benchmarks and other tests do): start, use,
stop, and what a restart repairs or adapts (new port, lost profile, no Fachverfahren)."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from fitconnect_kit.client import Sender, SubmissionBuilder
from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, demo_json_data
from fitconnect_kit.devstack import (
    DEMO_CALLBACK_PATH,
    DevInfo,
    DevOptions,
    DevStack,
    DevStackError,
    example_commands,
    welcome_text,
)

pytestmark = pytest.mark.slow


class Running:
    """A :class:`DevStack` running in a background thread."""

    def __init__(self, options: DevOptions) -> None:
        self.out = io.StringIO()
        self.stack = DevStack(options, out=self.out)
        self.result: list[int] = []
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result.append(self.stack.run())
        except BaseException as exc:
            self.error.append(exc)

    def __enter__(self) -> DevInfo:
        self.thread.start()
        while not self.stack.started.wait(0.2):
            if self.error:
                raise self.error[0]
            assert self.thread.is_alive(), "the dev stack ended before it started"
        assert self.stack.info is not None
        return self.stack.info

    def __exit__(self, *exc: object) -> None:
        self.stack.request_stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), "the dev stack did not stop"
        if self.error:
            raise self.error[0]
        assert self.result == [0]


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    for name in ("FITCONNECT_PROFILE", "FITCONNECT_ENV", "FITCONNECT_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def data_dir(tmp_path: Path, xdg: Path) -> Path:
    return tmp_path / "dev-data"


def test_programmatic_start_send_stop_restart_and_repair(
    data_dir: Path, xdg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    options = DevOptions(port=0, data_dir=data_dir, quiet=True)
    with Running(options) as info:
        assert info.callback_url == info.base_url + DEMO_CALLBACK_PATH
        with Sender.from_config(profile=info.profile_path) as sender:
            profile = sender.profile
            assert profile is not None
            assert profile.destination_id == info.seed.destination_id
            sent = sender.send(
                SubmissionBuilder(profile.destination_id)
                .service(profile.service_identifier or "", profile.service_name)
                .json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
                .build()
            )
            report = sender.wait(sent, timeout=60, poll_interval=0.5, max_interval=2)
        assert report.accepted
        first = info
    # Restart on another port with the profile lost: same clients, destination and keys; the
    # profile is written again with the new URLs, and the demo callback follows the port.
    first.profile_path.unlink()
    with Running(options) as info:
        assert info.seed.destination_id == first.seed.destination_id
        assert info.seed.sender == first.seed.sender
        assert info.base_url != first.base_url
        assert info.callback_url == info.base_url + DEMO_CALLBACK_PATH
        profile_doc = json.loads(info.profile_path.read_text())
        assert profile_doc["submissionApiUrl"] == info.base_url + "/v1"
        with Sender.from_config(profile=info.profile_path) as sender:
            assert sender.status(sent).accepted
    # Without the demo Fachverfahren the dev stack takes its callback away again.
    with Running(DevOptions(port=0, data_dir=data_dir, quiet=True, with_subscriber=False)) as info:
        assert info.callback_url is None
        seed = json.loads((data_dir / "seed.json").read_text())
        assert seed["demoCallback"]["url"] is None
        text = welcome_text(info, fachverfahren_running=False, cwd=tmp_path)
        assert "Fachverfahren    off" in text
        # The registered profile makes `--env local` work from anywhere …
        assert example_commands(info, cwd=tmp_path)[2][1].endswith(" inbox --env local")
    # … without it, the commands name the profile file and the data directory.
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "empty-xdg"))
    commands = [line for _, line in example_commands(replace(info, with_subscriber=True), cwd=xdg)]
    assert f"--profile {data_dir}/profile.json" in commands[0]
    assert commands[2].endswith(f"dev inbox --data-dir {data_dir}")

    # A database without seed.json (not made by `fitconnect dev`) is never taken over.
    (data_dir / "seed.json").unlink()
    with pytest.raises(DevStackError, match=r"no seed\.json"):
        DevStack(DevOptions(port=0, data_dir=data_dir, quiet=True)).run()
