"""``fitconnect dev``: a complete local FIT-Connect (token service, Zustelldienst, demo
Fachverfahren) in one command, and ``fitconnect dev inbox``: what the demo Fachverfahren got.

The logic lives in :mod:`fitconnect_kit.devstack` and :mod:`fitconnect_kit.demo.fachverfahren`.
"""

from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Annotated, Any

import typer

from fitconnect_kit.cli._common import stdout

DEFAULT_DATA_DIR = Path(".fitconnect-dev")
DATA_DIR_HELP = (
    "Where the database, blobs, keys, seed.json, profile.json and received submissions live."
)
PROBLEM_BASE = "https://schema.fitko.de/fit-connect/events/problems/"

dev_app = typer.Typer(
    name="dev",
    help="A complete local FIT-Connect: token service + Zustelldienst + demo Fachverfahren.",
    invoke_without_command=True,
)


class BlobStoreChoice(enum.StrEnum):
    FILESYSTEM = "filesystem"
    POSTGRES = "postgres"


DataDirOption = Annotated[Path, typer.Option("--data-dir", help=DATA_DIR_HELP, file_okay=False)]


@dev_app.callback()
def dev_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="Listen port (0: any free port).", min=0, max=65535)
    ] = 8080,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    with_subscriber: Annotated[
        bool,
        typer.Option(
            "--with-subscriber/--no-subscriber",
            help="Run the demo Fachverfahren that receives, checks and accepts/rejects "
            "submissions.",
        ),
    ] = True,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Only the welcome text, warnings and errors.")
    ] = False,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="FITCONNECT_DEV_DATABASE_URL",
            help="Use this database instead of the SQLite file in the data directory, e.g. "
            "postgresql+asyncpg://postgres@127.0.0.1:5432/fitconnect_dev (an empty database "
            "or one made by `fitconnect dev` with this data directory; put a password in "
            "PGPASSWORD or ~/.pgpass, not on the command line).",
        ),
    ] = None,
    blob_store: Annotated[
        BlobStoreChoice,
        typer.Option(
            "--blob-store",
            help="Where attachments live: files in the data directory, or in the PostgreSQL "
            "database (needs --database-url postgresql+asyncpg://…).",
        ),
    ] = BlobStoreChoice.FILESYSTEM,
) -> None:
    """Run a complete local FIT-Connect: token service + Zustelldienst + demo Fachverfahren.

    The first start seeds a sender client, a subscriber client and a destination for the demo
    Leistung (with fresh test keys) and writes the `local` profile, so `fitconnect send --env
    local …` works at once. A restart reuses everything. Stop with Ctrl-C (exit status 0).
    """
    if ctx.invoked_subcommand is not None:
        return
    from fitconnect_kit.devstack import DevOptions, DevStack

    options = DevOptions(
        host=host,
        port=port,
        data_dir=data_dir,
        with_subscriber=with_subscriber,
        quiet=quiet,
        configure_logging=True,
        database_url=database_url or None,
        blob_store=blob_store.value,
    )
    DevStack(options).run()


@dev_app.command("inbox")
def inbox_command(
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")] = False,
) -> None:
    """Show what the demo Fachverfahren received and decided (files in the data directory)."""
    from fitconnect_kit.demo.fachverfahren import received_submissions
    from fitconnect_kit.devstack import DevPaths

    out_dir = DevPaths(data_dir.expanduser().absolute()).fachverfahren_dir
    items = received_submissions(out_dir)
    if as_json:
        stdout.print_json(json.dumps(items, ensure_ascii=False))
        return
    if not items:
        stdout.print(
            f"the demo Fachverfahren has received nothing yet ({_shown(out_dir)} is empty)",
            markup=False,
        )
        return
    stdout.print(
        f"demo Fachverfahren: {len(items)} submission(s) received in {_shown(out_dir)}",
        markup=False,
    )
    for item in items:
        stdout.print("", markup=False)
        stdout.print(
            f"{_outcome(item):<9} {item['submissionId']}  (case {item['caseId']})", markup=False
        )
        for problem in item["problems"]:
            stdout.print(f"          {_problem(problem)}", markup=False)
        if item["error"] and item["stage"] != "posted":
            stdout.print(f"          error: {item['error']}", markup=False)
        files = ", ".join(item["files"]) or "—"
        stdout.print(f"          {_shown(Path(item['directory']))}: {files}", markup=False)


def _outcome(item: dict[str, Any]) -> str:
    decision = item["decision"]
    if item["stage"] == "posted" and decision:
        return "accepted" if decision == "accept-submission" else "rejected"
    if item["stage"] == "failed":
        return "failed"
    if item["verdict"] == "configuration-error":
        return "waiting"
    return "deciding"


def _problem(problem: dict[str, Any]) -> str:
    kind = str(problem.get("type", ""))
    name = kind[len(PROBLEM_BASE) :] if kind.startswith(PROBLEM_BASE) else kind
    instance = f" [{problem['instance']}]" if problem.get("instance") else ""
    detail = f": {problem['detail']}" if problem.get("detail") else ""
    return f"{name}{instance}{detail}"


def _shown(path: Path) -> str:
    from fitconnect_kit.devstack import shown_path

    return shown_path(path)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(dev_app, name="dev")
