"""Test key generator: a destination's encryption and signing key pairs with an ``x5c`` chain.

For the FIT-Connect *test* environment (and our local Zustelldienst), where self-generated
certificates are allowed. A self-signed root CA (RSA-4096) issues two leaf certificates — one for
the encryption key (keyUsage keyEncipherment), one for the signing key (digitalSignature). The
public JWKs carry ``x5c = [leaf, CA]`` and pass :func:`~fitconnect_kit.protocol.keys.
validate_destination_key` under :meth:`TrustPolicy.test_environment()
<fitconnect_kit.protocol.keys.TrustPolicy.test_environment>`.

Stage and production need Verwaltungs-PKI certificates instead; keys made here are refused there.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock
from fitconnect_kit.protocol.errors import FormatError, InvalidKeyError
from fitconnect_kit.protocol.jose.jwk import (
    Jwk,
    jwk_from_private_key,
    jwk_from_public_key,
    thumbprint,
)
from fitconnect_kit.protocol.jsonutil import loads_strict
from fitconnect_kit.protocol.keys import ENCRYPTION_ALG, MIN_RSA_BITS, SIGNATURE_ALG

__all__ = [
    "KEY_FILE_NAMES",
    "MAX_COMMON_NAME_LENGTH",
    "PRIVATE_KEY_FILES",
    "GeneratedKeySet",
    "generate_key_set",
    "load_jwk_file",
    "write_key_set",
]

KEY_FILE_NAMES: dict[str, str] = {
    "encryption_private": "encryption.private.jwk.json",
    "encryption_public": "encryption.public.jwk.json",
    "signing_private": "signing.private.jwk.json",
    "signing_public": "signing.public.jwk.json",
    "ca_certificate": "ca.cert.pem",
}
PRIVATE_KEY_FILES = frozenset({"encryption_private", "signing_private"})

_CA_SUFFIX = " CA"
_ENCRYPTION_SUFFIX = " encryption"
_SIGNING_SUFFIX = " signature"
_UB_COMMON_NAME = 64  # RFC 5280 upper bound of a commonName
MAX_COMMON_NAME_LENGTH = _UB_COMMON_NAME - max(
    len(_CA_SUFFIX), len(_ENCRYPTION_SUFFIX), len(_SIGNING_SUFFIX)
)
_ORGANIZATION = "fitconnect-kit test keys (not for production)"
_CLOCK_SKEW = timedelta(minutes=5)  # not-before is back-dated so other hosts accept it at once
_MAX_JWK_FILE_BYTES = 1 << 20


@dataclass(frozen=True)
class GeneratedKeySet:
    """Two key pairs of a test destination and the CA that certifies both public keys."""

    encryption_private: Jwk
    encryption_public: Jwk
    signing_private: Jwk
    signing_public: Jwk
    ca_certificate: x509.Certificate

    @property
    def encryption_kid(self) -> str:
        kid: str = self.encryption_public["kid"]
        return kid

    @property
    def signing_kid(self) -> str:
        kid: str = self.signing_public["kid"]
        return kid


def _default_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=MIN_RSA_BITS)


def _check_key(key: object) -> rsa.RSAPrivateKey:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise InvalidKeyError("key_factory must return an RSA private key")
    if key.key_size < MIN_RSA_BITS:
        raise InvalidKeyError(
            f"key_factory returned a {key.key_size}-bit key; FIT-Connect needs at least "
            f"{MIN_RSA_BITS} bits"
        )
    if key.public_key().public_numbers().e != 65537:
        raise InvalidKeyError("key_factory returned a key whose public exponent is not 65537")
    return key


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, _ORGANIZATION),
        ]
    )


def _x5c_entry(cert: x509.Certificate) -> str:
    """Standard base64 (with padding) of the DER certificate, as RFC 7517 §4.7 requires."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _issue_leaf(
    key: rsa.RSAPrivateKey,
    common_name: str,
    usage: x509.KeyUsage,
    ca_key: rsa.RSAPrivateKey,
    ca_cert: x509.Certificate,
    not_before: datetime,
    not_after: datetime,
) -> x509.Certificate:
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )


def _key_usage(*, key_encipherment: bool = False, digital_signature: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def generate_key_set(
    *,
    common_name: str = "fitconnect-kit Test-Zustellpunkt",
    valid_days: int = 730,
    clock: Clock = SYSTEM_CLOCK,
    key_factory: Callable[[], rsa.RSAPrivateKey] | None = None,
) -> GeneratedKeySet:
    """Generate a CA, an encryption and a signing key pair for a test destination.

    ``key_factory`` supplies the three RSA keys (CA, encryption, signing — in this order); the
    default generates fresh RSA-4096 keys (a few seconds). Certificates are valid from
    ``clock.now()`` (minus 5 minutes of clock skew) for ``valid_days`` days.

    Kids are the RFC 7638 thumbprints of the keys (43 characters, inside the 8–64 the schema
    allows): they are derived from the key itself, so they never collide between different keys,
    stay the same if the same key is registered again, can be recomputed by anyone holding the
    public key, and look like the ``encryptionKid`` values FIT-Connect documents; SDKs that address
    keys by thumbprint interoperate with them too. A private JWK has the kid of its public half.
    """
    if not isinstance(common_name, str) or not common_name.strip():
        raise FormatError("common name must be non-empty text", field="common_name")
    if len(common_name) > MAX_COMMON_NAME_LENGTH:
        raise FormatError(
            f"common name has {len(common_name)} characters; at most {MAX_COMMON_NAME_LENGTH} "
            "are allowed (the certificate names append a suffix to it)",
            field="common_name",
        )
    if not isinstance(valid_days, int) or valid_days < 1:
        raise FormatError(
            f"valid_days must be a positive number of days, got {valid_days!r}", field="valid_days"
        )
    factory = key_factory or _default_key
    ca_key = _check_key(factory())
    encryption_key = _check_key(factory())
    signing_key = _check_key(factory())
    moduli = {k.public_key().public_numbers().n for k in (ca_key, encryption_key, signing_key)}
    if len(moduli) != 3:
        raise InvalidKeyError(
            "key_factory must return three different keys (CA, encryption, signing)"
        )

    now = clock.now()
    not_before = now - _CLOCK_SKEW
    not_after = now + timedelta(days=valid_days)

    ca_name = _name(common_name + _CA_SUFFIX)
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    encryption_cert = _issue_leaf(
        encryption_key,
        common_name + _ENCRYPTION_SUFFIX,
        _key_usage(key_encipherment=True),
        ca_key,
        ca_cert,
        not_before,
        not_after,
    )
    signing_cert = _issue_leaf(
        signing_key,
        common_name + _SIGNING_SUFFIX,
        _key_usage(digital_signature=True),
        ca_key,
        ca_cert,
        not_before,
        not_after,
    )

    encryption_public = jwk_from_public_key(
        encryption_key.public_key(),
        alg=ENCRYPTION_ALG,
        key_ops=["wrapKey"],
        use="enc",
        x5c=[_x5c_entry(encryption_cert), _x5c_entry(ca_cert)],
    )
    encryption_kid = thumbprint(encryption_public)
    signing_public = jwk_from_public_key(
        signing_key.public_key(),
        alg=SIGNATURE_ALG,
        key_ops=["verify"],
        use="sig",
        x5c=[_x5c_entry(signing_cert), _x5c_entry(ca_cert)],
    )
    signing_kid = thumbprint(signing_public)

    return GeneratedKeySet(
        encryption_private=jwk_from_private_key(
            encryption_key, kid=encryption_kid, alg=ENCRYPTION_ALG, key_ops=["unwrapKey"], use="enc"
        ),
        encryption_public=_with_kid(encryption_public, encryption_kid),
        signing_private=jwk_from_private_key(
            signing_key, kid=signing_kid, alg=SIGNATURE_ALG, key_ops=["sign"], use="sig"
        ),
        signing_public=_with_kid(signing_public, signing_kid),
        ca_certificate=ca_cert,
    )


def _with_kid(jwk: Jwk, kid: str) -> Jwk:
    """``jwk`` with ``kid`` inserted right after ``kty`` (conventional member order)."""
    result: Jwk = {"kty": jwk["kty"], "kid": kid}
    result.update((k, v) for k, v in jwk.items() if k not in result)
    return result


# --- files ----------------------------------------------------------------------------------------


def _file_bytes(keys: GeneratedKeySet, name: str) -> bytes:
    if name == "ca_certificate":
        return keys.ca_certificate.public_bytes(serialization.Encoding.PEM)
    jwk: Jwk = getattr(keys, name)
    return (json.dumps(jwk, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _write_atomically(target: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``data`` to a fresh temp file created with ``mode``, then move it to ``target``.

    The temp file is created with its final permissions (never wider, even for a moment) in the
    target's directory, fsynced, then renamed over ``target`` (``overwrite``) or hard-linked to it,
    which fails atomically when ``target`` appeared in the meantime.
    """
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)
            except OSError as exc:
                if exc.errno == errno.EEXIST:
                    raise FileExistsError(
                        f"refusing to overwrite existing file {str(target)!r}"
                    ) from None
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                    raise
                # File systems without hard links: check, then rename (tiny race window).
                if target.exists():
                    raise FileExistsError(
                        f"refusing to overwrite existing file {str(target)!r}"
                    ) from None
                os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_key_set(
    keys: GeneratedKeySet, out_dir: Path, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the five files of ``keys`` (names in :data:`KEY_FILE_NAMES`) into ``out_dir``.

    Private JWKs are created with mode 0600, public files with 0644 (both subject to the umask);
    every file is written atomically (temp file + rename). Existing files are only replaced with
    ``overwrite``; otherwise ``FileExistsError`` is raised before anything is written. ``out_dir``
    is created (mode 0700) when missing. Returns the written paths by :data:`KEY_FILE_NAMES` key.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"output path {str(out_dir)!r} exists and is not a directory")
    targets = {name: out_dir / file_name for name, file_name in KEY_FILE_NAMES.items()}
    if not overwrite:
        existing = [str(path) for path in targets.values() if path.exists() or path.is_symlink()]
        if existing:
            raise FileExistsError(f"refusing to overwrite existing file(s): {', '.join(existing)}")
    out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    for name, path in targets.items():
        mode = 0o600 if name in PRIVATE_KEY_FILES else 0o644
        _write_atomically(path, _file_bytes(keys, name), mode=mode, overwrite=overwrite)
    return targets


def load_jwk_file(path: Path) -> Jwk:
    """Read a single JWK from a JSON file.

    Raises ``FileNotFoundError`` (missing), ``IsADirectoryError``, or :class:`InvalidKeyError`
    when the file is not UTF-8 JSON or not a JWK (a JSON object with a string ``kty``). Messages
    never quote the file's content (it may be a private key).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"JWK file not found: {path}")
    if path.is_dir():
        raise IsADirectoryError(f"expected a JWK file but got a directory: {path}")
    with path.open("rb") as handle:
        data = handle.read(_MAX_JWK_FILE_BYTES + 1)
    if len(data) > _MAX_JWK_FILE_BYTES:
        raise InvalidKeyError(f"JWK file {path} is larger than 1 MiB; not a JWK")
    try:
        value = loads_strict(data, what=f"JWK file {path}")
    except FormatError as exc:  # the message has positions, never the file's content
        raise InvalidKeyError(str(exc)) from None
    if isinstance(value, dict) and "keys" in value and "kty" not in value:
        raise InvalidKeyError(f"JWK file {path} holds a JWK Set; a single JWK is expected")
    if not isinstance(value, dict) or not isinstance(value.get("kty"), str):
        raise InvalidKeyError(
            f"JWK file {path} does not contain a JWK (expected a JSON object with 'kty')"
        )
    return value
