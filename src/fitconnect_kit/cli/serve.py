"""``fitconnect serve``: run the Zustelldienst (Submission API v1 + token endpoint)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from fitconnect_kit.cli._common import EXIT_USAGE, fail
from fitconnect_kit.server.config import CONFIG_PATH_ENV, ConfigError, load_config

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help=f"Server configuration (TOML or JSON). Default: ${CONFIG_PATH_ENV}.",
        dir_okay=False,
    ),
]


def config_path(config: Path | None) -> Path | None:
    """The server configuration file: ``--config``, else ``$FITCONNECT_CONFIG``, else none."""
    from_env = os.environ.get(CONFIG_PATH_ENV)
    return config or (Path(from_env) if from_env else None)


def serve_command(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Listen address (overrides the file).")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port (overrides the file).")] = None,
) -> None:
    """Run the Zustelldienst until SIGINT/SIGTERM (graceful shutdown, exit status 0)."""
    from fitconnect_kit.server.runner import serve  # late: keeps `fitconnect --help` fast

    try:
        server_config = load_config(config_path(config), overrides={"host": host, "port": port})
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)
    serve(server_config)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("serve")(serve_command)
