"""JWS compact serialization with ``PS512`` only (RFC 7515, RFC 7518 §3.5).

FIT-Connect signs Security Event Tokens and destination addressing information with PS512
(RSASSA-PSS, SHA-512, MGF1-SHA-512, salt length 64). Any other ``alg`` — including ``none`` — is
refused, as are ``crit`` headers and unencoded payloads. SET-specific header and claim rules live
in :mod:`fitconnect_kit.protocol.events`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from fitconnect_kit.protocol.b64 import b64url_decode, b64url_encode
from fitconnect_kit.protocol.errors import (
    FormatError,
    InvalidHeaderError,
    InvalidKeyError,
    MalformedJoseError,
    SignatureError,
    UnsupportedAlgorithmError,
)
from fitconnect_kit.protocol.jose.jwk import public_key_from_jwk
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object

ALG_PS512 = "PS512"
MIN_RSA_BITS = 4096
_PSS_SALT_LENGTH = 64  # = SHA-512 output length, as RFC 7518 §3.5 requires


def _pss() -> padding.PSS:
    return padding.PSS(mgf=padding.MGF1(hashes.SHA512()), salt_length=_PSS_SALT_LENGTH)


@dataclass(frozen=True)
class ParsedJws:
    """A syntactically valid compact JWS, not yet verified."""

    header: dict[str, Any]
    payload: bytes
    signature: bytes
    signing_input: bytes  # ASCII "<b64 header>.<b64 payload>", exactly as received

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None


def _check_header(header: Mapping[str, Any]) -> None:
    alg = header.get("alg")
    if alg != ALG_PS512:
        raise UnsupportedAlgorithmError(f"JWS alg must be PS512, got {alg!r}")
    if "crit" in header:
        raise InvalidHeaderError("JWS header 'crit' is not supported; refusing the token")
    if "b64" in header:
        raise InvalidHeaderError("JWS header 'b64' (unencoded payload) is not allowed")
    for member in ("jku", "jwk", "x5u", "x5c"):
        # Keys are always selected by the verifier, never taken from the token itself.
        if member in header:
            raise InvalidHeaderError(
                f"JWS header {member!r} is not allowed; keys come from the kid"
            )


def _rsa_public(key: rsa.RSAPublicKey | Mapping[str, Any]) -> rsa.RSAPublicKey:
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, Mapping):
        alg = key.get("alg")
        if alg is not None and alg != ALG_PS512:
            raise InvalidKeyError(f"key {key.get('kid')!r} is for alg {alg!r}, not PS512")
        ops = key.get("key_ops")
        if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
            raise InvalidKeyError(f"key {key.get('kid')!r} does not allow key_ops 'verify'")
        return public_key_from_jwk(key)
    raise InvalidKeyError("a JWS verification key must be an RSA public key or a JWK")


def sign_compact(
    header: Mapping[str, Any],
    payload: bytes,
    key: rsa.RSAPrivateKey,
    *,
    min_bits: int = MIN_RSA_BITS,
) -> str:
    """Sign ``payload`` (exact bytes) with PS512 and return the compact serialization.

    ``header`` must contain ``alg: PS512``; member order is preserved as given.
    """
    _check_header(header)
    if key.key_size < min_bits:
        raise InvalidKeyError(
            f"PS512 signing key has {key.key_size} bits; at least {min_bits} required"
        )
    signing_input = (
        b64url_encode(dumps_compact(dict(header))) + "." + b64url_encode(payload)
    ).encode("ascii")
    signature = key.sign(signing_input, _pss(), hashes.SHA512())
    return signing_input.decode("ascii") + "." + b64url_encode(signature)


def parse_compact(token: str | bytes) -> ParsedJws:
    """Split and decode a compact JWS and check its header; does not verify the signature."""
    if isinstance(token, bytes):
        try:
            token = token.decode("ascii")
        except UnicodeDecodeError as exc:
            raise MalformedJoseError("JWS compact serialization must be ASCII") from exc
    if not isinstance(token, str):
        raise MalformedJoseError("JWS must be a string")
    token = token.strip()
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedJoseError(f"JWS compact serialization needs 3 segments, got {len(parts)}")
    header_b64, payload_b64, sig_b64 = parts
    if not header_b64 or not sig_b64:
        raise MalformedJoseError("JWS header and signature segments must not be empty")
    header_raw = b64url_decode(header_b64, what="JWS header")
    try:
        header = loads_object(header_raw, what="JWS header")
    except FormatError as exc:
        raise MalformedJoseError(str(exc)) from exc
    _check_header(header)
    payload = b64url_decode(payload_b64, what="JWS payload")
    signature = b64url_decode(sig_b64, what="JWS signature")
    return ParsedJws(
        header=header,
        payload=payload,
        signature=signature,
        signing_input=f"{header_b64}.{payload_b64}".encode("ascii"),
    )


def verify_parsed(
    parsed: ParsedJws, key: rsa.RSAPublicKey | Mapping[str, Any], *, min_bits: int = MIN_RSA_BITS
) -> None:
    """Verify the PS512 signature of an already parsed JWS; raise :class:`SignatureError`."""
    public = _rsa_public(key)
    if public.key_size < min_bits:
        raise InvalidKeyError(f"PS512 key has {public.key_size} bits; at least {min_bits} required")
    try:
        public.verify(parsed.signature, parsed.signing_input, _pss(), hashes.SHA512())
    except InvalidSignature as exc:
        raise SignatureError(f"JWS signature (kid {parsed.kid!r}) does not verify") from exc


def verify_compact(
    token: str | bytes, key: rsa.RSAPublicKey | Mapping[str, Any], *, min_bits: int = MIN_RSA_BITS
) -> ParsedJws:
    """Parse and verify a compact JWS; returns it when the signature is valid."""
    parsed = parse_compact(token)
    verify_parsed(parsed, key, min_bits=min_bits)
    return parsed
