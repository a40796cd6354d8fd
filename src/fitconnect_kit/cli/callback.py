"""`fitconnect callback …` — check and produce HMAC-SHA512 callback signatures.

* ``callback verify`` checks ``callback-authentication`` / ``callback-timestamp`` for a raw body;
* ``callback sign`` prints both headers for a body (to test a callback receiver).

Bodies are read byte for byte from the file or stdin — never re-serialized. The secret may come
from ``--secret`` or, better (not visible in the process list), from ``FITCONNECT_CALLBACK_SECRET``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from fitconnect_kit.cli._common import EXIT_USAGE, fail, read_input
from fitconnect_kit.protocol.callbacks import (
    HEADER_AUTHENTICATION,
    HEADER_TIMESTAMP,
    sign_callback,
    verify_callback,
)
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock, ManualClock

SECRET_ENV = "FITCONNECT_CALLBACK_SECRET"  # noqa: S105 (a variable name, not a secret)

group = typer.Typer(
    name="callback",
    help="Verify and create HMAC-SHA512 callback signatures (callback-authentication).",
    no_args_is_help=True,
)

SecretOpt = Annotated[
    str,
    typer.Option(
        "--secret",
        envvar=SECRET_ENV,
        help=f"Callback secret (or set {SECRET_ENV}, which keeps it out of the process list).",
        show_envvar=True,
    ),
]
BodyArg = Annotated[
    Path | None,
    typer.Argument(
        help="File with the raw request body; stdin when omitted or '-'.", show_default=False
    ),
]
NowOpt = Annotated[
    int | None,
    typer.Option("--now", help="Pretend the current time is this Unix timestamp.", min=0),
]


def _clock(now: int | None) -> Clock:
    if now is None:
        return SYSTEM_CLOCK
    try:
        return ManualClock(datetime.fromtimestamp(now, UTC))
    except (OverflowError, OSError, ValueError):
        fail(f"--now {now} is not a usable Unix timestamp", EXIT_USAGE)


@group.command("verify")
def verify_command(
    secret: SecretOpt,
    timestamp: Annotated[
        str, typer.Option("--timestamp", help=f"Value of the {HEADER_TIMESTAMP} header.")
    ],
    signature: Annotated[
        str, typer.Option("--signature", help=f"Value of the {HEADER_AUTHENTICATION} header.")
    ],
    body_file: BodyArg = None,
    now: NowOpt = None,
) -> None:
    """Verify a callback's HMAC and 5-minute window over the raw body; print "valid".

    Exit 0 when valid, 3 when refused (reason on stderr: stale, future-dated, mismatch,
    malformed-signature, ...), 4 when the body file does not exist.
    """
    body = read_input(body_file)
    verify_callback(
        body, secret=secret, timestamp=timestamp, signature=signature, clock=_clock(now)
    )
    typer.echo("valid")


@group.command("sign")
def sign_command(secret: SecretOpt, body_file: BodyArg = None, now: NowOpt = None) -> None:
    """Print the callback-authentication and callback-timestamp headers for a raw body."""
    body = read_input(body_file)
    headers = sign_callback(body, secret, clock=_clock(now))
    typer.echo(f"{HEADER_AUTHENTICATION}: {headers[HEADER_AUTHENTICATION]}")
    typer.echo(f"{HEADER_TIMESTAMP}: {headers[HEADER_TIMESTAMP]}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(group, name="callback")
