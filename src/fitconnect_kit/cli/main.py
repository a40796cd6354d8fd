"""Entry point of the ``fitconnect`` command.

Each command group lives in its own module with a ``register(app)`` function, so groups can be
developed independently; this module only wires them together and maps errors to exit codes.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

import click
import typer
from typer._click import exceptions as _typer_click  # typer >= 0.20 vendors its own click

from fitconnect_kit import __version__
from fitconnect_kit.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_ERROR,
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    CliError,
    one_line,
    stderr,
)
from fitconnect_kit.protocol.errors import FitConnectError, ProtocolError

app = typer.Typer(
    name="fitconnect",
    help="FIT-Connect toolkit: local Zustelldienst, sender/subscriber tools and debugging aids.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Command modules, in the order they appear in --help.
COMMAND_MODULES = (
    "dev",
    "serve",
    "admin",
    "send",
    "status",
    "destination",
    "inbox",
    "receive",
    "events",
    "profile",
    "keys",
    "jwe",
    "set_",
    "callback",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fitconnect-kit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """FIT-Connect toolkit."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"fitconnect_kit.cli.{_name}").register(app)


def exit_code_for(exc: BaseException) -> int:
    """Map an exception to the documented exit code."""
    if isinstance(exc, CliError):
        return exc.exit_code
    code = getattr(exc, "cli_exit_code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, FileNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, ProtocolError):
        return EXIT_CHECK_FAILED
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> None:
    """Run the CLI; errors become one line on stderr and a documented exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="fitconnect", standalone_mode=False)
    except (click.exceptions.UsageError, _typer_click.UsageError) as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except (click.exceptions.Abort, typer.Abort):
        stderr.print("aborted")
        sys.exit(130)
    except (click.ClickException, _typer_click.ClickException) as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (CliError, FitConnectError, OSError) as exc:
        stderr.print(f"error: {one_line(str(exc))}", markup=False)
        sys.exit(exit_code_for(exc))
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
