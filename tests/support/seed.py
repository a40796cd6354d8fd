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

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
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


# --- Submission API flows (used by tests/integration/test_api_*.py) ----------------------------


@contextmanager
def shared_live_server(backend_name: str, tmp_path: Path, **settings: Any) -> Iterator[LiveServer]:
    """A live server with its own backend and ``ManualClock`` for a whole test module.

    Module-scoped fixtures use it so many tests share one server (tests create their own
    clients and destinations). PostgreSQL is skipped with the reason when unreachable.
    """
    import pytest

    from fitconnect_kit.protocol.clock import ManualClock
    from tests.support.db import make_backend, postgres_unavailable_reason
    from tests.support.live import LiveServer

    if backend_name == "postgres":
        reason = postgres_unavailable_reason()
        if reason is not None:
            pytest.skip(reason)
    with make_backend(backend_name, tmp_path) as backend:
        server = LiveServer(backend.config(**settings), clock=ManualClock())
        server.start()
        try:
            yield server
        finally:
            server.stop()


def encrypt_for(destination: SeededDestination, plaintext: bytes, cty: str | None = None) -> str:
    """A JWE (compact) of ``plaintext`` for the destination's encryption key."""
    from fitconnect_kit.protocol.jose.jwe import encrypt

    return encrypt(plaintext, destination.keys.encryption_public, cty=cty).token


def last_segment(jwe: str) -> str:
    """The authentication tag of a JWE (its last segment)."""
    return jwe.strip().rsplit(".", 1)[1]


def announce_body(
    destination_id: str,
    attachment_ids: Sequence[str] = (),
    *,
    service_identifier: str = DEFAULT_SERVICE_KEY,
    name: str = "Testleistung",
    **extra: Any,
) -> dict[str, Any]:
    from fitconnect_kit.protocol.ids import parse_service_identifier

    body: dict[str, Any] = {
        "destinationId": destination_id,
        "announcedAttachments": list(attachment_ids),
        "serviceType": {"name": name, "identifier": parse_service_identifier(service_identifier)},
    }
    body.update(extra)
    return body


def jose_headers(auth: Mapping[str, str]) -> dict[str, str]:
    return {**auth, "Content-Type": "application/jose"}


@dataclass(frozen=True)
class SentSubmission:
    """A submission sent through the API (what the sender knows about it)."""

    destination_id: str
    submission_id: str
    case_id: str
    attachments: dict[str, str]  # attachment id → JWE as uploaded
    encrypted_metadata: str
    encrypted_data: str | None

    @property
    def tags(self) -> dict[str, Any]:
        """``authenticationTags`` of these JWEs as the ZD must report them."""
        result: dict[str, Any] = {"metadata": last_segment(self.encrypted_metadata)}
        if self.encrypted_data is not None:
            result["data"] = last_segment(self.encrypted_data)
        result["attachments"] = {k: last_segment(v) for k, v in self.attachments.items()}
        return result


def send_submission(
    http: httpx.Client,
    sender_auth: Mapping[str, str],
    destination: SeededDestination,
    *,
    attachments: int = 1,
    with_data: bool = True,
    submit: bool = True,
    case_id: str | None = None,
    callback: Mapping[str, str] | None = None,
) -> SentSubmission:
    """Announce, upload every attachment and (unless ``submit=False``) submit; asserts success."""
    from fitconnect_kit.protocol.ids import new_id

    attachment_ids = [new_id() for _ in range(attachments)]
    extra: dict[str, Any] = {}
    if case_id is not None:
        extra["caseId"] = case_id
    if callback is not None:
        extra["callback"] = dict(callback)
    created = http.post(
        "/v1/submissions",
        json=announce_body(destination.destination_id, attachment_ids, **extra),
        headers=dict(sender_auth),
    )
    assert created.status_code == 201, created.text
    ids = created.json()
    jwes: dict[str, str] = {}
    for attachment_id in attachment_ids:
        jwes[attachment_id] = encrypt_for(destination, b"attachment " + attachment_id.encode())
        uploaded = http.put(
            f"/v1/submissions/{ids['submissionId']}/attachments/{attachment_id}",
            content=jwes[attachment_id].encode(),
            headers=jose_headers(sender_auth),
        )
        assert uploaded.status_code == 204, uploaded.text
    metadata = encrypt_for(destination, b'{"metadata": true}', "application/json")
    data = encrypt_for(destination, b'{"data": 1}', "application/json") if with_data else None
    if submit:
        body = {"encryptedMetadata": metadata}
        if data is not None:
            body["encryptedData"] = data
        submitted = http.put(
            f"/v1/submissions/{ids['submissionId']}", json=body, headers=dict(sender_auth)
        )
        assert submitted.status_code == 202, submitted.text
    return SentSubmission(
        destination_id=ids["destinationId"],
        submission_id=ids["submissionId"],
        case_id=ids["caseId"],
        attachments=jwes,
        encrypted_metadata=metadata,
        encrypted_data=data,
    )


def receiver_set(
    destination: SeededDestination,
    event: str,
    *,
    submission_id: str,
    case_id: str,
    payload: Mapping[str, Any] | None = None,
    issuer: str | None = None,
    kid: str | None = None,
    key: rsa.RSAPrivateKey | None = None,
    clock: Any = None,
    sign_unchecked: bool = False,
) -> str:
    """A SET as the destination's receiving system posts it (signed with its signing key).

    ``issuer``/``kid``/``key`` override the defaults to build refusable tokens;
    ``sign_unchecked`` signs claims that ``protocol.events`` would refuse to build (e.g. a
    receiver-issued ``create-submission``).
    """
    from fitconnect_kit.protocol import events
    from fitconnect_kit.protocol.ids import new_id
    from fitconnect_kit.protocol.jose.jws import sign_compact
    from fitconnect_kit.protocol.jsonutil import dumps_compact

    signing_key = key or destination.signing_private_key
    signing_kid = kid or destination.signing_kid
    if sign_unchecked:
        import time

        claims: dict[str, Any] = {
            "$schema": events.SET_PAYLOAD_SCHEMA_DEFAULT,
            "jti": new_id(),
            "iss": issuer or destination.destination_id,
            "iat": int(clock.now().timestamp()) if clock is not None else int(time.time()),
            "sub": events.submission_subject(submission_id),
            "txn": events.case_txn(case_id),
            "events": {event: dict(payload or {})},
        }
        header = {"typ": events.SET_TYP, "alg": "PS512", "kid": signing_kid}
        return sign_compact(header, dumps_compact(claims), signing_key)
    claims = events.build_set_claims(
        events.Event(event),
        issuer=issuer or destination.destination_id,
        subject=events.submission_subject(submission_id),
        case_id=case_id,
        payload=payload,
        **({"clock": clock} if clock is not None else {}),
    )
    return events.sign_set(claims, signing_key, signing_kid)


def assert_problem(response: httpx.Response, status: int, name: str) -> dict[str, Any]:
    """The response is problem JSON of type ``…/problems/<name>`` with ``status`` and a detail."""
    from fitconnect_kit.protocol.problems import SUBMISSION_API_PROBLEM_BASE

    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json", response.text
    body: dict[str, Any] = response.json()
    assert body["type"] == SUBMISSION_API_PROBLEM_BASE + name, body
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body
