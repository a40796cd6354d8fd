"""`fitconnect profile show` — and the option/profile plumbing of the sender commands.

The sender commands (``send``, ``status``, ``destination``) share ``--env`` / ``--profile`` and
build their client here (:func:`open_sender`), so every command resolves configuration the same
way as the SDK: arguments → ``FITCONNECT_*`` variables → profile file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.table import Table

from fitconnect_kit.cli._common import EXIT_NOT_FOUND, fail, stdout
from fitconnect_kit.client.config import (
    ENV_ENVIRONMENT,
    ENV_PROFILE,
    Profile,
    find_profile,
    load_profile,
    profile_candidates,
    resolve_settings,
)
from fitconnect_kit.client.sender import Sender

profile_app = typer.Typer(
    name="profile",
    help="Profiles: the environment, credentials and defaults the SDK and CLI use.",
    no_args_is_help=True,
)

# Test hook: a factory for the HTTP transport of CLI clients (None = real network).
_transport_factory: Callable[[], httpx.AsyncBaseTransport] | None = None

EnvOption = Annotated[
    str | None,
    typer.Option(
        "--env",
        "-e",
        help="Environment: local, test, stage, prod (default: $FITCONNECT_ENV, the profile's, "
        "or local).",
        show_default=False,
    ),
]
ProfileOption = Annotated[
    Path | None,
    typer.Option(
        "--profile",
        "-p",
        help="Profile file (default: $FITCONNECT_PROFILE, ./.fitconnect-dev/profile.json for "
        "local, ~/.config/fitconnect-kit/profiles/<env>.json).",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(profile_app, name="profile")


def open_sender(env: str | None, profile: Path | None, **options: Any) -> Sender:
    """A sync sender for the CLI, configured like the SDK's ``Sender.from_config``."""
    settings = resolve_settings(env, profile=str(profile) if profile else None, role="sender")
    if _transport_factory is not None:
        options.setdefault("transport", _transport_factory())
    return Sender(settings.environment, settings.credentials, profile=settings.profile, **options)


def print_json(data: Any) -> None:
    stdout.print_json(json.dumps(data, ensure_ascii=False))


@profile_app.command("show")
def show(
    env: EnvOption = None,
    profile: ProfileOption = None,
    as_json: JsonOption = False,
    show_secrets: Annotated[
        bool, typer.Option("--show-secrets", help="Show client secrets instead of masking them.")
    ] = False,
) -> None:
    """Show the active profile (secrets masked unless --show-secrets)."""
    env_name = env or os.environ.get(ENV_ENVIRONMENT) or None
    path = find_profile(profile, env_name)
    if path is None:
        looked = ", ".join(str(p) for p in profile_candidates(env_name))
        fail(
            f"no profile found for environment {env_name or 'local'!r} (looked at ${ENV_PROFILE} "
            f"and {looked}); run `fitconnect dev` or pass --profile",
            EXIT_NOT_FOUND,
        )
    loaded = load_profile(path)
    assert loaded is not None
    environment = loaded.environment()
    data = loaded.to_dict(show_secrets=show_secrets)
    if as_json:
        print_json({"path": str(loaded.path), "profile": data})
        return
    _print_profile(loaded, data, environment_urls=_urls(environment))


def _urls(environment: Any) -> dict[str, str | None]:
    return {
        "token URL": environment.token_url,
        "Submission API": environment.submission_api_url,
        "ZD JWKS": environment.jwks_url,
        "Routing API": environment.routing_api_url,
        "Self-Service-Portal": environment.portal_url,
        "trust policy": "test (self-signed x5c allowed)"
        if environment.trust == "test"
        else f"strict ({len(environment.trust_anchors)} trust anchor(s))",
    }


def _print_profile(
    loaded: Profile, data: dict[str, Any], *, environment_urls: dict[str, str | None]
) -> None:
    table = Table(title=f"profile {loaded.path}", show_header=False, title_justify="left")
    table.add_column("member", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in data.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k}={v}" for k, v in value.items())
        elif isinstance(value, list):
            text = ", ".join(str(v) for v in value)
        else:
            text = str(value)
        table.add_row(key, text)
    for key, url in environment_urls.items():
        table.add_row(f"→ {key}", url or "—")
    stdout.print(table)
