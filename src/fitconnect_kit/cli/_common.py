"""Shared CLI plumbing: exit codes, one-line error messages, input/output helpers.

Exit codes of every ``fitconnect`` command:

* 0 — success
* 1 — any other error
* 2 — usage error (bad options or arguments)
* 3 — rejected / a check failed (bad signature, invalid key, rejected submission, ...)
* 4 — not found (file, destination, submission, key)
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, NoReturn

import typer
from rich import box
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from fitconnect_kit.client.eventlog import VerifiedEvent
    from fitconnect_kit.protocol.problems import Problem

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CHECK_FAILED = 3
EXIT_NOT_FOUND = 4

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


class CliError(Exception):
    """Raised by commands to stop with a one-line message and a specific exit code."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = EXIT_ERROR) -> NoReturn:
    raise CliError(message, exit_code)


def one_line(message: str) -> str:
    """Collapse a message to a single line (error output is always one line)."""
    return " ".join(str(message).split())


def open_input(path: Path | None) -> BinaryIO:
    """A binary stream for ``path``, or stdin when ``path`` is ``None`` or ``-``."""
    if path is None or str(path) == "-":
        return sys.stdin.buffer
    try:
        return path.open("rb")
    except FileNotFoundError:
        fail(f"file not found: {path}", EXIT_NOT_FOUND)
    except IsADirectoryError:
        fail(f"expected a file but got a directory: {path}", EXIT_USAGE)


def read_input(path: Path | None) -> bytes:
    stream = open_input(path)
    try:
        return stream.read()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def read_text_file(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        fail(f"{what} not found: {path}", EXIT_NOT_FOUND)
    except UnicodeDecodeError:
        fail(f"{what} is not UTF-8 text: {path}", EXIT_CHECK_FAILED)


def print_event_table(
    case_id: str, events: Iterable[VerifiedEvent], details: Callable[[VerifiedEvent], str]
) -> None:
    """The verified event log of a case as a table (``status`` and ``events``)."""
    table = Table(title=f"event log of case {case_id}", title_justify="left", box=box.SIMPLE)
    table.add_column("time (UTC)", no_wrap=True)
    table.add_column("event", no_wrap=True)
    table.add_column("issuer", no_wrap=True)
    table.add_column("details", overflow="fold")
    for event in events:
        issuer = "Zustelldienst" if event.signer == "zustelldienst" else "Zustellpunkt"
        table.add_row(
            event.issued_at.strftime("%Y-%m-%d %H:%M:%S"), event.name, issuer, details(event)
        )
    stdout.print(table)


def print_problem(problem: Problem) -> None:
    """One line for a problem of a rejection (its text is the receiver's, printed verbatim)."""
    where = f" [{problem.instance}]" if problem.instance else ""
    stdout.print(f"  - {problem.title}{where}: {problem.detail or ''}", markup=False)
