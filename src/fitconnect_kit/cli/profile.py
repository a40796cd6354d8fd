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

from fitconnect_kit.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    JsonOption,
    fail,
    stderr,
    stdout,
)
from fitconnect_kit.client.config import (
    ENV_ENVIRONMENT,
    ENV_PROFILE,
    Profile,
    config_home,
    find_profile,
    load_profile,
    profile_candidates,
)
from fitconnect_kit.client.sender import Sender, SentSubmission

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


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(profile_app, name="profile")


def with_test_transport(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` of a CLI client, with the test transport if a test installed one."""
    if _transport_factory is not None:
        options.setdefault("transport", _transport_factory())
    return options


def open_sender(env: str | None, profile: Path | None, **options: Any) -> Sender:
    """A sync sender for the CLI, configured like the SDK's ``Sender.from_config``."""
    return Sender.from_config(env, profile=profile, **with_test_transport(options))


# --- the last submission sent (for `fitconnect status --last`) ----------------------------------


def last_sent_path(sender: Sender) -> Path:
    """Where ``send`` notes the last submission: next to the profile, else in the config home."""
    prof = sender.profile
    if prof is not None and prof.path is not None:
        return prof.path.with_name(prof.path.stem + ".last-sent.json")
    return config_home() / f"last-sent-{sender.environment.name}.json"


def remember_last_sent(sender: Sender, sent: SentSubmission) -> None:
    """Note the ids of ``sent`` (no content, no secrets); failing to do so is only a warning."""
    path = last_sent_path(sender)
    data = {
        "submissionApiUrl": sender.environment.submission_api_url,
        "caseId": sent.case_id,
        "submissionId": sent.submission_id,
        "destinationId": sent.destination_id,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except OSError as exc:
        stderr.print(f"warning: cannot note the last submission in {path}: {exc.strerror}")


def load_last_sent(sender: Sender) -> dict[str, str]:
    """The ids noted by the last ``send`` with this profile/environment."""
    path = last_sent_path(sender)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"no submission was sent with this profile yet ({path} is missing)", EXIT_NOT_FOUND)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {path}: {exc}", EXIT_USAGE)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), str) for k in ("caseId", "submissionId", "submissionApiUrl")
    ):
        fail(f"{path} is damaged; pass --case instead", EXIT_USAGE)
    if data["submissionApiUrl"] != sender.environment.submission_api_url:
        fail(
            f"the last submission noted in {path} went to {data['submissionApiUrl']}, not to "
            f"{sender.environment.submission_api_url}; pass --case instead",
            EXIT_USAGE,
        )
    return {k: v for k, v in data.items() if isinstance(v, str)}


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
