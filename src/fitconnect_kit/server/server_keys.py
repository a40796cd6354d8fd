"""The Zustelldienst's own signing keys, kept in the database so every node uses the same ones.

* ``zd-set-signing`` signs the SETs the ZD issues; its public key is published at
  ``/.well-known/jwks.json``.
* ``token-signing`` signs the OAuth access tokens; it is never published.

Both are RSA-4096 for PS512, with the RFC 7638 thumbprint as ``kid``. On first start each
process generates a candidate key and inserts it only if no key of that purpose and generation
exists (``ON CONFLICT DO NOTHING``), then reads back whichever key won, so concurrent first starts
agree on one key per purpose.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.protocol import events
from fitconnect_kit.protocol.clock import Clock
from fitconnect_kit.protocol.jose.jwk import Jwk, jwk_from_public_key, thumbprint
from fitconnect_kit.protocol.jose.jws import ALG_PS512, sign_compact
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.models import ServerKey, ServerKeyPurpose

SERVER_KEY_BITS = 4096
#: Access tokens whose signature check is remembered (about 1 KiB each).
VERIFIED_TOKENS_MAX_ENTRIES = 4096


@dataclass(frozen=True)
class SigningKey:
    """One private signing key of the ZD."""

    kid: str
    purpose: ServerKeyPurpose
    generation: int
    private_key: rsa.RSAPrivateKey = field(repr=False)
    created_at: datetime

    @property
    def public_key(self) -> rsa.RSAPublicKey:
        return self.private_key.public_key()

    def public_jwk(self) -> Jwk:
        """The public JWK as published: RSA, PS512, ``key_ops: ["verify"]``, ``use: sig``."""
        return jwk_from_public_key(
            self.public_key, kid=self.kid, alg=ALG_PS512, key_ops=["verify"], use="sig"
        )

    def sign_set(self, claims: Mapping[str, Any]) -> str:
        """Sign SET claims (from ``protocol.events.build_set_claims``) with this key."""
        return events.sign_set(claims, self.private_key, self.kid)

    def sign(self, header: Mapping[str, Any], payload: bytes) -> str:
        """Compact PS512 JWS of ``payload``; ``alg`` and ``kid`` are set here."""
        full_header = {**header, "alg": ALG_PS512, "kid": self.kid}
        return sign_compact(full_header, payload, self.private_key)


class VerifiedTokenCache:
    """Claims of access tokens whose signature verified, by SHA-256 of the exact token string.

    Verifying a PS512 token costs an RSA-4096 public-key operation; clients send the same token
    on every request for its lifetime. Only the outcome of the signature check is remembered
    (never a failed one, never the raw token): the claim checks — issuer, shape, ``exp`` and
    ``iat`` against the clock — still run on every use. Bounded; the least recently used entries
    go first.
    """

    def __init__(self, max_entries: int = VERIFIED_TOKENS_MAX_ENTRIES) -> None:
        self._claims: OrderedDict[bytes, Mapping[str, Any]] = OrderedDict()
        self._max_entries = max_entries
        # Normally used from one event loop only; the lock keeps it consistent from any thread.
        self._lock = threading.Lock()

    @staticmethod
    def _digest(token: str) -> bytes:
        return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()

    def get(self, token: str) -> Mapping[str, Any] | None:
        digest = self._digest(token)
        with self._lock:
            claims = self._claims.get(digest)
            if claims is not None:
                self._claims.move_to_end(digest)
            return claims

    def put(self, token: str, claims: Mapping[str, Any]) -> None:
        """Remember ``claims`` of ``token``; only after its signature verified."""
        digest = self._digest(token)
        with self._lock:
            self._claims[digest] = claims
            self._claims.move_to_end(digest)
            while len(self._claims) > self._max_entries:
                self._claims.popitem(last=False)

    def __len__(self) -> int:
        return len(self._claims)


@dataclass(frozen=True)
class ServerKeys:
    """The keys a node works with; loaded once at start-up."""

    #: Current key for SETs issued by the ZD.
    set_signing: SigningKey
    #: Current key for access tokens.
    token_signing: SigningKey
    #: Every SET key that is still published (the current one first).
    published_set_keys: tuple[SigningKey, ...]
    #: Token keys by kid that verify access tokens (current and not yet retired).
    token_verification_keys: Mapping[str, SigningKey]
    #: Tokens that verified with ``token_verification_keys`` — belongs to exactly these keys, so
    #: keys loaded anew (another generation, a retired key) start with an empty cache.
    verified_tokens: VerifiedTokenCache = field(
        default_factory=VerifiedTokenCache, compare=False, repr=False
    )

    def jwks(self) -> dict[str, list[Jwk]]:
        return {"keys": [key.public_jwk() for key in self.published_set_keys]}


@dataclass(frozen=True)
class PresetServerKeys:
    """Pre-made private keys to use when the database has none yet (tests, migrations)."""

    set_signing: rsa.RSAPrivateKey | None = field(default=None, repr=False)
    token_signing: rsa.RSAPrivateKey | None = field(default=None, repr=False)

    def for_purpose(self, purpose: ServerKeyPurpose) -> rsa.RSAPrivateKey | None:
        if purpose is ServerKeyPurpose.SET_SIGNING:
            return self.set_signing
        return self.token_signing


def kid_for(key: rsa.RSAPublicKey) -> str:
    return thumbprint(jwk_from_public_key(key))


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")


def _load(row: ServerKey) -> SigningKey:
    # We generated and stored these keys ourselves; the full RSA consistency check would cost
    # ~0.3 s per 4096-bit key on every start.
    private = serialization.load_pem_private_key(
        row.private_key_pem.encode("ascii"), None, unsafe_skip_rsa_key_validation=True
    )
    if not isinstance(private, rsa.RSAPrivateKey):  # pragma: no cover - we only store RSA
        raise TypeError(f"server key {row.kid} is not an RSA key")
    return SigningKey(
        kid=row.kid,
        purpose=ServerKeyPurpose(row.purpose),
        generation=row.generation,
        private_key=private,
        created_at=row.created_at,
    )


def _generate() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=SERVER_KEY_BITS)


async def _rows(session: AsyncSession, purpose: ServerKeyPurpose) -> list[ServerKey]:
    result = await session.scalars(
        select(ServerKey)
        .where(ServerKey.purpose == purpose.value)
        .order_by(ServerKey.generation.desc())
    )
    return list(result)


async def _insert_if_absent(
    database: Database, purpose: ServerKeyPurpose, key: rsa.RSAPrivateKey, now: datetime
) -> None:
    values = {
        "kid": kid_for(key.public_key()),
        "purpose": purpose.value,
        "generation": 1,
        "private_key_pem": _pem(key),
        "created_at": now,
    }
    dialect_insert = postgresql.insert if database.is_postgres else sqlite.insert
    statement = dialect_insert(ServerKey).values(**values).on_conflict_do_nothing()
    async with database.sessions() as session, session.begin():
        await session.execute(statement)


async def ensure_server_keys(
    database: Database, clock: Clock, *, preset: PresetServerKeys | None = None
) -> ServerKeys:
    """Load the ZD's keys, creating the missing ones (race-free across processes)."""
    loaded: dict[ServerKeyPurpose, list[ServerKey]] = {}
    for purpose in ServerKeyPurpose:
        async with database.sessions() as session:
            rows = await _rows(session, purpose)
        if not rows:
            candidate = preset.for_purpose(purpose) if preset else None
            if candidate is None:
                candidate = await asyncio.to_thread(_generate)
            await _insert_if_absent(database, purpose, candidate, clock.now())
            async with database.sessions() as session:
                rows = await _rows(session, purpose)
        loaded[purpose] = rows

    set_rows = loaded[ServerKeyPurpose.SET_SIGNING]
    token_rows = loaded[ServerKeyPurpose.TOKEN_SIGNING]
    set_keys = tuple(_load(row) for row in set_rows)
    token_keys = tuple(_load(row) for row in token_rows if row.retired_at is None)
    current_set = next(k for k, row in zip(set_keys, set_rows, strict=True) if not row.retired_at)
    return ServerKeys(
        set_signing=current_set,
        token_signing=token_keys[0],
        # Retired SET keys stay published: old SETs in event logs must remain verifiable.
        published_set_keys=set_keys,
        token_verification_keys={key.kid: key for key in token_keys},
    )
