"""`fitconnect inbox`: the submissions waiting for pickup at a destination.

Also home of :func:`open_subscriber`, which the subscriber commands (``inbox``, ``receive``,
``events``) share: configuration is resolved exactly like the SDK's
``Subscriber.from_config`` (arguments → ``FITCONNECT_*`` variables → profile, role
``subscriber``; keys and the default destination from the profile).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from fitconnect_kit.cli._common import JsonOption, stdout
from fitconnect_kit.cli.profile import (
    EnvOption,
    ProfileOption,
    print_json,
    with_test_transport,
)
from fitconnect_kit.client.subscriber import Subscriber


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("inbox")(inbox)


def open_subscriber(
    env: str | None, profile: Path | None, *, load_keys: bool = True, **options: Any
) -> Subscriber:
    """A sync subscriber for the CLI, configured like ``Subscriber.from_config``."""
    return Subscriber.from_config(
        env, profile=profile, load_keys=load_keys, **with_test_transport(options)
    )


def inbox(
    destination: Annotated[
        str | None,
        typer.Option("--destination", "-d", help="destinationId (default: from the profile)."),
    ] = None,
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
) -> None:
    """List the submissions waiting for pickup at a destination (all pages)."""
    with open_subscriber(env, profile, load_keys=False) as subscriber:
        dest_id = subscriber.async_subscriber.resolve_destination_id(destination)
        pending = subscriber.pending(dest_id)
    if as_json:
        print_json({"destinationId": dest_id, "submissions": [item.to_json() for item in pending]})
        return
    if not pending:
        stdout.print(f"no submissions waiting at destination {dest_id}")
        return
    table = Table(
        title=f"{len(pending)} submission(s) waiting at destination {dest_id}",
        title_justify="left",
        box=box.SIMPLE,
    )
    table.add_column("submission", no_wrap=True)
    table.add_column("case", no_wrap=True)
    for item in pending:
        table.add_row(item.submission_id, item.case_id)
    stdout.print(table)
