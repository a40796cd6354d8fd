"""RSA JSON Web Keys (RFC 7517/7518): conversion to and from ``cryptography`` key objects.

Only RSA is supported because FIT-Connect only allows RSA keys. The FIT-Connect *rules* for
destination keys (size, alg, key_ops, x5c) live in :mod:`fitconnect_kit.protocol.keys`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from fitconnect_kit.protocol.b64 import b64url_decode, b64url_encode
from fitconnect_kit.protocol.errors import InvalidKeyError, MalformedJoseError

Jwk = dict[str, Any]

PRIVATE_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth")


def _int_to_b64(value: int) -> str:
    length = max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(length, "big"))


def _b64_to_int(jwk: Mapping[str, Any], member: str) -> int:
    raw = jwk.get(member)
    if not isinstance(raw, str) or not raw:
        raise InvalidKeyError(f"RSA JWK member {member!r} is missing or not a string")
    try:
        return int.from_bytes(b64url_decode(raw, what=f"JWK member {member!r}"), "big")
    except MalformedJoseError as exc:
        raise InvalidKeyError(str(exc)) from exc


def _require_rsa(jwk: Mapping[str, Any]) -> None:
    if not isinstance(jwk, Mapping):
        raise InvalidKeyError("a JWK must be a JSON object")
    if jwk.get("kty") != "RSA":
        raise InvalidKeyError(
            f"only RSA keys are allowed in FIT-Connect, got kty={jwk.get('kty')!r}"
        )


def public_key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    """The RSA public key of a (public or private) JWK."""
    _require_rsa(jwk)
    n = _b64_to_int(jwk, "n")
    e = _b64_to_int(jwk, "e")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError as exc:
        raise InvalidKeyError(f"RSA JWK has invalid public parameters: {exc}") from exc


def private_key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    """The RSA private key of a private JWK (CRT parameters are recomputed when absent)."""
    _require_rsa(jwk)
    if "d" not in jwk:
        raise InvalidKeyError(f"JWK {jwk.get('kid')!r} is a public key; a private key is needed")
    if "oth" in jwk:
        raise InvalidKeyError("multi-prime RSA keys ('oth') are not supported")
    n = _b64_to_int(jwk, "n")
    e = _b64_to_int(jwk, "e")
    d = _b64_to_int(jwk, "d")
    try:
        if all(m in jwk for m in ("p", "q", "dp", "dq", "qi")):
            p, q = _b64_to_int(jwk, "p"), _b64_to_int(jwk, "q")
            dp, dq, qi = _b64_to_int(jwk, "dp"), _b64_to_int(jwk, "dq"), _b64_to_int(jwk, "qi")
        else:
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
            dp, dq, qi = rsa.rsa_crt_dmp1(d, p), rsa.rsa_crt_dmq1(d, q), rsa.rsa_crt_iqmp(p, q)
        numbers = rsa.RSAPrivateNumbers(p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n))
        return numbers.private_key()
    except ValueError as exc:
        raise InvalidKeyError(f"RSA JWK has inconsistent private parameters: {exc}") from exc


def jwk_from_public_key(
    key: rsa.RSAPublicKey,
    *,
    kid: str | None = None,
    alg: str | None = None,
    key_ops: Sequence[str] | None = None,
    use: str | None = None,
    x5c: Sequence[str] | None = None,
) -> Jwk:
    """A public RSA JWK with the given optional members (members in RFC order)."""
    numbers = key.public_numbers()
    jwk: Jwk = {"kty": "RSA"}
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    if key_ops is not None:
        jwk["key_ops"] = list(key_ops)
    if use is not None:
        jwk["use"] = use
    jwk["n"] = _int_to_b64(numbers.n)
    jwk["e"] = _int_to_b64(numbers.e)
    if x5c is not None:
        jwk["x5c"] = list(x5c)
    return jwk


def jwk_from_private_key(
    key: rsa.RSAPrivateKey,
    *,
    kid: str | None = None,
    alg: str | None = None,
    key_ops: Sequence[str] | None = None,
    use: str | None = None,
    x5c: Sequence[str] | None = None,
) -> Jwk:
    """A private RSA JWK including all CRT parameters."""
    jwk = jwk_from_public_key(key.public_key(), kid=kid, alg=alg, key_ops=key_ops, use=use, x5c=x5c)
    numbers = key.private_numbers()
    jwk.update(
        d=_int_to_b64(numbers.d),
        p=_int_to_b64(numbers.p),
        q=_int_to_b64(numbers.q),
        dp=_int_to_b64(numbers.dmp1),
        dq=_int_to_b64(numbers.dmq1),
        qi=_int_to_b64(numbers.iqmp),
    )
    return jwk


def public_jwk(jwk: Mapping[str, Any]) -> Jwk:
    """A copy of ``jwk`` without private members (safe to publish)."""
    return {k: v for k, v in jwk.items() if k not in PRIVATE_MEMBERS}


def is_private(jwk: Mapping[str, Any]) -> bool:
    return "d" in jwk


def thumbprint(jwk: Mapping[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of an RSA JWK."""
    _require_rsa(jwk)
    _b64_to_int(jwk, "e")  # InvalidKeyError when missing or not base64url (not KeyError)
    _b64_to_int(jwk, "n")
    canonical = '{"e":"%s","kty":"RSA","n":"%s"}' % (jwk["e"], jwk["n"])  # noqa: UP031
    return b64url_encode(hashlib.sha256(canonical.encode("ascii")).digest())


def find_key(keys: Iterable[Mapping[str, Any]], kid: str) -> Jwk | None:
    """The first JWK with this ``kid`` among ``keys``, or ``None``."""
    for key in keys:
        if key.get("kid") == kid:
            return dict(key)
    return None


def jwks_keys(jwks: Mapping[str, Any]) -> list[Jwk]:
    """The ``keys`` array of a JWK Set, validated to be a list of objects."""
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise InvalidKeyError("a JWK Set must be an object with a 'keys' array of JWK objects")
    return [dict(k) for k in keys]
