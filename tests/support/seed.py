"""Seeding a :class:`~tests.support.live.LiveServer`: clients, destinations, access tokens.

Everything goes through :mod:`fitconnect_kit.server.admin` on the server's own loop and database,
and tokens through the real ``POST /token``::

    sender = live.seed.sender()                       # send:region:DE
    dest = live.seed.destination()                    # active, keys from tests.keycache
    subscriber = live.seed.subscriber(dest.destination_id)
    token = live.seed.token(sender)                   # access token string
    headers = live.seed.auth(subscriber)              # {"Authorization": "Bearer …"}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx

from fitconnect_kit.protocol.jose.jwk import Jwk, private_key_from_jwk
from fitconnect_kit.protocol.keygen import GeneratedKeySet, generate_key_set
from fitconnect_kit.server import admin
from fitconnect_kit.server.admin import CreatedClient, DestinationInfo
from tests.keycache import rsa_key

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.support.live import LiveServer

DEFAULT_SERVICE_KEY = "99123456760610"
DEFAULT_SCHEMA_URI = "https://schema.fitko.de/fim/s00000000009_1.0.0.schema.json"
DEFAULT_REGION = "DE09372126"
#: keycache indexes of destination keys: (CA, encryption, signing).
DESTINATION_KEY_INDEXES = (110, 111, 112)


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    client_secret: str = field(repr=False)
    kind: str
    scopes: tuple[str, ...]

    @classmethod
    def of(cls, created: CreatedClient) -> ClientCredentials:
        return cls(created.client_id, created.client_secret, created.kind.value, created.scopes)


@dataclass(frozen=True)
class SeededDestination:
    destination_id: str
    info: DestinationInfo
    keys: GeneratedKeySet

    @property
    def encryption_kid(self) -> str:
        return self.keys.encryption_kid

    @property
    def signing_kid(self) -> str:
        return self.keys.signing_kid

    @property
    def signing_private_jwk(self) -> Jwk:
        return self.keys.signing_private

    @property
    def signing_private_key(self) -> rsa.RSAPrivateKey:
        return private_key_from_jwk(self.keys.signing_private)

    @property
    def encryption_private_key(self) -> rsa.RSAPrivateKey:
        return private_key_from_jwk(self.keys.encryption_private)


def destination_key_set(
    live: LiveServer, indexes: Sequence[int] = DESTINATION_KEY_INDEXES
) -> GeneratedKeySet:
    """Encryption and signing keys with a self-signed CA chain, from cached RSA keys."""
    keys = iter([rsa_key(i) for i in indexes])
    return generate_key_set(clock=live.clock, key_factory=lambda: next(keys))


def service(
    identifier: str = DEFAULT_SERVICE_KEY,
    *,
    regions: Sequence[str] = (DEFAULT_REGION,),
    schema_uri: str = DEFAULT_SCHEMA_URI,
    mime_type: str = "application/json",
    reply_channels: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One service entry in wire form (a bare Leistungsschlüssel becomes its URN)."""
    from fitconnect_kit.protocol.ids import parse_service_identifier

    entry: dict[str, Any] = {
        "identifier": parse_service_identifier(identifier),
        "submissionSchemas": [{"schemaUri": schema_uri, "mimeType": mime_type}],
        "regions": list(regions),
    }
    if reply_channels is not None:
        entry["replyChannels"] = dict(reply_channels)
    return entry


class Seeder:
    def __init__(self, live: LiveServer) -> None:
        self.live = live

    def _db(self) -> Any:
        return self.live.zd.database

    def client(
        self, kind: str, *, scopes: Sequence[str] | None = None, name: str | None = None
    ) -> ClientCredentials:
        created = self.live.run(
            admin.create_client(
                self._db(), kind=kind, scopes=scopes, name=name, clock=self.live.clock
            )
        )
        return ClientCredentials.of(created)

    def sender(
        self, *, scopes: Sequence[str] | None = None, name: str | None = None
    ) -> ClientCredentials:
        return self.client("sender", scopes=scopes, name=name)

    def subscriber(
        self,
        *destination_ids: str,
        manage: bool = False,
        scopes: Sequence[str] | None = None,
        name: str | None = None,
    ) -> ClientCredentials:
        """A subscriber linked to ``destination_ids`` (with the manage scope if ``manage``)."""
        if scopes is None and manage:
            from fitconnect_kit.server.auth import MANAGE_SCOPE, SUBSCRIBE_SCOPE

            scopes = [SUBSCRIBE_SCOPE, MANAGE_SCOPE]
        credentials = self.client("subscriber", scopes=scopes, name=name)
        for destination_id in destination_ids:
            self.link(credentials.client_id, destination_id, manage=manage)
        return credentials

    def link(self, client_id: str, destination_id: str, *, manage: bool = False) -> None:
        self.live.run(
            admin.link_client(
                self._db(),
                client_id=client_id,
                destination_id=destination_id,
                can_manage=manage,
                clock=self.live.clock,
            )
        )

    def destination(
        self,
        *,
        services: Sequence[Mapping[str, Any]] | None = None,
        status: str = "active",
        callback_url: str | None = None,
        callback_secret: str | None = None,
        metadata_versions: Sequence[str] = ("1.0.0",),
        reply_channels: Mapping[str, Any] | None = None,
        key_indexes: Sequence[int] = DESTINATION_KEY_INDEXES,
        name: str | None = "Test-Zustellpunkt",
    ) -> SeededDestination:
        keys = destination_key_set(self.live, key_indexes)
        info = self.live.run(
            admin.create_destination(
                self._db(),
                self.live.config,
                services=list(services) if services is not None else [service()],
                encryption_key=keys.encryption_public,
                signing_key=keys.signing_public,
                metadata_versions=metadata_versions,
                reply_channels=reply_channels,
                callback_url=callback_url,
                callback_secret=callback_secret,
                status=status,
                name=name,
                clock=self.live.clock,
            )
        )
        return SeededDestination(info.destination_id, info, keys)

    def token_response(
        self, credentials: ClientCredentials, *, scope: str | None = None
    ) -> httpx.Response:
        form = {
            "grant_type": "client_credentials",
            "client_id": credentials.client_id,
            "client_secret": credentials.client_secret,
        }
        if scope is not None:
            form["scope"] = scope
        return httpx.post(self.live.url("/token"), data=form, timeout=30)

    def token(self, credentials: ClientCredentials, *, scope: str | None = None) -> str:
        response = self.token_response(credentials, scope=scope)
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def auth(self, credentials: ClientCredentials, *, scope: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(credentials, scope=scope)}"}
