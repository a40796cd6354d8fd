"""FIT-Connect key rules for destination JWKs and validation of their ``x5c`` certificate chains.

A destination (Zustellpunkt) publishes two public RSA keys as JWKs (reference §4.4, routing/
submission API JWK schema):

* the **encryption** key senders encrypt to — ``alg`` ``RSA-OAEP-256``, ``key_ops`` ``["wrapKey"]``;
* the **signature** key that verifies the receiver's Security Event Tokens — ``alg`` ``PS512``,
  ``key_ops`` ``["verify"]``.

Both are RSA with a modulus of at least 4096 bits (``n`` ≥ 683 base64url characters), ``e`` =
``AQAB``, a ``kid`` of 8–64 characters and an ``x5c`` chain (leaf first, up to the root).

:func:`key_rule_violations` lists every rule a JWK breaks; :func:`check_key_rules` raises on them.
:func:`validate_x5c` checks the certificate chain under a :class:`TrustPolicy` — self-signed chains
are acceptable in the FIT-Connect *test* environment only; on stage and production the chain must
end in a configured trust anchor (the Verwaltungs-PKI). :func:`validate_destination_key` does all of
it and returns the key to encrypt to / verify with.

What the chain validation does **not** do (offline, on purpose):

* **Revocation** (OCSP/CRL) is *not* checked: that needs network access to the PKI's responders. A
  :class:`TrustPolicy` takes an optional ``revocation_checker`` that is called with the validated
  path; production deployments should plug an OCSP/CRL check in there.
* Path *building*: ``x5c`` must already be in order (leaf first, each certificate issued by the
  next); certificates are not reordered or fetched (no AIA chasing).
* Name constraints and policy constraints are not evaluated; a certificate that marks such an
  extension (or any other extension we do not process) critical is refused rather than accepted
  unchecked.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.x509.oid import ExtensionOID, NameOID

from fitconnect_kit.protocol.b64 import b64url_decode, b64url_encode
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import (
    CertificateError,
    InvalidKeyError,
    KeyRuleError,
    MalformedJoseError,
    Violation,
)
from fitconnect_kit.protocol.jose.jwk import PRIVATE_MEMBERS, public_key_from_jwk

__all__ = [
    "ENCRYPTION_ALG",
    "MAX_KID_LENGTH",
    "MIN_KID_LENGTH",
    "MIN_N_LENGTH",
    "MIN_RSA_BITS",
    "REQUIRED_E",
    "SIGNATURE_ALG",
    "KeyPurpose",
    "KeyRuleViolationError",
    "RevocationChecker",
    "TrustAnchorError",
    "TrustPolicy",
    "ValidatedChain",
    "check_key_rules",
    "infer_purpose",
    "key_rule_violations",
    "validate_destination_key",
    "validate_x5c",
    "validate_x5c_chain",
]


class KeyPurpose(StrEnum):
    """What a destination key is for."""

    ENCRYPTION = "encryption"  # senders encrypt (wrap the CEK) to it: RSA-OAEP-256, wrapKey
    SIGNATURE = "signature"  # verifies the receiver's SETs: PS512, verify


ENCRYPTION_ALG = "RSA-OAEP-256"
SIGNATURE_ALG = "PS512"
MIN_RSA_BITS = 4096
MIN_N_LENGTH = 683  # base64url characters of a 4096-bit modulus (the schema's minLength)
REQUIRED_E = "AQAB"  # 65537
MIN_KID_LENGTH = 8
MAX_KID_LENGTH = 64


@dataclass(frozen=True)
class _PurposeRules:
    alg: str
    key_op: str  # the one operation a public key of this purpose allows
    private_key_op: str  # its private counterpart (must never appear on a public key)
    use: str
    key_usage_text: str


_RULES: dict[KeyPurpose, _PurposeRules] = {
    KeyPurpose.ENCRYPTION: _PurposeRules(
        alg=ENCRYPTION_ALG,
        key_op="wrapKey",
        private_key_op="unwrapKey",
        use="enc",
        key_usage_text="keyEncipherment",
    ),
    KeyPurpose.SIGNATURE: _PurposeRules(
        alg=SIGNATURE_ALG,
        key_op="verify",
        private_key_op="sign",
        use="sig",
        key_usage_text="digitalSignature or contentCommitment",
    ),
}

# Operations that only make sense for a private key (RFC 7517 §4.3).
_PRIVATE_KEY_OPS = frozenset({"sign", "decrypt", "unwrapKey", "deriveKey", "deriveBits"})


def _short(value: object, limit: int = 40) -> str:
    """``repr`` of a (public, untrusted) value, cut to ``limit`` characters for messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _a_key(purpose: KeyPurpose) -> str:
    return "an encryption key" if purpose is KeyPurpose.ENCRYPTION else "a signature key"


def _kid_for_message(jwk: Mapping[str, Any]) -> str:
    kid = jwk.get("kid") if isinstance(jwk, Mapping) else None
    if isinstance(kid, str) and 0 < len(kid) <= MAX_KID_LENGTH and kid.isprintable():
        return f"JWK {kid!r}"
    return "JWK"


# --- key rules ------------------------------------------------------------------------------------


def infer_purpose(jwk: Mapping[str, Any]) -> KeyPurpose | None:
    """The purpose a JWK declares: from ``alg``, else from ``key_ops``, else from ``use``."""
    untrusted: object = jwk  # parsed JSON may be anything despite the annotation
    if not isinstance(untrusted, Mapping):
        return None
    alg = jwk.get("alg")
    for purpose, rules in _RULES.items():
        if alg == rules.alg:
            return purpose
    ops = jwk.get("key_ops")
    if isinstance(ops, list):
        found = {p for p, r in _RULES.items() if r.key_op in ops or r.private_key_op in ops}
        if len(found) == 1:
            return found.pop()
    use = jwk.get("use")
    for purpose, rules in _RULES.items():
        if use == rules.use:
            return purpose
    return None


def _modulus_violations(n: object) -> list[Violation]:
    if n is None:
        return [Violation("$.n", "missing; the RSA modulus is required")]
    if not isinstance(n, str) or not n:
        return [Violation("$.n", "must be a non-empty base64url string")]
    try:
        raw = b64url_decode(n, what="n")
    except MalformedJoseError:
        return [Violation("$.n", "is not unpadded base64url")]
    modulus = int.from_bytes(raw, "big")
    bits = modulus.bit_length()
    if len(n) < MIN_N_LENGTH or bits < MIN_RSA_BITS:
        return [
            Violation(
                "$.n",
                f"modulus has {bits} bits ({len(n)} base64url characters); at least "
                f"{MIN_RSA_BITS} bits ({MIN_N_LENGTH} characters) are required",
            )
        ]
    if modulus % 2 == 0:  # a product of two odd primes is odd
        return [Violation("$.n", "is not a valid RSA modulus (it is even)")]
    return []


def _key_ops_violations(ops: object, purpose: KeyPurpose | None) -> list[Violation]:
    if purpose is None:
        expected = " or ".join(f"[{r.key_op!r}]" for r in _RULES.values())
        purpose_text = "a destination key"
    else:
        expected = f"[{_RULES[purpose].key_op!r}]"
        purpose_text = _a_key(purpose)
    if ops is None:
        return [Violation("$.key_ops", f"missing; must be {expected} for {purpose_text}")]
    if not isinstance(ops, list) or not all(isinstance(op, str) for op in ops):
        return [Violation("$.key_ops", "must be an array of strings")]
    if not ops:
        return [Violation("$.key_ops", f"is empty; must be {expected} for {purpose_text}")]
    violations: list[Violation] = []
    allowed = {r.key_op for r in _RULES.values()} if purpose is None else {_RULES[purpose].key_op}
    seen: set[str] = set()
    for index, op in enumerate(ops):
        path = f"$.key_ops[{index}]"
        if op in seen:
            violations.append(Violation(path, f"duplicate operation {op!r} (RFC 7517 §4.3)"))
            continue
        seen.add(op)
        if op in _PRIVATE_KEY_OPS:
            violations.append(
                Violation(
                    path,
                    f"{op!r} is a private-key operation; a public destination key must not "
                    "declare it",
                )
            )
        elif op not in allowed:
            violations.append(
                Violation(path, f"{_short(op)} does not belong to {purpose_text} ({expected})")
            )
    if purpose is not None and _RULES[purpose].key_op not in ops:
        violations.append(
            Violation("$.key_ops", f"must contain {_RULES[purpose].key_op!r} for {purpose_text}")
        )
    return violations


def _decode_x5c_entry(value: object) -> x509.Certificate:
    """One ``x5c`` entry (standard padded base64 of DER) as a certificate; ``ValueError`` if bad."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    if len(value) % 4 != 0:
        raise ValueError("is not standard base64 with padding (RFC 7517 §4.7)")
    try:
        der = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not standard base64 with padding (RFC 7517 §4.7)") from exc
    try:
        cert = x509.load_der_x509_certificate(der)
        cert.extensions  # noqa: B018 -- parse extensions now so broken ones fail here
    except ValueError as exc:
        raise ValueError("is not a DER-encoded X.509 certificate") from exc
    return cert


def _x5c_violations(x5c: object, *, require_x5c: bool) -> list[Violation]:
    if x5c is None:
        if require_x5c:
            return [Violation("$.x5c", "missing; the certificate chain (leaf first) is required")]
        return []
    if not isinstance(x5c, list) or not x5c:
        return [Violation("$.x5c", "must be a non-empty array of base64 DER certificates")]
    violations: list[Violation] = []
    for index, entry in enumerate(x5c):
        try:
            _decode_x5c_entry(entry)
        except ValueError as exc:
            violations.append(Violation(f"$.x5c[{index}]", str(exc)))
    return violations


def key_rule_violations(
    jwk: Mapping[str, Any], purpose: KeyPurpose | None = None, *, require_x5c: bool = True
) -> list[Violation]:
    """Every FIT-Connect key rule the public destination JWK ``jwk`` violates (empty = fine).

    ``purpose`` ``None`` infers it from ``alg`` (then ``key_ops``, then ``use``); when nothing
    declares a purpose, that is a violation and only the purpose-independent rules are checked.
    Each violation carries the JSON path of the offending member (``$.key_ops[1]``, ``$.n``, …).
    This checks the syntax of ``x5c`` only; the chain itself is checked by :func:`validate_x5c`.
    """
    untrusted: object = jwk  # parsed JSON may be anything despite the annotation
    if not isinstance(untrusted, Mapping):
        return [Violation("$", "a JWK must be a JSON object")]
    violations: list[Violation] = []
    if purpose is None:
        purpose = infer_purpose(jwk)

    kty = jwk.get("kty")
    if kty is None:
        violations.append(Violation("$.kty", "missing; FIT-Connect keys must have kty 'RSA'"))
    elif kty != "RSA":
        violations.append(
            Violation("$.kty", f"must be 'RSA' (only RSA keys are allowed), got {_short(kty)}")
        )

    violations.extend(_modulus_violations(jwk.get("n")))

    e = jwk.get("e")
    if e is None:
        violations.append(Violation("$.e", f"missing; must be {REQUIRED_E!r} (65537)"))
    elif e != REQUIRED_E:
        violations.append(Violation("$.e", f"must be {REQUIRED_E!r} (65537), got {_short(e)}"))

    kid = jwk.get("kid")
    if kid is None:
        violations.append(Violation("$.kid", "missing; a kid of 8–64 characters is required"))
    elif not isinstance(kid, str):
        violations.append(Violation("$.kid", "must be a string"))
    elif not MIN_KID_LENGTH <= len(kid) <= MAX_KID_LENGTH:
        violations.append(
            Violation(
                "$.kid",
                f"has {len(kid)} characters; {MIN_KID_LENGTH}–{MAX_KID_LENGTH} are required",
            )
        )

    alg = jwk.get("alg")
    if purpose is None:
        expected_alg = f"{ENCRYPTION_ALG!r} (encryption) or {SIGNATURE_ALG!r} (signature)"
        if alg is None:
            violations.append(Violation("$.alg", f"missing; must be {expected_alg}"))
        else:
            violations.append(Violation("$.alg", f"must be {expected_alg}, got {_short(alg)}"))
    else:
        rules = _RULES[purpose]
        if alg is None:
            violations.append(
                Violation("$.alg", f"missing; must be {rules.alg!r} for {_a_key(purpose)}")
            )
        elif alg != rules.alg:
            violations.append(
                Violation(
                    "$.alg",
                    f"must be {rules.alg!r} for {_a_key(purpose)}, got {_short(alg)}",
                )
            )

    violations.extend(_key_ops_violations(jwk.get("key_ops"), purpose))

    if "use" in jwk:
        use = jwk["use"]
        allowed_uses = (
            {r.use for r in _RULES.values()} if purpose is None else {_RULES[purpose].use}
        )
        if not isinstance(use, str) or use not in allowed_uses:
            wanted = " or ".join(repr(u) for u in sorted(allowed_uses))
            what = "" if purpose is None else f" for {_a_key(purpose)}"
            violations.append(Violation("$.use", f"must be {wanted}{what}, got {_short(use)}"))

    private_members = [member for member in PRIVATE_MEMBERS if member in jwk]
    if private_members:
        violations.append(
            Violation(
                f"$.{private_members[0]}",
                f"private key member(s) {', '.join(private_members)} present; a public "
                "destination key must not contain private key material (publishing it would "
                "leak the private key)",
            )
        )

    violations.extend(_x5c_violations(jwk.get("x5c"), require_x5c=require_x5c))
    return violations


class KeyRuleViolationError(KeyRuleError):
    """A JWK violates FIT-Connect key rules; :attr:`violations` lists all of them."""

    def __init__(self, violations: Sequence[Violation], *, subject: str = "JWK") -> None:
        self.violations = tuple(violations)
        count = len(self.violations)
        listing = "; ".join(str(v) for v in self.violations)
        plural = "rule" if count == 1 else "rules"
        super().__init__(f"{subject} violates {count} FIT-Connect key {plural}: {listing}")


def check_key_rules(
    jwk: Mapping[str, Any], purpose: KeyPurpose | None = None, *, require_x5c: bool = True
) -> KeyPurpose:
    """Return the key's purpose, or raise :class:`KeyRuleViolationError` naming every violation."""
    violations = key_rule_violations(jwk, purpose, require_x5c=require_x5c)
    if violations:
        raise KeyRuleViolationError(violations, subject=_kid_for_message(jwk))
    resolved = purpose or infer_purpose(jwk)
    assert resolved is not None  # no violations means alg named the purpose
    return resolved


# --- trust policy ---------------------------------------------------------------------------------

RevocationChecker = Callable[[tuple[x509.Certificate, ...], datetime], None]
"""Called with the validated path (leaf first, ending in the trust anchor or self-signed root) and
the validation time; raises :class:`CertificateError` when a certificate is revoked or its status
cannot be established."""

PemSource = bytes | str | os.PathLike[str]


@dataclass(frozen=True)
class TrustPolicy:
    """Which ``x5c`` chains are acceptable.

    * ``trust_anchors`` — root (or intermediate) certificates a chain may end in / be issued by;
      on stage and production the Verwaltungs-PKI roots.
    * ``allow_self_signed`` — accept a chain ending in *any* self-signed certificate. Only for the
      FIT-Connect test environment, where self-generated certificates are allowed.
    * ``require_x5c`` — a JWK without ``x5c`` violates the key rules (the schema requires it).
    * ``revocation_checker`` — optional OCSP/CRL hook (see :data:`RevocationChecker`); without it
      revocation is **not** checked.
    """

    trust_anchors: tuple[x509.Certificate, ...] = ()
    allow_self_signed: bool = False
    require_x5c: bool = True
    name: str = "custom"
    revocation_checker: RevocationChecker | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        anchors = tuple(self.trust_anchors)
        if not all(isinstance(a, x509.Certificate) for a in anchors):
            raise TypeError("trust_anchors must be cryptography x509.Certificate objects")
        object.__setattr__(self, "trust_anchors", anchors)

    @classmethod
    def test_environment(cls, trust_anchors: Iterable[x509.Certificate] = ()) -> TrustPolicy:
        """FIT-Connect test environment: self-signed chains are accepted (anchors optional)."""
        return cls(trust_anchors=tuple(trust_anchors), allow_self_signed=True, name="test")

    @classmethod
    def strict(
        cls,
        trust_anchors: Iterable[x509.Certificate],
        *,
        revocation_checker: RevocationChecker | None = None,
    ) -> TrustPolicy:
        """Stage/production: every chain must end in one of ``trust_anchors``."""
        return cls(
            trust_anchors=tuple(trust_anchors),
            allow_self_signed=False,
            name="strict",
            revocation_checker=revocation_checker,
        )

    @classmethod
    def from_pem(
        cls, pem_bytes_or_paths: PemSource | Iterable[PemSource], *, allow_self_signed: bool = False
    ) -> TrustPolicy:
        """A policy whose anchors are loaded from PEM data or PEM files.

        Accepts PEM bytes, a path (``str`` or ``Path``; a ``str`` starting with ``-----BEGIN`` is
        taken as PEM text), or an iterable of those. Each source may hold several certificates.
        Raises ``FileNotFoundError`` for a missing file and :class:`TrustAnchorError` (a
        :class:`CertificateError` and ``ValueError``) for a source without a valid certificate.
        """
        if isinstance(pem_bytes_or_paths, bytes | str | os.PathLike):
            sources: list[PemSource] = [pem_bytes_or_paths]
        else:
            sources = list(pem_bytes_or_paths)
        anchors: list[x509.Certificate] = []
        for source in sources:
            anchors.extend(_load_pem_certificates(source))
        return cls(
            trust_anchors=tuple(anchors),
            allow_self_signed=allow_self_signed,
            name="test" if allow_self_signed else "strict",
        )


class TrustAnchorError(CertificateError, ValueError):
    """Trust anchor material (PEM) is unusable; also a ``ValueError`` for configuration code."""


def _load_pem_certificates(source: PemSource) -> list[x509.Certificate]:
    if isinstance(source, bytes):
        data, what = source, "PEM data"
    elif isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        data, what = source.encode("ascii", "replace"), "PEM text"
    else:
        path = Path(source)
        what = f"trust anchor file {str(path)!r}"
        if not path.exists():
            raise FileNotFoundError(f"{what} not found")
        if not path.is_file():
            raise TrustAnchorError(f"{what} is not a regular file")
        data = path.read_bytes()
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TrustAnchorError(f"{what} contains no PEM certificate")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise TrustAnchorError(f"{what} contains an invalid PEM certificate") from exc


# --- x5c chain validation -------------------------------------------------------------------------

# Extensions this validator processes or may safely ignore when marked critical. Anything else
# critical (nameConstraints, policyConstraints, unknown OIDs, …) makes the certificate unacceptable.
_UNDERSTOOD_CRITICAL = frozenset(
    {
        ExtensionOID.BASIC_CONSTRAINTS,
        ExtensionOID.KEY_USAGE,
        ExtensionOID.EXTENDED_KEY_USAGE,
        ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
        ExtensionOID.ISSUER_ALTERNATIVE_NAME,
        ExtensionOID.SUBJECT_KEY_IDENTIFIER,
        ExtensionOID.AUTHORITY_KEY_IDENTIFIER,
        # Policies: we validate with initial policy set anyPolicy and no explicit policy required,
        # so the mere presence of certificatePolicies cannot change the result.
        ExtensionOID.CERTIFICATE_POLICIES,
    }
)
_WEAK_HASHES = (hashes.SHA1, hashes.MD5)

_ExtT = TypeVar("_ExtT", bound=x509.ExtensionType)


@dataclass(frozen=True)
class ValidatedChain:
    """Result of a successful :func:`validate_x5c_chain`."""

    certificates: tuple[x509.Certificate, ...]  # the x5c certificates, leaf first
    trust_anchor: x509.Certificate | None  # the configured anchor the chain ends in, if any
    self_signed: bool  # accepted because it ends in a self-signed certificate (test only)

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def path(self) -> tuple[x509.Certificate, ...]:
        """Leaf to root: the x5c certificates plus an external trust anchor."""
        anchor = self.trust_anchor
        if anchor is None or any(_same_certificate(anchor, c) for c in self.certificates):
            return self.certificates
        return (*self.certificates, anchor)

    @property
    def not_after(self) -> datetime:
        """When the first certificate of the path expires (the key must be renewed by then)."""
        return min(c.not_valid_after_utc for c in self.path)


def _name(name: x509.Name) -> str:
    """A short, readable form of a certificate name for messages: its CN, else the full name."""
    common_names = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        if common_names:
            text = "CN=" + "+".join(str(attribute.value) for attribute in common_names)
        else:
            text = name.rfc4514_string()
    except ValueError:  # pragma: no cover - exotic attribute encodings
        text = ""
    text = " ".join(text.split()) or "empty name"
    return text if len(text) <= 80 else text[:79] + "…"


def _label(index: int, cert: x509.Certificate) -> str:
    return f"x5c[{index}] ({_name(cert.subject)})"


def _ext(cert: x509.Certificate, cls: type[_ExtT]) -> _ExtT | None:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _same_certificate(a: x509.Certificate, b: x509.Certificate) -> bool:
    """Same trust anchor: same subject and same public key (RFC 5280 §6.1.1 (d))."""
    return a.subject == b.subject and _spki(a) == _spki(b)


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject == cert.issuer


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_x5c(jwk: Mapping[str, Any]) -> list[x509.Certificate]:
    x5c = jwk.get("x5c") if isinstance(jwk, Mapping) else None
    if x5c is None:
        raise CertificateError("x5c is missing; the certificate chain (leaf first) is required")
    if not isinstance(x5c, list) or not x5c:
        raise CertificateError("x5c must be a non-empty array of base64 DER certificates")
    certs: list[x509.Certificate] = []
    for index, entry in enumerate(x5c):
        try:
            certs.append(_decode_x5c_entry(entry))
        except ValueError as exc:
            raise CertificateError(f"x5c[{index}] {exc}") from None
    return certs


def _check_leaf(jwk: Mapping[str, Any], leaf: x509.Certificate, purpose: KeyPurpose) -> None:
    label = _label(0, leaf)
    try:
        jwk_key = public_key_from_jwk(jwk)
    except InvalidKeyError as exc:
        raise CertificateError(f"cannot compare {label} with the JWK: {exc}") from None
    cert_key = leaf.public_key()
    if not isinstance(cert_key, RSAPublicKey):
        raise CertificateError(f"{label} certifies a non-RSA key, but the JWK is an RSA key")
    if cert_key.public_numbers() != jwk_key.public_numbers():
        raise CertificateError(f"{label} certifies a different public key than the JWK's n/e")
    der = leaf.public_bytes(serialization.Encoding.DER)
    for member, digest in (("x5t#S256", hashlib.sha256), ("x5t", hashlib.sha1)):
        if member in jwk and jwk[member] != b64url_encode(digest(der).digest()):
            raise CertificateError(f"JWK {member} does not match the thumbprint of {label}")
    usage = _ext(leaf, x509.KeyUsage)
    if usage is not None:
        if purpose is KeyPurpose.ENCRYPTION:
            ok = usage.key_encipherment
        else:
            ok = usage.digital_signature or usage.content_commitment
        if not ok:
            raise CertificateError(
                f"{label} keyUsage does not allow {_RULES[purpose].key_usage_text}, "
                f"which {_a_key(purpose)} needs"
            )


def _check_time(index: int, cert: x509.Certificate, now: datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{_label(index, cert)} is not valid before {_iso(cert.not_valid_before_utc)}"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{_label(index, cert)} expired on {_iso(cert.not_valid_after_utc)}")


def _check_critical_extensions(index: int, cert: x509.Certificate) -> None:
    for extension in cert.extensions:
        if extension.critical and extension.oid not in _UNDERSTOOD_CRITICAL:
            name = getattr(extension.oid, "_name", "Unknown OID")
            if name == "Unknown OID":
                name = extension.oid.dotted_string
            raise CertificateError(
                f"{_label(index, cert)} has a critical {name} extension this validator does "
                "not evaluate; refusing the certificate"
            )


def _check_signed_by(
    child: x509.Certificate, child_label: str, issuer: x509.Certificate, issuer_label: str
) -> None:
    """``child`` is directly issued by ``issuer`` (name chaining + signature)."""
    if child.issuer != issuer.subject:
        raise CertificateError(
            f"{child_label} names issuer {_name(child.issuer)!r}, not {issuer_label}"
        )
    try:
        weak = isinstance(child.signature_hash_algorithm, _WEAK_HASHES)
    except UnsupportedAlgorithm:
        weak = False
    if weak:
        raise CertificateError(f"{child_label} is signed with a weak hash (SHA-1/MD5)")
    try:
        child.verify_directly_issued_by(issuer)
    except InvalidSignature:
        raise CertificateError(
            f"{child_label} signature does not verify with the key of {issuer_label}"
        ) from None
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise CertificateError(
            f"{child_label} signature cannot be checked against {issuer_label}: {exc}"
        ) from None


def _check_issuer_is_ca(issuer: x509.Certificate, issuer_label: str, ca_below: int) -> None:
    """``issuer`` may issue certificates; ``ca_below`` = intermediate CAs that follow it."""
    constraints = _ext(issuer, x509.BasicConstraints)
    if constraints is None or not constraints.ca:
        state = "missing" if constraints is None else "CA=false"
        raise CertificateError(
            f"{issuer_label} issues a certificate but is not a CA (basicConstraints {state})"
        )
    if constraints.path_length is not None and ca_below > constraints.path_length:
        raise CertificateError(
            f"{issuer_label} has pathLenConstraint {constraints.path_length} but "
            f"{ca_below} intermediate CA certificate(s) follow it"
        )
    usage = _ext(issuer, x509.KeyUsage)
    if usage is not None and not usage.key_cert_sign:
        raise CertificateError(f"{issuer_label} keyUsage does not allow keyCertSign")


def _intermediates_below(certs: Sequence[x509.Certificate], position: int) -> int:
    """Non-self-issued intermediate CA certificates between the leaf and ``certs[position]``."""
    return sum(1 for c in certs[1:position] if not _is_self_issued(c))


def validate_x5c_chain(
    jwk: Mapping[str, Any],
    policy: TrustPolicy,
    *,
    purpose: KeyPurpose,
    clock: Clock = SYSTEM_CLOCK,
) -> ValidatedChain:
    """Validate the ``x5c`` chain of ``jwk`` under ``policy``; raise :class:`CertificateError`.

    Checks, in this order, each failure with a one-line message naming the certificate index:

    1. every entry is standard padded base64 of a DER certificate;
    2. the leaf certifies exactly the JWK's ``n``/``e`` (and matches ``x5t``/``x5t#S256`` if given)
       and its keyUsage, when present, fits ``purpose`` (encryption: keyEncipherment; signature:
       digitalSignature or contentCommitment);
    3. every certificate is valid at ``clock.now()`` and marks no extension critical that we do
       not evaluate;
    4. each certificate is directly issued by the next (issuer name + signature; RSA PKCS#1 v1.5,
       RSA-PSS, ECDSA, EdDSA issuers; SHA-1/MD5 refused) and every issuer is a CA
       (basicConstraints CA=true, pathLenConstraint respected, keyCertSign if keyUsage present);
    5. the chain contains or is issued by a trust anchor of the policy, or — only with
       ``policy.allow_self_signed`` — ends in a self-signed certificate;
    6. ``policy.revocation_checker``, if set, accepts the path. Without one, revocation (OCSP/CRL)
       is **not** checked — that needs the network.
    """
    certs = _parse_x5c(jwk)
    _check_leaf(jwk, certs[0], purpose)
    now = clock.now()
    for index, cert in enumerate(certs):
        _check_time(index, cert, now)
        _check_critical_extensions(index, cert)
    for index in range(len(certs) - 1):
        issuer_label = _label(index + 1, certs[index + 1])
        _check_signed_by(certs[index], _label(index, certs[index]), certs[index + 1], issuer_label)
        _check_issuer_is_ca(certs[index + 1], issuer_label, _intermediates_below(certs, index + 1))

    anchors = policy.trust_anchors
    trust_anchor: x509.Certificate | None = None
    self_signed = False
    for cert in certs:
        trust_anchor = next((a for a in anchors if _same_certificate(a, cert)), None)
        if trust_anchor is not None:
            break
    last_index, last = len(certs) - 1, certs[-1]
    last_label = _label(last_index, last)
    if trust_anchor is None:
        trust_anchor = _find_issuing_anchor(certs, anchors, now)
    if trust_anchor is None:
        if _is_self_issued(last):
            try:
                last.verify_directly_issued_by(last)
            except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
                raise CertificateError(
                    f"{last_label} claims to be self-signed but its signature does not verify"
                ) from None
            if not policy.allow_self_signed:
                raise CertificateError(
                    f"{last_label} is a self-signed root that is not a trust anchor of policy "
                    f"{policy.name!r} ({len(anchors)} anchor(s) configured); self-signed "
                    "chains are only acceptable in the test environment"
                )
            self_signed = True
        elif anchors:
            raise CertificateError(
                f"{last_label} is not issued by a trust anchor of policy {policy.name!r} "
                f"(its issuer is {_name(last.issuer)!r})"
            )
        else:
            raise CertificateError(
                f"the chain ends in {last_label}, issued by {_name(last.issuer)!r}, which is not "
                f"included, and policy {policy.name!r} has no trust anchors"
            )
    result = ValidatedChain(
        certificates=tuple(certs), trust_anchor=trust_anchor, self_signed=self_signed
    )
    if policy.revocation_checker is not None:
        policy.revocation_checker(result.path, now)
    return result


def _find_issuing_anchor(
    certs: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate], now: datetime
) -> x509.Certificate | None:
    """The trust anchor that directly issued the last certificate of ``certs``, if any.

    An anchor whose name matches but whose key does not verify the signature is skipped (another
    anchor may share the name after a key rollover; if none verifies, that failure is raised); a
    matching anchor that is expired or not a CA is an error.
    """
    last_index, last = len(certs) - 1, certs[-1]
    last_label = _label(last_index, last)
    signature_failure: CertificateError | None = None
    for anchor in anchors:
        if anchor.subject != last.issuer:
            continue
        anchor_label = f"trust anchor ({_name(anchor.subject)})"
        try:
            _check_signed_by(last, last_label, anchor, anchor_label)
        except CertificateError as exc:
            signature_failure = exc
            continue
        if now < anchor.not_valid_before_utc:
            raise CertificateError(
                f"{anchor_label} is not valid before {_iso(anchor.not_valid_before_utc)}"
            )
        if now > anchor.not_valid_after_utc:
            raise CertificateError(f"{anchor_label} expired on {_iso(anchor.not_valid_after_utc)}")
        _check_issuer_is_ca(anchor, anchor_label, _intermediates_below(certs, len(certs)))
        return anchor
    if signature_failure is not None:
        raise signature_failure
    return None


def validate_x5c(
    jwk: Mapping[str, Any],
    policy: TrustPolicy,
    *,
    purpose: KeyPurpose,
    clock: Clock = SYSTEM_CLOCK,
) -> x509.Certificate:
    """Validate the ``x5c`` chain of ``jwk`` (see :func:`validate_x5c_chain`); return the leaf.

    Revocation is only checked when ``policy.revocation_checker`` is set (offline otherwise).
    """
    return validate_x5c_chain(jwk, policy, purpose=purpose, clock=clock).leaf


def validate_destination_key(
    jwk: Mapping[str, Any],
    *,
    purpose: KeyPurpose | None = None,
    policy: TrustPolicy,
    clock: Clock = SYSTEM_CLOCK,
) -> RSAPublicKey:
    """Check a destination's public JWK completely and return its RSA public key.

    Key rules (:func:`check_key_rules`, raising :class:`KeyRuleViolationError`), then the ``x5c``
    chain under ``policy`` (:func:`validate_x5c`, raising :class:`CertificateError`) — which also
    ensures the JWK's ``n``/``e`` are the leaf certificate's key. Without ``x5c`` and with
    ``policy.require_x5c`` false, only the key rules are checked.
    """
    resolved = check_key_rules(jwk, purpose, require_x5c=policy.require_x5c)
    if "x5c" in jwk or policy.require_x5c:
        validate_x5c(jwk, policy, purpose=resolved, clock=clock)
    return public_key_from_jwk(jwk)
