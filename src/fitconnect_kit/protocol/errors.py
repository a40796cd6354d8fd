"""Exception hierarchy of fitconnect-kit.

Every error raised on purpose by the kit derives from :class:`FitConnectError`. Messages are
one sentence that names the offending value or field and, where possible, what to do instead.
Messages never contain secrets, tokens, keys or plaintext.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class FitConnectError(Exception):
    """Base class of all errors raised on purpose by fitconnect-kit."""


class ProtocolError(FitConnectError):
    """A FIT-Connect protocol rule is violated (pure check, no I/O involved)."""


class FormatError(ProtocolError, ValueError):
    """A value does not have the format FIT-Connect requires (ids, keys, URNs, regions)."""

    def __init__(self, message: str, *, field: str | None = None, value: object = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


# --- JOSE -------------------------------------------------------------------------------------


class JoseError(ProtocolError):
    """Base class for JWE/JWS/JWK problems."""


class MalformedJoseError(JoseError):
    """A compact serialization or JOSE header is syntactically broken."""


class UnsupportedAlgorithmError(JoseError):
    """A header names an algorithm FIT-Connect does not allow (only RSA-OAEP-256/A256GCM/PS512)."""


class InvalidHeaderError(JoseError):
    """A JOSE header has a missing, forbidden or wrong parameter (kid, typ, crit, cty, zip, ...)."""


class DecryptionError(JoseError):
    """A JWE could not be decrypted (wrong key, tampered ciphertext or tag)."""


class SignatureError(JoseError):
    """A JWS signature does not verify with the given key."""


class InvalidKeyError(JoseError):
    """A JWK cannot be used at all (wrong type, broken parameters, missing private part)."""


# --- keys and certificates ----------------------------------------------------------------------


class KeyRuleError(ProtocolError):
    """A destination JWK violates the FIT-Connect key rules (size, alg, key_ops, kid, x5c)."""


class CertificateError(KeyRuleError):
    """The x5c certificate chain of a JWK is not acceptable under the trust policy."""


# --- events / SETs ------------------------------------------------------------------------------


class SetError(ProtocolError):
    """A Security Event Token violates the SET rules (header, claims, event catalog)."""


# --- metadata -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    """One rule violation found by a validator, located by a JSON path like ``$.a.b[0]``."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class MetadataError(ProtocolError):
    """Submission metadata is invalid; :attr:`violations` lists every violation found."""

    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = tuple(violations)
        first = self.violations[0] if self.violations else Violation("$", "invalid")
        more = len(self.violations) - 1
        suffix = f" (and {more} more)" if more > 0 else ""
        super().__init__(f"invalid metadata: {first}{suffix}")


# --- callbacks ----------------------------------------------------------------------------------


class CallbackVerificationError(ProtocolError):
    """A callback request failed HMAC, timestamp-window or format checks; it must be ignored."""
