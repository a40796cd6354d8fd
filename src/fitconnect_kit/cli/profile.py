"""`fitconnect profile show` — and the option/profile plumbing of the sender commands.

The sender commands (``send``, ``status``, ``destination``) share ``--env`` / ``--profile`` and
build their client here (:func:`open_sender`), so every command resolves configuration the same
way as the SDK: arguments → ``FITCONNECT_*`` variables → profile file.
"""

from __future__ import annotations

import ipaddress
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
    ENV_CLIENT_ID,
    ENV_CLIENT_SECRET,
    ENV_ENVIRONMENT,
    ENV_PROFILE,
    ENV_TRUST_ANCHORS,
    Credentials,
    config_home,
    find_profile,
    load_profile,
    profile_candidates,
)
from fitconnect_kit.client.environments import (
    PRESET_NAMES,
    Environment,
    canonical_name,
    load_certificates,
)
from fitconnect_kit.client.sender import Sender, SentSubmission

profile_app = typer.Typer(
    name="profile",
    help="Profiles: the environment, credentials and defaults the SDK and CLI use.",
    no_args_is_help=True,
)

MASK = "********"

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
        "environment": canonical_name(sender.environment.name),
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


def is_loopback_url(url: str) -> bool:
    """Whether ``url`` points at this machine (127.0.0.0/8, ::1 or ``localhost``)."""
    try:
        host = httpx.URL(url).host
    except (httpx.InvalidURL, TypeError):
        return False
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _same_local_stack(noted: dict[str, Any], sender: Sender) -> bool:
    """Whether a submission noted at another URL went to the stack ``sender`` talks to now.

    Only for the ``local`` environment: ``fitconnect dev`` restarted on another port rewrites
    the profile's URLs, but it is still the same Zustelldienst (same data directory, same demo
    destination). Both URLs must be loopback ones — a note of ``test`` or another installation
    never matches — and, when the profile names a destination, the noted one must be it (the
    registered profile of another checkout has another destination).
    """
    environment = sender.environment
    if canonical_name(environment.name) != "local":
        return False
    noted_env = noted.get("environment")
    if noted_env is not None and noted_env != "local":
        return False
    if not (
        is_loopback_url(str(noted["submissionApiUrl"]))
        and is_loopback_url(environment.submission_api_url)
    ):
        return False
    prof = sender.profile
    expected = prof.destination_id if prof is not None else None
    return expected is None or noted.get("destinationId") == expected


def load_last_sent(sender: Sender) -> dict[str, str]:
    """The ids noted by the last ``send`` with this profile/environment.

    A note made at another Submission API URL is used only when it is the same local stack
    restarted on another port (see :func:`_same_local_stack`); never across environments.
    """
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
    current = sender.environment.submission_api_url
    if data["submissionApiUrl"] != current and not _same_local_stack(data, sender):
        fail(
            f"the last submission noted in {path} went to {data['submissionApiUrl']}, not to "
            f"{current}; pass --case instead",
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
    """Show the active profile (secrets masked unless --show-secrets).

    Without a profile file for a non-local environment (test, stage, prod), shows the
    environment's preset URLs and the credentials from $FITCONNECT_CLIENT_ID/_SECRET.
    """
    env_name = env or os.environ.get(ENV_ENVIRONMENT) or None
    path = find_profile(profile, env_name)
    from_env = _credentials_from_env(show_secrets)
    if path is None:
        _show_without_profile(env_name, from_env, as_json=as_json)
        return
    loaded = load_profile(path)
    assert loaded is not None
    environment = _with_env_anchors(loaded.environment())
    data = loaded.to_dict(show_secrets=show_secrets)
    if as_json:
        document: dict[str, Any] = {"path": str(loaded.path), "profile": data}
        if from_env is not None:
            document["credentialsFromEnvironment"] = from_env
        print_json(document)
        return
    _print_profile(
        f"profile {loaded.path}",
        data,
        environment_urls=_urls(environment) | _credential_rows(from_env, profile=True),
    )


def _with_env_anchors(environment: Environment) -> Environment:
    """``environment`` with the trust anchors of ``$FITCONNECT_TRUST_ANCHORS`` (as the SDK)."""
    for item in (os.environ.get(ENV_TRUST_ANCHORS) or "").split(os.pathsep):
        if item:
            environment = environment.with_trust_anchors(*load_certificates(Path(item)))
    return environment


def _credentials_from_env(show_secrets: bool) -> dict[str, str] | None:
    """``$FITCONNECT_CLIENT_ID``/``_SECRET`` (secret masked unless ``show_secrets``), or None."""
    creds = Credentials.from_env()
    if creds is None:
        return None
    return {
        "clientId": creds.client_id,
        "clientSecret": creds.client_secret if show_secrets else MASK,
        "source": f"${ENV_CLIENT_ID}/${ENV_CLIENT_SECRET}",
    }


def _credential_rows(from_env: dict[str, str] | None, *, profile: bool) -> dict[str, str | None]:
    if from_env is None:
        return {}
    note = " (they win over the profile's)" if profile else ""
    return {
        "credentials": f"from {from_env['source']}{note}: clientId={from_env['clientId']}, "
        f"clientSecret={from_env['clientSecret']}"
    }


def _show_without_profile(
    env_name: str | None, from_env: dict[str, str] | None, *, as_json: bool
) -> None:
    """``profile show`` without a profile file: a preset environment configured by variables."""
    key = canonical_name(env_name) if env_name else "local"
    looked = ", ".join(str(p) for p in profile_candidates(env_name))
    if key == "local":
        fail(
            f"no profile found for environment 'local' (looked at ${ENV_PROFILE} and {looked}); "
            "run `fitconnect dev` or pass --profile",
            EXIT_NOT_FOUND,
        )
    if key not in PRESET_NAMES:
        fail(
            f"no profile found for environment {env_name!r} (looked at ${ENV_PROFILE} and "
            f"{looked}); a custom environment needs a profile with 'tokenUrl' and "
            "'submissionApiUrl' (pass --profile)",
            EXIT_NOT_FOUND,
        )
    environment = _with_env_anchors(Environment.preset(key))
    if from_env is None:
        portal = f" ({environment.portal_url})" if environment.portal_url else ""
        fail(
            f"no profile and no credentials for environment {key!r} (looked at ${ENV_PROFILE} "
            f"and {looked}); set {ENV_CLIENT_ID}/{ENV_CLIENT_SECRET} or write a profile there, "
            f"with the client you created in the Self-Service-Portal{portal}",
            EXIT_NOT_FOUND,
        )
    if as_json:
        print_json(
            {
                "path": None,
                "environment": key,
                "preset": {
                    "tokenUrl": environment.token_url,
                    "submissionApiUrl": environment.submission_api_url,
                    "jwksUrl": environment.jwks_url,
                    "routingApiUrl": environment.routing_api_url,
                    "portalUrl": environment.portal_url,
                    "trust": environment.trust,
                },
                "credentialsFromEnvironment": from_env,
            }
        )
        return
    _print_profile(
        f"environment {key} (preset; no profile file, configured by variables)",
        {"environment": key},
        environment_urls=_urls(environment) | _credential_rows(from_env, profile=False),
    )


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
    title: str, data: dict[str, Any], *, environment_urls: dict[str, str | None]
) -> None:
    table = Table(title=title, show_header=False, title_justify="left")
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
