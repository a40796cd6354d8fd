"""Compact JWE for FIT-Connect: ``RSA-OAEP-256`` + ``A256GCM`` only (RFC 7516, RFC 7518).

Every part of a submission (metadata, data, each attachment) is a separate JWE in compact
serialization ``header.encrypted_key.iv.ciphertext.tag``:

* key management ``RSA-OAEP-256`` (OAEP with SHA-256 and MGF1-SHA-256), recipient key RSA ≥ 4096;
* content encryption ``A256GCM`` (256-bit CEK, 96-bit IV, 128-bit tag, AAD = the ASCII of the
  base64url protected header);
* protected header written as compact JSON in the order ``alg, enc, kid, cty``. We never set
  ``zip`` when encrypting, but accept ``zip: "DEF"`` (raw DEFLATE, RFC 1951) when decrypting,
  with a bound on the decompressed size.

Anything else is refused with a specific exception: other ``alg``/``enc``
(:class:`UnsupportedAlgorithmError`), a missing ``kid``, ``crit``, unknown ``zip`` or key-carrying
members ``jku/jwk/x5u/x5c`` (:class:`InvalidHeaderError`), broken syntax
(:class:`MalformedJoseError`), unusable keys (:class:`InvalidKeyError`). Decryption failures —
wrong key, bad wrapped key, tampered header/IV/ciphertext/tag — all surface as the same
:class:`DecryptionError` (RFC 7516 §11.5: a random CEK replaces a failed RSA unwrap so the
failure only shows at the tag check).

This module holds the rules, key handling, syntax checks (one-shot :func:`parse` and the
incremental :class:`JweSyntaxChecker`) and one-shot crypto. Constant-memory streaming lives in
:mod:`fitconnect_kit.protocol.jose.jwe_stream`; its public names are re-exported here.
"""

from __future__ import annotations

import hashlib
import os
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import pybase64
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import (
    AEADEncryptionContext,
    Cipher,
    algorithms,
    modes,
)

from fitconnect_kit.protocol.b64 import (
    b64url_decode,
    b64url_decoded_length,
    b64url_encode,
    b64url_encode_bytes,
    b64url_encoded_length,
)
from fitconnect_kit.protocol.errors import (
    DecryptionError,
    FormatError,
    InvalidHeaderError,
    InvalidKeyError,
    JoseError,
    MalformedJoseError,
    UnsupportedAlgorithmError,
)
from fitconnect_kit.protocol.jose.jwk import private_key_from_jwk, public_key_from_jwk
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object

if TYPE_CHECKING:  # re-exported lazily (see __getattr__ at the end) to avoid an import cycle
    from fitconnect_kit.protocol.jose.jwe_stream import (
        EncryptingIterator,
        StreamDecryptResult,
        StreamResult,
        decrypt_stream,
        decrypt_to_path,
        encrypt_stream,
        iter_encrypt,
    )

__all__ = [
    "ALG_RSA_OAEP_256",
    "CEK_LENGTH",
    "DEFAULT_MAX_PLAINTEXT_SIZE",
    "ENC_A256GCM",
    "IV_LENGTH",
    "MIN_RSA_BITS",
    "TAG_LENGTH",
    "ZIP_DEF",
    "DecryptedPart",
    "EncryptedPart",
    "EncryptingIterator",
    "JweSyntaxChecker",
    "JweSyntaxInfo",
    "KeyNotFoundError",
    "ParsedJwe",
    "PlaintextLengthError",
    "PlaintextTooLargeError",
    "PrivateKeySource",
    "PublicKeySource",
    "StreamDecryptResult",
    "StreamResult",
    "authentication_tag",
    "check_header",
    "compact_length",
    "decrypt",
    "decrypt_stream",
    "decrypt_to_path",
    "encrypt",
    "encrypt_stream",
    "iter_encrypt",
    "load_private_keys",
    "parse",
]

ALG_RSA_OAEP_256: Final = "RSA-OAEP-256"
ENC_A256GCM: Final = "A256GCM"
ZIP_DEF: Final = "DEF"
MIN_RSA_BITS: Final = 4096
CEK_LENGTH: Final = 32  # A256GCM
IV_LENGTH: Final = 12  # 96-bit GCM nonce
TAG_LENGTH: Final = 16  # 128-bit GCM tag
DEFAULT_MAX_PLAINTEXT_SIZE: Final = 512 * 1024 * 1024
"""Default bound of :func:`decrypt` (one-shot, in memory) on the (decompressed) plaintext."""

# Bounds on the buffered segments, so incremental parsing stays constant-memory.
MAX_PROTECTED_HEADER_CHARS: Final = 8192
MAX_ENCRYPTED_KEY_BYTES: Final = 2048  # RSA up to 16384 bits
_MAX_ENCRYPTED_KEY_CHARS: Final = b64url_encoded_length(MAX_ENCRYPTED_KEY_BYTES)
_IV_CHARS: Final = b64url_encoded_length(IV_LENGTH)
_TAG_CHARS: Final = b64url_encoded_length(TAG_LENGTH)
_FORBIDDEN_HEADER_MEMBERS: Final = ("jku", "jwk", "x5u", "x5c")
_TRAILING_WHITESPACE: Final = b" \t\r\n"

# One message for every cryptographic failure: the caller must not learn which step failed.
_DECRYPTION_FAILED: Final = "JWE could not be decrypted (wrong key, or the token was modified)"

PublicKeySource: TypeAlias = rsa.RSAPublicKey | Mapping[str, Any]
"""An RSA public key or a (public) JWK to encrypt to."""

PrivateKeySource: TypeAlias = (
    rsa.RSAPrivateKey
    | Mapping[str, Any]
    | Sequence[Mapping[str, Any]]
    | Mapping[str, rsa.RSAPrivateKey]
)
"""Decryption keys: a bare key (used whatever the kid), a private JWK, several private JWKs (or a
JWK Set ``{"keys": [...]}``) for key rotation, or a ``kid → key`` mapping. JWKs are selected by
the JWE ``kid``."""


class PlaintextTooLargeError(DecryptionError):
    """The (decompressed) plaintext exceeds ``max_plaintext_size`` (zip-bomb protection)."""


class KeyNotFoundError(DecryptionError):
    """None of the given decryption keys has the ``kid`` named in the JWE header."""


class PlaintextLengthError(JoseError, ValueError):
    """A plaintext source produced a different length than announced, or too much for A256GCM."""


# --- small helpers ------------------------------------------------------------------------------


def _short(value: object, limit: int = 80) -> str:
    """A bounded, single-line repr for error messages (never used for secrets)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _oaep() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


_B64_ALPHABET: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_B64_VALUE: Final = {char: index for index, char in enumerate(_B64_ALPHABET)}
_B64URL_CHARS_RE: Final = re.compile(rb"[A-Za-z0-9_-]*")
_WHITESPACE_RE: Final = re.compile(rb"[ \t\r\n]*")


def _check_canonical_tail(last_char: int, length: int, what: str) -> None:
    """Refuse non-zero padding bits: every value must have exactly one encoding.

    Otherwise e.g. 16 different strings would decode to the same authentication tag, and tags are
    compared as strings in FIT-Connect.
    """
    rest = length % 4
    value = _B64_VALUE.get(last_char, 0)
    if (rest == 2 and value & 0x0F) or (rest == 3 and value & 0x03):
        raise MalformedJoseError(f"JWE {what} is not canonical base64url (non-zero padding bits)")


def _decode_small(data: bytes, what: str) -> bytes:
    """Strictly decode a short segment (header, encrypted key, IV, tag)."""
    raw = b64url_decode(data, what=f"JWE {what}")
    if data:
        _check_canonical_tail(data[-1], len(data), what)
    return raw


def _decode_aligned(buf: bytes | bytearray, start: int, end: int, what: str) -> bytes:
    """Decode ``buf[start:end]`` (a multiple of 4 base64url characters, no padding) fast.

    pybase64 with ``altchars=b"-_"`` and ``validate=True`` rejects everything outside
    ``[A-Za-z0-9-_+/=]`` in C; the three ``find`` calls (memchr) refuse the rest.
    """
    for char in (b"+", b"/", b"="):
        if buf.find(char, start, end) >= 0:
            raise MalformedJoseError(f"JWE {what} is not unpadded base64url")
    try:
        decoded: bytes = pybase64.b64decode(
            memoryview(buf)[start:end], altchars=b"-_", validate=True
        )
    except ValueError as exc:  # binascii.Error is a ValueError
        raise MalformedJoseError(f"JWE {what} is not unpadded base64url") from exc
    return decoded


def _decode_tail(tail: bytes, what: str) -> bytes:
    """Decode the last 0–3 characters of a streamed segment (the partial base64 quantum)."""
    if not tail:
        return b""
    if len(tail) == 1:
        raise MalformedJoseError(f"JWE {what} has an impossible base64url length")
    if not _B64URL_CHARS_RE.fullmatch(tail):
        raise MalformedJoseError(f"JWE {what} is not unpadded base64url")
    _check_canonical_tail(tail[-1], len(tail), what)
    padded = tail + b"=" * (-len(tail) % 4)
    decoded: bytes = pybase64.b64decode(padded, altchars=b"-_", validate=True)
    return decoded


def _decode_span(buf: bytes | bytearray, start: int, end: int, what: str) -> bytes:
    """Strictly decode a whole in-memory segment ``buf[start:end]`` (one-shot parsing)."""
    aligned_end = start + (end - start) // 4 * 4
    tail = _decode_tail(bytes(buf[aligned_end:end]), what)
    if aligned_end == start:
        return tail
    body = _decode_aligned(buf, start, aligned_end, what)
    return body + tail if tail else body


class _B64StreamDecoder:
    """Decodes a base64url segment arriving in pieces, cutting at multiples of 4 characters."""

    __slots__ = ("_carry", "_what")

    def __init__(self, what: str) -> None:
        self._carry = b""
        self._what = what

    def feed(self, buf: bytes | bytearray, start: int, end: int) -> list[bytes]:
        """Decode what can be decoded of ``buf[start:end]``; keep up to 3 characters back."""
        out: list[bytes] = []
        if self._carry:
            take = min(4 - len(self._carry), end - start)
            self._carry += bytes(buf[start : start + take])
            start += take
            if len(self._carry) < 4:
                return out
            out.append(_decode_aligned(self._carry, 0, 4, self._what))
            self._carry = b""
        aligned_end = start + (end - start) // 4 * 4
        if aligned_end > start:
            out.append(_decode_aligned(buf, start, aligned_end, self._what))
        if aligned_end < end:
            self._carry = bytes(buf[aligned_end:end])
        return out

    def final(self) -> bytes:
        """Decode the remaining partial quantum; checks length and canonical padding bits."""
        tail, self._carry = self._carry, b""
        return _decode_tail(tail, self._what)


# --- header rules -------------------------------------------------------------------------------


def check_header(header: Mapping[str, Any]) -> None:
    """Check a JWE protected header against the FIT-Connect rules; raise a specific error.

    ``alg`` must be RSA-OAEP-256 and ``enc`` A256GCM (:class:`UnsupportedAlgorithmError`);
    ``kid`` must be a non-empty string; ``crit``, ``jku``, ``jwk``, ``x5u`` and ``x5c`` are
    refused, ``zip`` may only be ``DEF`` and ``cty`` must be a string when present
    (:class:`InvalidHeaderError`).
    """
    if not isinstance(header, Mapping):
        raise MalformedJoseError("JWE protected header must be a JSON object")
    alg = header.get("alg")
    if alg != ALG_RSA_OAEP_256:
        raise UnsupportedAlgorithmError(f"JWE alg must be {ALG_RSA_OAEP_256}, got {_short(alg)}")
    enc = header.get("enc")
    if enc != ENC_A256GCM:
        raise UnsupportedAlgorithmError(f"JWE enc must be {ENC_A256GCM}, got {_short(enc)}")
    if "crit" in header:
        raise InvalidHeaderError("JWE header 'crit' is not supported; refusing the token")
    for member in _FORBIDDEN_HEADER_MEMBERS:
        # The recipient picks its own key by kid; keys named by the token are never trusted.
        if member in header:
            raise InvalidHeaderError(
                f"JWE header {member!r} is not allowed; keys come from the kid"
            )
    if "zip" in header and header["zip"] != ZIP_DEF:
        raise InvalidHeaderError(f"JWE zip must be absent or 'DEF', got {_short(header['zip'])}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidHeaderError(f"JWE header needs a non-empty string 'kid', got {_short(kid)}")
    cty = header.get("cty")
    if "cty" in header and (not isinstance(cty, str) or not cty):
        raise InvalidHeaderError(f"JWE header 'cty' must be a non-empty string, got {_short(cty)}")


def _header_json(kid: str, cty: str | None) -> bytes:
    """The protected header we send, compact JSON in the order alg, enc, kid, cty."""
    if not isinstance(kid, str) or not kid:
        raise InvalidHeaderError(f"a JWE needs a non-empty string kid, got {_short(kid)}")
    if cty is not None and (not isinstance(cty, str) or not cty):
        raise InvalidHeaderError(f"JWE cty must be a non-empty string, got {_short(cty)}")
    header: dict[str, str] = {"alg": ALG_RSA_OAEP_256, "enc": ENC_A256GCM, "kid": kid}
    if cty is not None:
        header["cty"] = cty
    return dumps_compact(header)


def compact_length(
    plaintext_length: int, *, kid: str, cty: str | None, key_bytes: int = 512
) -> int:
    """Exact length of the compact serialization :func:`encrypt` produces.

    An uploader can send ``Content-Length`` before encrypting. ``key_bytes`` is the RSA modulus
    size in bytes (512 for RSA-4096), which is the length of the wrapped key.
    """
    if plaintext_length < 0 or key_bytes <= 0:
        raise ValueError("plaintext_length must be >= 0 and key_bytes > 0")
    return _token_length(
        b64url_encoded_length(len(_header_json(kid, cty))), key_bytes, plaintext_length
    )


def _token_length(header_chars: int, key_bytes: int, plaintext_length: int) -> int:
    return (
        header_chars
        + 1
        + b64url_encoded_length(key_bytes)
        + 1
        + _IV_CHARS
        + 1
        + b64url_encoded_length(plaintext_length)
        + 1
        + _TAG_CHARS
    )


# --- keys ---------------------------------------------------------------------------------------


def _check_jwk_usage(jwk: Mapping[str, Any], operation: str) -> None:
    """``alg``/``key_ops``/``use`` of a JWK must allow RSA-OAEP-256 key wrapping/unwrapping."""
    kid = _short(jwk.get("kid"))
    alg = jwk.get("alg")
    if alg is not None and alg != ALG_RSA_OAEP_256:
        raise InvalidKeyError(f"key {kid} is for alg {_short(alg)}, not {ALG_RSA_OAEP_256}")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or operation not in ops):
        raise InvalidKeyError(f"key {kid} does not allow key_ops {operation!r}")
    use = jwk.get("use")
    if use is not None and use != "enc":
        raise InvalidKeyError(f"key {kid} has use {_short(use)}, not 'enc'")


def _check_size(key: rsa.RSAPublicKey | rsa.RSAPrivateKey, min_bits: int) -> None:
    if key.key_size < min_bits:
        raise InvalidKeyError(
            f"RSA key has {key.key_size} bits; FIT-Connect requires at least {min_bits}"
        )


def _public_key(key: PublicKeySource, min_bits: int) -> tuple[rsa.RSAPublicKey, str | None]:
    """The RSA public key to wrap the CEK for, and the JWK's kid (if a JWK was given)."""
    jwk_kid: str | None = None
    if isinstance(key, rsa.RSAPublicKey):
        public = key
    elif isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKeyError("encryption needs the recipient's public key, not a private key")
    elif isinstance(key, Mapping):
        _check_jwk_usage(key, "wrapKey")
        raw_kid = key.get("kid")
        if raw_kid is not None and (not isinstance(raw_kid, str) or not raw_kid):
            raise InvalidKeyError(f"JWK kid must be a non-empty string, got {_short(raw_kid)}")
        jwk_kid = raw_kid
        public = public_key_from_jwk(key)
    else:
        raise InvalidKeyError("a JWE encryption key must be an RSA public key or a JWK")
    _check_size(public, min_bits)
    return public, jwk_kid


def _private_key_from_jwk(jwk: Mapping[str, Any]) -> rsa.RSAPrivateKey:
    _check_jwk_usage(jwk, "unwrapKey")
    return private_key_from_jwk(jwk)


def _select_private_key(keys: PrivateKeySource, kid: str, min_bits: int) -> rsa.RSAPrivateKey:
    """Pick the decryption key for ``kid`` from any :data:`PrivateKeySource` form."""
    key: rsa.RSAPrivateKey
    untyped: object = keys
    if isinstance(untyped, str | bytes | bytearray):
        raise InvalidKeyError("decryption keys must be key objects or JWKs, not text")
    if isinstance(keys, rsa.RSAPrivateKey):
        key = keys  # a bare key has no kid: used as is
    elif isinstance(keys, Mapping) and isinstance(keys.get("kty"), str):
        own_kid = keys.get("kid")
        if own_kid is not None and own_kid != kid:
            raise KeyNotFoundError(f"no decryption key with kid {_short(kid)}")
        key = _private_key_from_jwk(keys)
    elif isinstance(keys, Mapping) and isinstance(keys.get("keys"), list):
        return _select_private_key(keys["keys"], kid, min_bits)  # a JWK Set
    elif isinstance(keys, Mapping):
        candidate = keys.get(kid)
        if candidate is None:
            raise KeyNotFoundError(f"no decryption key with kid {_short(kid)}")
        if isinstance(candidate, rsa.RSAPrivateKey):
            key = candidate
        elif isinstance(candidate, Mapping):
            key = _private_key_from_jwk(candidate)
        else:
            raise InvalidKeyError("a kid → key mapping must map to RSA private keys")
    elif isinstance(keys, Sequence):
        for item in keys:
            if not isinstance(item, Mapping):
                raise InvalidKeyError("a list of decryption keys must contain private JWKs")
            if item.get("kid") == kid:
                key = _private_key_from_jwk(item)
                break
        else:
            raise KeyNotFoundError(f"no decryption key with kid {_short(kid)}")
    else:
        raise InvalidKeyError(
            "decryption keys must be an RSA private key, a private JWK, a list of JWKs, "
            "a JWK Set or a kid → key mapping"
        )
    _check_size(key, min_bits)
    return key


def load_private_keys(
    jwks: Mapping[str, Any] | Sequence[Mapping[str, Any]], *, min_bits: int = MIN_RSA_BITS
) -> dict[str, rsa.RSAPrivateKey]:
    """Convert private JWKs (a list, a JWK Set or one JWK) to a ``kid → key`` mapping once.

    Converting a JWK checks the RSA key (OpenSSL primality checks, ~0.25 s for RSA-4096), so a
    subscriber decrypting many parts should convert its keys once and pass the mapping on.
    """
    if isinstance(jwks, Mapping) and isinstance(jwks.get("keys"), list):
        items: Sequence[Any] = jwks["keys"]
    elif isinstance(jwks, Mapping):
        items = [jwks]
    else:
        items = jwks
    result: dict[str, rsa.RSAPrivateKey] = {}
    for item in items:
        if not isinstance(item, Mapping):
            raise InvalidKeyError("a list of decryption keys must contain private JWKs")
        kid = item.get("kid")
        if not isinstance(kid, str) or not kid:
            raise InvalidKeyError("every decryption JWK needs a non-empty string kid")
        key = _private_key_from_jwk(item)
        _check_size(key, min_bits)
        result[kid] = key
    return result


def _unwrap_cek(key: rsa.RSAPrivateKey, encrypted_key: bytes) -> bytes:
    """RSA-OAEP-256 unwrap; on *any* failure a random CEK instead (RFC 7516 §11.5).

    The failure then only surfaces at the GCM tag check, with the same error as a tampered
    ciphertext, so the caller cannot tell (and an attacker cannot probe) which step failed.
    """
    fallback = os.urandom(CEK_LENGTH)
    try:
        cek = key.decrypt(encrypted_key, _oaep())
    except ValueError:
        return fallback
    return cek if len(cek) == CEK_LENGTH else fallback


# --- encryption building blocks (shared by one-shot and streaming) --------------------------------


@dataclass(frozen=True)
class _Encryption:
    """Everything of a JWE that precedes the ciphertext, plus the CEK to encrypt with."""

    cek: bytes = field(repr=False)
    iv: bytes
    protected: bytes  # ASCII of the b64url protected header = the AAD
    prefix: bytes  # "header.encrypted_key.iv." as ASCII bytes
    key_bytes: int  # length of the wrapped key

    def cipher(self) -> AEADEncryptionContext:
        """A fresh AES-256-GCM encryptor with the AAD already authenticated."""
        encryptor = Cipher(algorithms.AES(self.cek), modes.GCM(self.iv)).encryptor()
        encryptor.authenticate_additional_data(self.protected)
        return encryptor

    def token_length(self, plaintext_length: int) -> int:
        return len(self.prefix) + b64url_encoded_length(plaintext_length) + 1 + _TAG_CHARS


def _prepare(
    key: PublicKeySource,
    *,
    kid: str | None,
    cty: str | None,
    min_bits: int,
    cek: bytes | None = None,
    iv: bytes | None = None,
    encrypted_key: bytes | None = None,
) -> _Encryption:
    """Check the key, build the header, draw CEK and IV, wrap the CEK.

    ``cek``, ``iv`` and ``encrypted_key`` are private test hooks: with all three fixed the output
    is deterministic, which is how the tests prove one-shot and streaming output identical.
    """
    public, jwk_kid = _public_key(key, min_bits)
    if kid is None:
        kid = jwk_kid
    elif jwk_kid is not None and kid != jwk_kid:
        raise InvalidKeyError(f"kid {_short(kid)} does not match the JWK's kid {_short(jwk_kid)}")
    if kid is None:
        raise InvalidHeaderError("a JWE needs a kid: pass kid= or use a JWK that has a 'kid'")
    protected = b64url_encode_bytes(_header_json(kid, cty))
    cek = os.urandom(CEK_LENGTH) if cek is None else bytes(cek)
    iv = os.urandom(IV_LENGTH) if iv is None else bytes(iv)
    if len(cek) != CEK_LENGTH or len(iv) != IV_LENGTH:
        raise ValueError("test hook: the CEK must be 32 bytes and the IV 12 bytes")
    if encrypted_key is None:
        encrypted_key = public.encrypt(cek, _oaep())
    prefix = b".".join(
        (protected, b64url_encode_bytes(encrypted_key), b64url_encode_bytes(iv), b"")
    )
    return _Encryption(cek, iv, protected, prefix, len(encrypted_key))


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncryptedPart:
    """Result of :func:`encrypt`: the token and what the metadata/SETs need about it."""

    token: str
    authentication_tag: str  # the 5th segment, as FIT-Connect SETs carry it
    plaintext_sha512: str  # lowercase hex, for contentStructure hashes
    plaintext_length: int


@dataclass(frozen=True)
class DecryptedPart:
    """Result of :func:`decrypt`."""

    plaintext: bytes = field(repr=False)
    header: dict[str, Any]
    authentication_tag: str
    plaintext_sha512: str  # lowercase hex of the (decompressed) plaintext

    @property
    def kid(self) -> str:
        return str(self.header["kid"])

    @property
    def cty(self) -> str | None:
        cty = self.header.get("cty")
        return cty if isinstance(cty, str) else None


@dataclass(frozen=True)
class ParsedJwe:
    """A syntactically valid compact JWE with an acceptable header, not yet decrypted."""

    header: dict[str, Any]
    protected: str  # the b64url header segment exactly as received (its ASCII is the AAD)
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes = field(repr=False)
    tag: bytes

    @property
    def authentication_tag(self) -> str:
        return b64url_encode(self.tag)

    @property
    def kid(self) -> str:
        return str(self.header["kid"])

    @property
    def cty(self) -> str | None:
        cty = self.header.get("cty")
        return cty if isinstance(cty, str) else None

    @property
    def compressed(self) -> bool:
        return self.header.get("zip") == ZIP_DEF


@dataclass(frozen=True)
class JweSyntaxInfo:
    """What :meth:`JweSyntaxChecker.finish` learned about a syntactically valid JWE."""

    header: dict[str, Any]
    authentication_tag: str
    total_length: int  # bytes fed, including tolerated trailing whitespace
    ciphertext_length: int  # decoded bytes (= plaintext length unless zip is DEF)


# --- incremental syntax parser ------------------------------------------------------------------

_SEGMENT_NAMES: Final = ("protected header", "encrypted key", "initialization vector")
_SEGMENT_LIMITS: Final = (MAX_PROTECTED_HEADER_CHARS, _MAX_ENCRYPTED_KEY_CHARS, _IV_CHARS)


class _CompactParser:
    """Splits and checks a compact JWE that arrives in pieces, in constant memory.

    The three short segments and the tag are buffered (bounded); the ciphertext is handed on in
    pieces. Every check runs as soon as its data is complete, so a broken upload fails early.
    Subclasses hook into ``_on_header``, ``_on_iv``, ``_on_ciphertext``, ``_on_tag``.
    """

    def __init__(self) -> None:
        self._segment = 0  # index of the segment currently being read
        self._small = bytearray()  # the short segment being read
        self._ciphertext_decoder = _B64StreamDecoder("ciphertext")
        self._ciphertext_chars = 0
        self._trailing_whitespace = False
        self._total = 0
        self._error: BaseException | None = None
        self._finished = False
        self.header: dict[str, Any] = {}
        self.protected = b""
        self.encrypted_key = b""
        self.iv = b""
        self.tag = b""
        self.tag_b64 = ""

    # hooks -------------------------------------------------------------------------------------

    def _on_header(self) -> None:
        """The header is complete and passed :func:`check_header`."""

    def _on_iv(self) -> None:
        """Encrypted key and IV are complete (the ciphertext comes next)."""

    def _on_ciphertext(self, data: bytes) -> None:
        """A decoded piece of the ciphertext."""

    def _on_ciphertext_end(self) -> None:
        """The ciphertext is complete."""

    def _on_tag(self) -> None:
        """The tag is complete; the whole token was syntactically valid."""

    def _ciphertext_chars_in(self, buf: bytes | bytearray, start: int, end: int) -> None:
        for piece in self._ciphertext_decoder.feed(buf, start, end):
            self._on_ciphertext(piece)

    def _ciphertext_done(self) -> None:
        tail = self._ciphertext_decoder.final()
        if tail:
            self._on_ciphertext(tail)
        self._on_ciphertext_end()

    # driving -----------------------------------------------------------------------------------

    def _feed(self, buf: bytes | bytearray, start: int, end: int) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("the JWE parser has already finished")
        try:
            self._consume(buf, start, end)
        except BaseException as exc:
            self._error = exc  # a broken stream stays broken
            raise

    def _consume(self, buf: bytes | bytearray, pos: int, end: int) -> None:
        self._total += end - pos
        while pos < end:
            dot = buf.find(b".", pos, end)
            stop = end if dot < 0 else dot
            if self._segment == 3:
                if stop > pos:
                    self._ciphertext_chars += stop - pos
                    self._ciphertext_chars_in(buf, pos, stop)
                if dot < 0:
                    return
                self._ciphertext_done()
            elif self._segment == 4:
                if dot >= 0:
                    raise MalformedJoseError("JWE compact serialization has more than 5 segments")
                self._tag_chars_in(buf, pos, end)
                return
            else:
                self._small_chars_in(buf, pos, stop)
                if dot < 0:
                    return
                self._small_done()
            self._segment += 1
            pos = dot + 1

    def _small_chars_in(self, buf: bytes | bytearray, start: int, stop: int) -> None:
        name = _SEGMENT_NAMES[self._segment]
        if len(self._small) + (stop - start) > _SEGMENT_LIMITS[self._segment]:
            if self._segment == 2:
                raise MalformedJoseError(f"JWE initialization vector must be {IV_LENGTH} bytes")
            raise MalformedJoseError(f"JWE {name} is too long")
        if not _B64URL_CHARS_RE.fullmatch(buf, start, stop):
            raise MalformedJoseError(f"JWE {name} is not unpadded base64url")
        self._small += buf[start:stop]

    def _small_done(self) -> None:
        data = bytes(self._small)
        self._small.clear()
        if self._segment == 0:
            if not data:
                raise MalformedJoseError("JWE protected header segment is empty")
            raw = _decode_small(data, "protected header")
            try:
                header = loads_object(raw, what="JWE protected header")
            except FormatError as exc:
                raise MalformedJoseError(str(exc)) from exc
            check_header(header)
            self.header, self.protected = header, data
            self._on_header()
        elif self._segment == 1:
            if not data:
                raise MalformedJoseError(
                    "JWE encrypted key segment is empty (only RSA-OAEP-256 key wrapping is allowed)"
                )
            self.encrypted_key = _decode_small(data, "encrypted key")
        else:
            if len(data) != _IV_CHARS:
                raise MalformedJoseError(
                    f"JWE initialization vector must be {IV_LENGTH} bytes, "
                    f"got {b64url_decoded_length(len(data))}"
                )
            self.iv = _decode_small(data, "initialization vector")
            self._on_iv()

    def _tag_chars_in(self, buf: bytes | bytearray, start: int, end: int) -> None:
        # Only trailing whitespace (a newline from a file) may follow the tag.
        if self._trailing_whitespace:
            if not _WHITESPACE_RE.fullmatch(buf, start, end):
                raise MalformedJoseError("JWE has data after trailing whitespace")
            return
        room = _TAG_CHARS - len(self._small)
        head = bytes(buf[start : min(end, start + room + 1)])
        content = head
        for index, char in enumerate(head):
            if char in _TRAILING_WHITESPACE:
                content = head[:index]
                self._trailing_whitespace = True
                if not _WHITESPACE_RE.fullmatch(buf, start + index, end):
                    raise MalformedJoseError("JWE has data after trailing whitespace")
                break
        if len(content) > room:
            raise MalformedJoseError(f"JWE authentication tag must be {TAG_LENGTH} bytes")
        if not _B64URL_CHARS_RE.fullmatch(content):
            raise MalformedJoseError("JWE authentication tag is not unpadded base64url")
        self._small += content

    def _finish(self) -> None:
        if self._error is not None:
            raise self._error
        if self._finished:
            raise RuntimeError("the JWE parser has already finished")
        try:
            if self._segment < 4:
                raise MalformedJoseError(
                    f"JWE compact serialization needs 5 segments, got {self._segment + 1}"
                )
            data = bytes(self._small)
            if len(data) != _TAG_CHARS:
                raise MalformedJoseError(
                    f"JWE authentication tag must be {TAG_LENGTH} bytes, "
                    f"got {b64url_decoded_length(len(data))}"
                )
            self.tag = _decode_small(data, "authentication tag")
            self.tag_b64 = data.decode("ascii")
            self._on_tag()
            self._finished = True
        except BaseException as exc:
            self._error = exc
            raise


class JweSyntaxChecker(_CompactParser):
    """Checks the syntax of a compact JWE arriving in chunks (e.g. an upload), constant memory.

    Checks exactly what :func:`parse` checks — 5 segments, the base64url alphabet of every
    segment, the header (strict JSON object + :func:`check_header`), a non-empty encrypted key,
    a 12-byte IV, a 16-byte tag and a possible ciphertext length — and raises the same specific
    errors, each as soon as the offending data has arrived. Needs no key. Trailing whitespace
    after the tag is tolerated (as by :func:`parse`)::

        checker = JweSyntaxChecker()
        for chunk in body:
            checker.feed(chunk)
        info = checker.finish()
    """

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Check the next piece of the token; raises as soon as something is wrong."""
        data = chunk.tobytes() if isinstance(chunk, memoryview) else chunk
        self._feed(data, 0, len(data))

    def finish(self) -> JweSyntaxInfo:
        """End of input: check the remaining rules and return what was learned."""
        self._finish()
        return JweSyntaxInfo(
            header=self.header,
            authentication_tag=self.tag_b64,
            total_length=self._total,
            ciphertext_length=b64url_decoded_length(self._ciphertext_chars),
        )


class _WholeTokenParser(_CompactParser):
    """:func:`parse`: the same parser over one in-memory token, decoding the ciphertext once."""

    def __init__(self, token: bytes | bytearray) -> None:
        super().__init__()
        self._token = token
        self._span: tuple[int, int] | None = None
        self.ciphertext = b""

    def _ciphertext_chars_in(self, buf: bytes | bytearray, start: int, end: int) -> None:
        # Fed in one call, so the ciphertext is one contiguous span of the token.
        self._span = (start, end)

    def _ciphertext_done(self) -> None:
        if self._span is not None:
            self.ciphertext = _decode_span(self._token, *self._span, "ciphertext")

    def run(self) -> ParsedJwe:
        self._feed(self._token, 0, len(self._token))
        self._finish()
        return ParsedJwe(
            header=self.header,
            protected=self.protected.decode("ascii"),
            encrypted_key=self.encrypted_key,
            iv=self.iv,
            ciphertext=self.ciphertext,
            tag=self.tag,
        )


def _token_bytes(token: str | bytes | bytearray | memoryview) -> bytes | bytearray:
    if isinstance(token, str):
        try:
            return token.encode("ascii")
        except UnicodeEncodeError as exc:
            raise MalformedJoseError("JWE compact serialization must be ASCII") from exc
    if isinstance(token, memoryview):
        return token.tobytes()
    if isinstance(token, bytes | bytearray):
        return token
    raise MalformedJoseError("a JWE must be given as str or bytes")


def parse(token: str | bytes) -> ParsedJwe:
    """Split, decode and check a compact JWE without a key (servers use it on uploads).

    Raises :class:`MalformedJoseError` for broken syntax, :class:`UnsupportedAlgorithmError` /
    :class:`InvalidHeaderError` for unacceptable headers. Trailing whitespace is tolerated.
    """
    return _WholeTokenParser(_token_bytes(token)).run()


def authentication_tag(token: str | bytes) -> str:
    """The authentication tag (5th segment) of a compact JWE — cheap, the rest is not checked."""
    if isinstance(token, str):
        text = token.rstrip(" \t\r\n")  # no copy when there is nothing to strip
        dot = text.rfind(".")
        tag_part: str | bytes = text[dot + 1 :] if 0 <= dot == len(text) - _TAG_CHARS - 1 else ""
    elif isinstance(token, bytes | bytearray):
        data = token.rstrip(_TRAILING_WHITESPACE)
        dot = data.rfind(b".")
        tag_part = bytes(data[dot + 1 :]) if 0 <= dot == len(data) - _TAG_CHARS - 1 else b""
    else:
        raise MalformedJoseError("a JWE must be given as str or bytes")
    if dot < 0:
        raise MalformedJoseError("JWE compact serialization needs 5 segments, got 1")
    if not tag_part:
        raise MalformedJoseError(f"JWE authentication tag must be {TAG_LENGTH} bytes")
    try:
        raw = tag_part.encode("ascii") if isinstance(tag_part, str) else tag_part
    except UnicodeEncodeError as exc:
        raise MalformedJoseError("JWE authentication tag is not unpadded base64url") from exc
    _decode_small(raw, "authentication tag")
    return raw.decode("ascii")


# --- one-shot crypto ----------------------------------------------------------------------------


def encrypt(
    plaintext: bytes,
    key: PublicKeySource,
    *,
    kid: str | None = None,
    cty: str | None = None,
    min_bits: int = MIN_RSA_BITS,
    _cek: bytes | None = None,
    _iv: bytes | None = None,
    _encrypted_key: bytes | None = None,
) -> EncryptedPart:
    """Encrypt ``plaintext`` for ``key`` (RSA public key or public JWK) as a compact JWE.

    ``kid`` defaults to the JWK's ``kid`` (and must match it when both are given); ``cty`` is
    the MIME type of the plaintext. A JWK must allow ``RSA-OAEP-256`` / ``wrapKey`` when it says
    anything about it, and the key must have at least ``min_bits`` bits.
    """
    prepared = _prepare(
        key, kid=kid, cty=cty, min_bits=min_bits, cek=_cek, iv=_iv, encrypted_key=_encrypted_key
    )
    encryptor = prepared.cipher()
    ciphertext = encryptor.update(plaintext)
    encryptor.finalize()
    tag_b64 = b64url_encode(encryptor.tag)
    token = b"".join(
        (prepared.prefix, b64url_encode_bytes(ciphertext), b".", tag_b64.encode("ascii"))
    )
    return EncryptedPart(
        token=token.decode("ascii"),
        authentication_tag=tag_b64,
        plaintext_sha512=hashlib.sha512(plaintext).hexdigest(),
        plaintext_length=len(plaintext),
    )


def _inflate_bounded(data: bytes, limit: int) -> bytes:
    """Raw DEFLATE (RFC 1951) decompression that stops at ``limit`` bytes of output."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)  # max_length 0 would mean "unlimited"
    except zlib.error as exc:
        raise DecryptionError("JWE content (zip DEF) is not valid raw DEFLATE data") from exc
    if len(out) > limit:
        raise PlaintextTooLargeError(f"decompressed JWE content exceeds the limit of {limit} bytes")
    if not inflater.eof or inflater.unused_data:
        raise DecryptionError("JWE content (zip DEF) is not valid raw DEFLATE data")
    return out


def decrypt(
    token: str | bytes,
    keys: PrivateKeySource,
    *,
    max_plaintext_size: int = DEFAULT_MAX_PLAINTEXT_SIZE,
    min_bits: int = MIN_RSA_BITS,
) -> DecryptedPart:
    """Parse, check and decrypt a compact JWE in memory.

    The key is selected by the JWE ``kid`` from ``keys`` (see :data:`PrivateKeySource`). Any
    cryptographic failure raises :class:`DecryptionError` with one and the same message;
    ``zip: DEF`` content is inflated after the tag verified, at most ``max_plaintext_size``
    bytes (:class:`PlaintextTooLargeError` beyond). For large parts use
    :func:`decrypt_stream` / :func:`decrypt_to_path`.
    """
    parsed = parse(token)
    key = _select_private_key(keys, parsed.kid, min_bits)
    if not parsed.compressed and len(parsed.ciphertext) > max_plaintext_size:
        raise PlaintextTooLargeError(
            f"JWE plaintext exceeds the limit of {max_plaintext_size} bytes"
        )
    cek = _unwrap_cek(key, parsed.encrypted_key)
    decryptor = Cipher(algorithms.AES(cek), modes.GCM(parsed.iv, parsed.tag)).decryptor()
    decryptor.authenticate_additional_data(parsed.protected.encode("ascii"))
    plaintext = decryptor.update(parsed.ciphertext)
    try:
        decryptor.finalize()
    except InvalidTag:
        raise DecryptionError(_DECRYPTION_FAILED) from None
    if parsed.compressed:
        plaintext = _inflate_bounded(plaintext, max_plaintext_size)
    return DecryptedPart(
        plaintext=plaintext,
        header=parsed.header,
        authentication_tag=parsed.authentication_tag,
        plaintext_sha512=hashlib.sha512(plaintext).hexdigest(),
    )


_STREAM_NAMES: Final = frozenset(
    {
        "EncryptingIterator",
        "StreamDecryptResult",
        "StreamResult",
        "decrypt_stream",
        "decrypt_to_path",
        "encrypt_stream",
        "iter_encrypt",
    }
)


def __getattr__(name: str) -> Any:
    """Lazy re-export of the streaming API from :mod:`.jwe_stream` (which imports this module)."""
    if name in _STREAM_NAMES:
        from fitconnect_kit.protocol.jose import jwe_stream

        return getattr(jwe_stream, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
