"""End-to-end tests: the ``fitconnect dev`` process, driven only through the CLI and the SDK.

:class:`DevProcess` starts ``fitconnect dev`` as a user does (the installed ``fitconnect``
script of the venv) in a temporary working directory with the default data directory
``.fitconnect-dev/`` and a temporary ``XDG_CONFIG_HOME``, on a free port (``--port 0`` on the
first start, the welcome text tells the URL; restarts reuse that port). CLI commands run as
subprocesses in the same working directory and environment, so the commands printed in the
welcome text can be run literally.

One dev process serves all tests (``dev`` fixture, session scope: the first start generates
keys); restart tests stop and start it in place and leave it running.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
WELCOME_END = "Stop with Ctrl-C."
BIN_DIR = Path(sys.executable).parent
FITCONNECT = BIN_DIR / "fitconnect"


def cli_base() -> list[str]:
    """How tests call the CLI: the installed ``fitconnect`` script of this interpreter."""
    if FITCONNECT.exists():
        return [str(FITCONNECT)]
    return [sys.executable, "-m", "fitconnect_kit.cli.main"]


def clean_env(xdg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FITCONNECT_")}
    env["XDG_CONFIG_HOME"] = str(xdg)
    env["COLUMNS"] = "200"  # rich tables must not wrap ids
    env["NO_COLOR"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass
class CliResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


class DevProcess:
    """``fitconnect dev`` as a child process (see the module docstring)."""

    def __init__(self, root: Path, *, args: Sequence[str] = ()) -> None:
        self.root = root
        self.xdg = root / "xdg"
        self.env = clean_env(self.xdg)
        self.args = list(args)
        self.port = 0
        self.proc: subprocess.Popen[str] | None = None
        self.lines: list[str] = []
        self.welcome = ""
        self._lock = threading.Condition()
        self._reader: threading.Thread | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / ".fitconnect-dev"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> str:
        """Start and wait for the welcome text; returns it."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.lines = []
        args = [*cli_base(), "dev", "--port", str(self.port), *self.args, *extra]
        self.proc = subprocess.Popen(
            args,
            cwd=self.root,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + START_TIMEOUT
        with self._lock:
            while not any(line.startswith(WELCOME_END) for line in self.lines):
                if self.proc.poll() is not None:
                    raise AssertionError("fitconnect dev exited:\n" + self.output())
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError("no welcome text in time:\n" + self.output())
                self._lock.wait(min(remaining, 0.5))
            text = "".join(self.lines)
        start = text.index("fitconnect dev — ")
        self.welcome = text[start : text.index(WELCOME_END, start)]
        match = re.search(r"Submission API\s+http://127\.0\.0\.1:(\d+)/v1", self.welcome)
        assert match, self.welcome
        self.port = int(match.group(1))
        return self.welcome

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._lock:
                self.lines.append(line)
                self._lock.notify_all()

    def output(self) -> str:
        with self._lock:
            return "".join(self.lines)

    def wait_for_output(self, pattern: str, timeout: float = 30.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{pattern!r} not in the output:\n{''.join(self.lines)}")
                self._lock.wait(min(remaining, 0.5))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and return the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("fitconnect dev did not stop:\n" + self.output()) from None
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def commands(self) -> list[str]:
        """The copy-paste commands of the welcome text, in order."""
        return [
            line.strip()
            for line in self.welcome.splitlines()
            if line.startswith("     ") and line.strip().startswith(tuple(cli_base()[:1]))
        ]

    def run_line(self, line: str, timeout: float = 120.0) -> CliResult:
        """Run a command line exactly as a user would paste it (no shell features)."""
        args = shlex.split(line)
        return self._run(args, timeout)

    def cli(self, *args: str, timeout: float = 120.0, cwd: Path | None = None) -> CliResult:
        return self._run([*cli_base(), *args], timeout, cwd)

    def _run(self, args: list[str], timeout: float, cwd: Path | None = None) -> CliResult:
        done = subprocess.run(
            args,
            cwd=cwd or self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return CliResult(args, done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevProcess]:
    process = DevProcess(tmp_path_factory.mktemp("dev"))
    process.start()
    try:
        yield process
    finally:
        if process.proc is not None and process.proc.poll() is None:
            process.stop()
