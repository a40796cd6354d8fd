"""``fitconnect admin``: clients, destinations and links of our Zustelldienst.

Works directly on the server's database (the configuration file of ``fitconnect serve``); the
schema is migrated first, so it also works before the server ever ran.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from fitconnect_kit.cli._common import (
    EXIT_NOT_FOUND,
    EXIT_USAGE,
    JsonOption,
    fail,
    read_text_file,
    stdout,
)
from fitconnect_kit.cli.serve import ConfigOption, config_path
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.ids import parse_service_identifier
from fitconnect_kit.server.config import ConfigError, ServerConfig, load_config
from fitconnect_kit.server.storage.db import Database

T = TypeVar("T")

admin_app = typer.Typer(help="Administer our Zustelldienst (clients, destinations).")
client_app = typer.Typer(help="OAuth clients (senders and subscribers).")
destination_app = typer.Typer(help="Destinations (Zustellpunkte).")
admin_app.add_typer(client_app, name="client")
admin_app.add_typer(destination_app, name="destination")

CALLBACK_SECRET_ENV = "FITCONNECT_CALLBACK_SECRET"  # noqa: S105 - a variable name
# The subscriber scopes (as in server/auth.py, not imported: it pulls in FastAPI).
SCOPE_BASE = "https://schema.fitko.de/fit-connect/oauth/scopes/"
SCOPE_SHORT_FORMS = {
    name: SCOPE_BASE + name for name in ("subscribe-destinations", "manage-destinations")
}
REPLY_CHANNELS = ("eMail", "deMail", "fink", "elster", "fitConnect")

_state: dict[str, Path | None] = {"config": None}


@admin_app.callback()
def _admin(config: ConfigOption = None) -> None:
    """Administer our Zustelldienst."""
    _state["config"] = config_path(config)


def _config() -> ServerConfig:
    try:
        return load_config(_state["config"])
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


def _run(action: Callable[[Database, ServerConfig], Awaitable[T]]) -> T:
    from fitconnect_kit.server.admin import open_admin_database

    config = _config()

    async def run() -> T:
        database = await open_admin_database(config)
        try:
            return await action(database, config)
        finally:
            await database.dispose()

    return asyncio.run(run())


def _print_json(value: Any) -> None:
    stdout.print(json.dumps(value, indent=2, ensure_ascii=False), markup=False)


# --- clients -------------------------------------------------------------------------------------


def expand_scopes(scopes: list[str]) -> list[str]:
    """The scopes with short forms (``subscribe-destinations``, ``manage-destinations``)
    expanded to their full URIs; everything else as given (the server checks it)."""
    return [SCOPE_SHORT_FORMS.get(s.strip(), s.strip()) for s in scopes]


@client_app.command("create")
def client_create(
    kind: Annotated[str, typer.Option("--kind", help="sender or subscriber")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="Scope (repeatable). Senders: send:region:DE… (e.g. send:region:DE09). "
            "Subscribers: subscribe-destinations, manage-destinations (short forms of the "
            "full URIs above). Default: send:region:DE (sender) or subscribe-destinations "
            "(subscriber).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a client and print its id and secret (the secret is shown only this once).

    Subscriber scopes (--scope takes the short form or the full URI):

    subscribe-destinations = https://schema.fitko.de/fit-connect/oauth/scopes/subscribe-destinations

    manage-destinations = https://schema.fitko.de/fit-connect/oauth/scopes/manage-destinations
    """
    from fitconnect_kit.server.admin import create_client

    if kind not in ("sender", "subscriber"):
        fail(f"--kind must be sender or subscriber, got {kind!r}", EXIT_USAGE)
    scopes = expand_scopes(scope) if scope else None
    created = _run(lambda db, _c: create_client(db, kind=kind, name=name, scopes=scopes))
    if as_json:
        _print_json(
            {
                "clientId": created.client_id,
                "clientSecret": created.client_secret,
                "kind": created.kind.value,
                "name": created.name,
                "scopes": list(created.scopes),
            }
        )
        return
    stdout.print(f"client_id:     {created.client_id}", markup=False)
    stdout.print(f"client_secret: {created.client_secret}", markup=False)
    stdout.print(f"kind:          {created.kind.value}", markup=False)
    stdout.print(f"scopes:        {' '.join(created.scopes)}", markup=False)
    stdout.print("The secret is not stored in clear and cannot be shown again.", markup=False)


@client_app.command("list")
def client_list(as_json: JsonOption = False) -> None:
    """List all clients (never their secrets)."""
    from fitconnect_kit.server.admin import list_clients

    clients = _run(lambda db, _c: list_clients(db))
    if as_json:
        _print_json([c.to_json() for c in clients])
        return
    for c in clients:
        flags = " (disabled)" if c.disabled else ""
        linked = f" destinations={','.join(c.destination_ids)}" if c.destination_ids else ""
        label = f" {c.name!r}" if c.name else ""
        stdout.print(
            f"{c.client_id} {c.kind.value}{label}{flags} scopes={' '.join(c.scopes)}{linked}",
            markup=False,
        )


# --- destinations --------------------------------------------------------------------------------


def _load_key(path: Path, what: str) -> dict[str, Any]:
    from fitconnect_kit.protocol.keygen import load_jwk_file

    try:
        return load_jwk_file(path)
    except FileNotFoundError:
        fail(f"{what} key file not found: {path}", EXIT_NOT_FOUND)


def _schema(spec: str) -> dict[str, str]:
    """``URI`` or ``URI=MIME``; XML for ``.xsd``/``.xml`` URIs, else JSON."""
    uri, sep, mime = spec.partition("=")
    if not sep:
        mime = "application/xml" if uri.endswith((".xsd", ".xml")) else "application/json"
    return {"schemaUri": uri, "mimeType": mime}


def _services(
    services_file: Path | None,
    service: list[str],
    schema: list[str],
    region: list[str],
    reply_channel: list[str],
) -> list[dict[str, Any]]:
    if services_file is not None:
        data = json.loads(read_text_file(services_file, "services file"))
        if not isinstance(data, list):
            fail("the services file must contain a JSON array of service objects", EXIT_USAGE)
        return data
    if not service:
        fail("give at least one --service (or --services-file)", EXIT_USAGE)
    if not schema:
        fail("give at least one --schema (submission schema URI)", EXIT_USAGE)
    result = []
    for identifier in service:
        try:
            urn = parse_service_identifier(identifier)
        except FitConnectError as exc:
            fail(str(exc), EXIT_USAGE)
        entry: dict[str, Any] = {
            "identifier": urn,
            "submissionSchemas": [_schema(s) for s in schema],
            "regions": list(region),
        }
        if reply_channel:
            entry["replyChannels"] = {name: {} for name in reply_channel}
        result.append(entry)
    return result


@destination_app.command("create")
def destination_create(
    service: Annotated[
        list[str] | None,
        typer.Option("--service", help="Leistungsschlüssel or service URN (repeatable)."),
    ] = None,
    schema: Annotated[
        list[str] | None,
        typer.Option("--schema", help="Submission schema URI[=MIME type] (repeatable)."),
    ] = None,
    region: Annotated[
        list[str] | None, typer.Option("--region", help="Region, e.g. DE09372126 (repeatable).")
    ] = None,
    reply_channel: Annotated[
        list[str] | None,
        typer.Option("--reply-channel", help=f"One of {', '.join(REPLY_CHANNELS)} (repeatable)."),
    ] = None,
    services_file: Annotated[
        Path | None,
        typer.Option("--services-file", help="JSON array of services (instead of --service…)."),
    ] = None,
    metadata_version: Annotated[
        list[str] | None,
        typer.Option("--metadata-version", help="Supported metadata version (repeatable)."),
    ] = None,
    encryption_key: Annotated[
        Path | None, typer.Option("--encryption-key", help="Public encryption JWK file.")
    ] = None,
    signing_key: Annotated[
        Path | None, typer.Option("--signing-key", help="Public signature-verification JWK file.")
    ] = None,
    keys_dir: Annotated[
        Path | None,
        typer.Option("--keys-dir", help="Directory written by `fitconnect keys generate`."),
    ] = None,
    callback_url: Annotated[str | None, typer.Option("--callback-url")] = None,
    callback_secret_file: Annotated[
        Path | None,
        typer.Option(
            "--callback-secret-file",
            help=f"File with the callback secret (or set ${CALLBACK_SECRET_ENV}).",
        ),
    ] = None,
    status: Annotated[str, typer.Option("--status", help="created|active|inactive")] = "active",
    name: Annotated[str | None, typer.Option("--name")] = None,
    destination_id: Annotated[
        str | None, typer.Option("--id", help="Fixed destination id.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Create a destination with its encryption and signature keys."""
    from fitconnect_kit.protocol.keygen import KEY_FILE_NAMES
    from fitconnect_kit.server.admin import DEFAULT_METADATA_VERSIONS, create_destination

    for channel in reply_channel or []:
        if channel not in REPLY_CHANNELS:
            fail(f"--reply-channel must be one of {', '.join(REPLY_CHANNELS)}", EXIT_USAGE)
    if keys_dir is not None:
        encryption_key = encryption_key or keys_dir / KEY_FILE_NAMES["encryption_public"]
        signing_key = signing_key or keys_dir / KEY_FILE_NAMES["signing_public"]
    if encryption_key is None or signing_key is None:
        fail("give --keys-dir or both --encryption-key and --signing-key", EXIT_USAGE)
    services = _services(
        services_file, service or [], schema or [], region or [], reply_channel or []
    )
    encryption = _load_key(encryption_key, "encryption")
    signing = _load_key(signing_key, "signing")
    secret: str | None = None
    if callback_secret_file is not None:
        secret = read_text_file(callback_secret_file, "callback secret file").strip()
    elif os.environ.get(CALLBACK_SECRET_ENV):
        secret = os.environ[CALLBACK_SECRET_ENV]
    top_channels: dict[str, Any] | None = {c: {} for c in reply_channel} if reply_channel else None

    info = _run(
        lambda db, config: create_destination(
            db,
            config,
            services=services,
            encryption_key=encryption,
            signing_key=signing,
            metadata_versions=metadata_version or list(DEFAULT_METADATA_VERSIONS),
            reply_channels=top_channels,
            callback_url=callback_url,
            callback_secret=secret,
            status=status,
            name=name,
            destination_id=destination_id,
        )
    )
    if as_json:
        _print_json(info.to_json())
        return
    stdout.print(f"destination_id: {info.destination_id}", markup=False)
    stdout.print(f"status:         {info.status}", markup=False)
    stdout.print(f"encryption_kid: {info.encryption_kid}", markup=False)


@destination_app.command("link")
def destination_link(
    client: Annotated[str, typer.Option("--client", help="Subscriber client id.")],
    destination: Annotated[str, typer.Option("--destination", help="Destination id.")],
    manage: Annotated[
        bool, typer.Option("--manage", help="The client may also change the destination.")
    ] = False,
) -> None:
    """Link a subscriber client to a destination (as the Self-Service-Portal does)."""
    from fitconnect_kit.server.admin import link_client

    _run(
        lambda db, _c: link_client(
            db, client_id=client, destination_id=destination, can_manage=manage
        )
    )
    stdout.print(f"linked client {client} to destination {destination}", markup=False)


@destination_app.command("show")
def destination_show(
    destination_id: Annotated[str, typer.Argument(help="Destination id.")],
) -> None:
    """Show a destination as JSON (the callback secret only as set/not set)."""
    from fitconnect_kit.server.admin import get_destination

    info = _run(lambda db, _c: get_destination(db, destination_id))
    _print_json(info.to_json())


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.add_typer(admin_app, name="admin")
