"""Administration of the Zustelldienst: clients, destinations and their links (what FITKO's
Self-Service-Portal does). Used by ``fitconnect admin`` and by test seeding helpers.

Every function takes a :class:`~fitconnect_kit.server.storage.db.Database` whose schema is
current (see :func:`open_admin_database`). Client secrets are returned exactly once, by
:func:`create_client`; only their hash is stored.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from fitconnect_kit.protocol.api import (
    ContactInformation,
    DestinationService,
    ReplyChannels,
    describe_validation_error,
)
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.ids import new_id, parse_uuid
from fitconnect_kit.protocol.jose.jwk import Jwk, is_private, public_jwk
from fitconnect_kit.protocol.keys import KeyPurpose, TrustPolicy, validate_destination_key
from fitconnect_kit.server.auth import (
    DEFAULT_SENDER_SCOPES,
    DEFAULT_SUBSCRIBER_SCOPES,
    ScopeError,
    hash_client_secret,
    new_client_secret,
    validate_client_scopes,
)
from fitconnect_kit.server.callback_guard import callback_target_refusal
from fitconnect_kit.server.config import ServerConfig
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.migrate import upgrade_database
from fitconnect_kit.server.storage.models import (
    NAME_MAX_LENGTH,
    Client,
    ClientDestination,
    ClientKind,
    Destination,
    DestinationKey,
    DestinationStatus,
)

DEFAULT_METADATA_VERSIONS = ("1.0.0",)


class AdminError(FitConnectError):
    """An administrative request cannot be carried out (one-line message)."""


class AdminNotFoundError(AdminError):
    cli_exit_code = 4


class AdminInputError(AdminError):
    cli_exit_code = 2


@dataclass(frozen=True)
class CreatedClient:
    """A new client; ``client_secret`` exists only here — it is not stored in clear."""

    client_id: str
    client_secret: str = field(repr=False)
    kind: ClientKind
    name: str | None
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class ClientInfo:
    client_id: str
    kind: ClientKind
    name: str | None
    scopes: tuple[str, ...]
    disabled: bool
    destination_ids: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "kind": self.kind.value,
            "name": self.name,
            "scopes": list(self.scopes),
            "disabled": self.disabled,
            "destinationIds": list(self.destination_ids),
        }


@dataclass(frozen=True)
class DestinationInfo:
    """Owner view of a destination; the callback secret is only reported as set or not."""

    destination_id: str
    status: str
    name: str | None
    services: list[dict[str, Any]]
    metadata_versions: list[str]
    reply_channels: dict[str, Any] | None
    encryption_kid: str | None
    keys: list[Jwk]
    callback_url: str | None
    callback_secret_set: bool
    contact_information: dict[str, Any] | None
    linked_client_ids: list[str]

    def to_json(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "destinationId": self.destination_id,
            "status": self.status,
            "name": self.name,
            "services": self.services,
            "metadataVersions": self.metadata_versions,
            "encryptionKid": self.encryption_kid,
            "keys": self.keys,
            "linkedClientIds": self.linked_client_ids,
        }
        if self.reply_channels is not None:
            result["replyChannels"] = self.reply_channels
        if self.callback_url is not None:
            result["callback"] = {"url": self.callback_url, "secretSet": self.callback_secret_set}
        if self.contact_information is not None:
            result["contactInformation"] = self.contact_information
        return result


async def open_admin_database(config: ServerConfig) -> Database:
    """Open the configured database and bring its schema up to date."""
    database = Database(config.database_url)
    try:
        await upgrade_database(database.engine)
    except BaseException:
        await database.dispose()
        raise
    return database


# --- clients -------------------------------------------------------------------------------------


async def create_client(
    database: Database,
    *,
    kind: ClientKind | str,
    name: str | None = None,
    scopes: Sequence[str] | None = None,
    client_id: str | None = None,
    client_secret: str | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> CreatedClient:
    """Create an OAuth client. Default scopes: ``send:region:DE`` / subscribe-destinations."""
    try:
        client_kind = ClientKind(kind)
    except ValueError:
        raise AdminInputError(f"client kind must be sender or subscriber, got {kind!r}") from None
    if scopes is None or not list(scopes):
        default = (
            DEFAULT_SENDER_SCOPES if client_kind is ClientKind.SENDER else DEFAULT_SUBSCRIBER_SCOPES
        )
        scopes = list(default)
    try:
        checked = validate_client_scopes(client_kind, scopes)
    except ScopeError as exc:
        raise AdminInputError(str(exc)) from None
    _check_name_length(name)
    identifier = parse_uuid(client_id, field="client id") if client_id else new_id()
    secret = client_secret or new_client_secret()
    if len(secret) < 16:
        raise AdminInputError("a client secret needs at least 16 characters")
    async with database.sessions() as session:
        session.add(
            Client(
                client_id=identifier,
                kind=client_kind.value,
                name=name,
                secret_hash=hash_client_secret(secret),
                scopes=checked,
                created_at=clock.now(),
                disabled=False,
            )
        )
        try:
            await session.commit()
        except IntegrityError:
            raise AdminInputError(f"client {identifier} already exists") from None
    return CreatedClient(identifier, secret, client_kind, name, tuple(checked))


async def list_clients(database: Database) -> list[ClientInfo]:
    async with database.sessions() as session:
        clients = list(await session.scalars(select(Client).order_by(Client.created_at)))
        links = (
            await session.execute(
                select(ClientDestination.client_id, ClientDestination.destination_id)
            )
        ).all()
    by_client: dict[str, list[str]] = {}
    for link in links:
        by_client.setdefault(link.client_id, []).append(link.destination_id)
    return [
        ClientInfo(
            client_id=c.client_id,
            kind=ClientKind(c.kind),
            name=c.name,
            scopes=tuple(c.scopes),
            disabled=c.disabled,
            destination_ids=tuple(sorted(by_client.get(c.client_id, []))),
        )
        for c in clients
    ]


async def set_client_disabled(database: Database, client_id: str, disabled: bool = True) -> None:
    async with database.sessions() as session:
        client = await session.get(Client, client_id)
        if client is None:
            raise AdminNotFoundError(f"client {client_id} not found")
        client.disabled = disabled
        await session.commit()


# --- destinations --------------------------------------------------------------------------------


def _validated_services(services: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    result = []
    for index, service in enumerate(services):
        try:
            model = DestinationService.model_validate(dict(service))
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise AdminInputError(f"service {index + 1}: {detail}") from None
        if not model.submission_schemas:
            raise AdminInputError(
                f"service {model.identifier} needs at least one submission schema"
            )
        result.append(model.to_json())
    if not result:
        raise AdminInputError("a destination needs at least one service")
    return result


def _checked_key(
    jwk: Mapping[str, Any], purpose: KeyPurpose, policy: TrustPolicy, clock: Clock
) -> Jwk:
    # Only the public part is ever stored, even if a private JWK file was given.
    key = public_jwk(jwk) if is_private(jwk) else dict(jwk)
    try:
        validate_destination_key(key, purpose=purpose, policy=policy, clock=clock)
    except FitConnectError as exc:
        raise AdminInputError(f"{purpose.value} key {key.get('kid')!r}: {exc}") from None
    return key


def _check_name_length(name: str | None) -> None:
    if name is not None and len(name) > NAME_MAX_LENGTH:
        raise AdminInputError(f"a name may have at most {NAME_MAX_LENGTH} characters")


def check_callback_url(url: str, *, allow_insecure_loopback: bool) -> str:
    """HTTPS only; plain HTTP to loopback hosts when the test policy allows it."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    loopback = parts.hostname in ("localhost", "127.0.0.1", "::1")
    if parts.scheme == "http" and loopback and allow_insecure_loopback:
        return url
    if parts.scheme == "http" and loopback:
        raise AdminInputError("callback URL must use HTTPS (plain HTTP only with key_policy test)")
    raise AdminInputError(f"callback URL must be an https:// URL, got {url!r}")


async def check_callback_target(url: str, config: ServerConfig) -> str:
    """:func:`check_callback_url` under ``config``, plus the SSRF guard when it is on
    (``callbacks.block_private_addresses``): no private, loopback or link-local targets."""
    check_callback_url(url, allow_insecure_loopback=config.allows_insecure_loopback_callbacks)
    if config.blocks_private_callback_targets:
        refusal = await callback_target_refusal(url)
        if refusal is not None:
            raise AdminInputError(refusal)
    return url


async def create_destination(
    database: Database,
    config: ServerConfig,
    *,
    services: Sequence[Mapping[str, Any]],
    encryption_key: Mapping[str, Any],
    signing_key: Mapping[str, Any],
    metadata_versions: Sequence[str] = DEFAULT_METADATA_VERSIONS,
    reply_channels: Mapping[str, Any] | None = None,
    callback_url: str | None = None,
    callback_secret: str | None = None,
    status: DestinationStatus | str = DestinationStatus.ACTIVE,
    name: str | None = None,
    contact_information: Mapping[str, Any] | None = None,
    destination_id: str | None = None,
    trust_policy: TrustPolicy | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> DestinationInfo:
    """Create a destination with its encryption and signature keys.

    Keys are validated with :func:`~fitconnect_kit.protocol.keys.validate_destination_key`
    under the server's key policy (``trust_policy`` overrides it).
    """
    from fitconnect_kit.server.app import trust_policy_for  # late: app imports much more

    policy = trust_policy or trust_policy_for(config)
    try:
        destination_status = DestinationStatus(status)
    except ValueError:
        raise AdminInputError(f"unknown destination status {status!r}") from None
    checked_services = _validated_services(services)
    _check_name_length(name)
    versions = [v for v in metadata_versions if v]
    if not versions:
        raise AdminInputError("a destination needs at least one metadata version")
    channels: dict[str, Any] | None = None
    if reply_channels is not None:
        try:
            channels = ReplyChannels.model_validate(dict(reply_channels)).to_json()
        except ValidationError as exc:
            raise AdminInputError(f"reply channels: {describe_validation_error(exc)}") from None
    contact: dict[str, Any] | None = None
    if contact_information is not None:
        try:
            contact = ContactInformation.model_validate(dict(contact_information)).to_json()
        except ValidationError as exc:
            detail = describe_validation_error(exc)
            raise AdminInputError(f"contact information: {detail}") from None
    if (callback_url is None) != (callback_secret is None):
        raise AdminInputError("a callback needs both a URL and a secret")
    if callback_url is not None:
        await check_callback_target(callback_url, config)
    encryption = _checked_key(encryption_key, KeyPurpose.ENCRYPTION, policy, clock)
    signing = _checked_key(signing_key, KeyPurpose.SIGNATURE, policy, clock)
    if encryption["kid"] == signing["kid"]:
        raise AdminInputError("encryption and signature keys must have different kids")

    identifier = parse_uuid(destination_id, field="destination id") if destination_id else new_id()
    now = clock.now()
    async with database.sessions() as session:
        session.add(
            Destination(
                destination_id=identifier,
                status=destination_status.value,
                name=name,
                services=checked_services,
                metadata_versions=versions,
                reply_channels=channels,
                encryption_kid=encryption["kid"],
                callback_url=callback_url,
                callback_secret=callback_secret,
                contact_information=contact,
                created_at=now,
                updated_at=now,
                status_changed_at=now,
            )
        )
        await session.flush()
        for key, purpose in ((encryption, KeyPurpose.ENCRYPTION), (signing, KeyPurpose.SIGNATURE)):
            session.add(
                DestinationKey(
                    destination_id=identifier,
                    kid=key["kid"],
                    purpose=purpose.value,
                    jwk=key,
                    created_at=now,
                )
            )
        try:
            await session.commit()
        except IntegrityError:
            raise AdminInputError(f"destination {identifier} already exists") from None
    return await get_destination(database, identifier)


async def link_client(
    database: Database,
    *,
    client_id: str,
    destination_id: str,
    can_manage: bool = False,
    clock: Clock = SYSTEM_CLOCK,
) -> None:
    """Link a subscriber client to a destination (idempotent; updates ``can_manage``)."""
    async with database.sessions() as session:
        client = await session.get(Client, client_id)
        if client is None:
            raise AdminNotFoundError(f"client {client_id} not found")
        if client.kind != ClientKind.SUBSCRIBER.value:
            raise AdminInputError(
                f"client {client_id} is a {client.kind}; only subscribers are linked"
            )
        if await session.get(Destination, destination_id) is None:
            raise AdminNotFoundError(f"destination {destination_id} not found")
        link = await session.get(ClientDestination, (client_id, destination_id))
        if link is None:
            session.add(
                ClientDestination(
                    client_id=client_id,
                    destination_id=destination_id,
                    can_manage=can_manage,
                    created_at=clock.now(),
                )
            )
        else:
            link.can_manage = can_manage
        await session.commit()


async def get_destination(database: Database, destination_id: str) -> DestinationInfo:
    async with database.sessions() as session:
        destination = await session.get(Destination, destination_id)
        if destination is None:
            raise AdminNotFoundError(f"destination {destination_id} not found")
        keys = list(
            await session.scalars(
                select(DestinationKey)
                .where(DestinationKey.destination_id == destination_id)
                .order_by(DestinationKey.created_at, DestinationKey.kid)
            )
        )
        linked = list(
            await session.scalars(
                select(ClientDestination.client_id).where(
                    ClientDestination.destination_id == destination_id
                )
            )
        )
    return DestinationInfo(
        destination_id=destination.destination_id,
        status=destination.status,
        name=destination.name,
        services=destination.services,
        metadata_versions=destination.metadata_versions,
        reply_channels=destination.reply_channels,
        encryption_kid=destination.encryption_kid,
        keys=[key.jwk for key in keys],
        callback_url=destination.callback_url,
        callback_secret_set=bool(destination.callback_secret),
        contact_information=destination.contact_information,
        linked_client_ids=sorted(linked),
    )
