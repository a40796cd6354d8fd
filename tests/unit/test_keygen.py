"""Test key generator (protocol/keygen.py): key set, certificates, files, load_jwk_file."""

from __future__ import annotations

import base64
import json
import os
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tests.keycache import rsa_key

from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.errors import CertificateError, FormatError, InvalidKeyError
from fitconnect_kit.protocol.jose.jwk import (
    private_key_from_jwk,
    public_jwk,
    public_key_from_jwk,
    thumbprint,
)
from fitconnect_kit.protocol.jose.jws import sign_compact, verify_compact
from fitconnect_kit.protocol.keygen import (
    KEY_FILE_NAMES,
    GeneratedKeySet,
    generate_key_set,
    load_jwk_file,
    write_key_set,
)
from fitconnect_kit.protocol.keys import (
    KeyPurpose,
    TrustPolicy,
    check_key_rules,
    key_rule_violations,
    validate_destination_key,
    validate_x5c_chain,
)

START = datetime(2030, 3, 1, 8, 0, tzinfo=UTC)


def cached_keys(*indexes: int) -> Callable[[], rsa.RSAPrivateKey]:
    """A key_factory handing out cached test keys in order (CA, encryption, signing)."""
    keys: Iterator[rsa.RSAPrivateKey] = iter([rsa_key(i) for i in indexes])
    return lambda: next(keys)


@pytest.fixture(scope="module")
def key_set() -> GeneratedKeySet:
    return generate_key_set(
        clock=ManualClock(START), valid_days=30, key_factory=cached_keys(0, 1, 2)
    )


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START + timedelta(days=1))


# --- key set contents ----------------------------------------------------------------------------


def test_public_jwks_pass_rules_and_validation(
    key_set: GeneratedKeySet, clock: ManualClock
) -> None:
    policy = TrustPolicy.test_environment()
    for jwk, purpose in (
        (key_set.encryption_public, KeyPurpose.ENCRYPTION),
        (key_set.signing_public, KeyPurpose.SIGNATURE),
    ):
        assert key_rule_violations(jwk) == []
        assert check_key_rules(jwk) is purpose
        key = validate_destination_key(jwk, purpose=purpose, policy=policy, clock=clock)
        assert key.key_size == 4096
        # strict: only with the generated CA as trust anchor
        strict = TrustPolicy.strict([key_set.ca_certificate])
        chain = validate_x5c_chain(jwk, strict, purpose=purpose, clock=clock)
        assert chain.trust_anchor == key_set.ca_certificate
        with pytest.raises(CertificateError, match="self-signed root"):
            validate_destination_key(jwk, policy=TrustPolicy.strict(()), clock=clock)


def test_jwk_members(key_set: GeneratedKeySet) -> None:
    enc, sig = key_set.encryption_public, key_set.signing_public
    members = ["kty", "kid", "alg", "key_ops", "use", "n", "e", "x5c"]
    assert list(enc) == members
    assert list(sig) == members
    assert (enc["alg"], enc["key_ops"], enc["use"]) == ("RSA-OAEP-256", ["wrapKey"], "enc")
    assert (sig["alg"], sig["key_ops"], sig["use"]) == ("PS512", ["verify"], "sig")
    assert key_set.encryption_private["key_ops"] == ["unwrapKey"]
    assert key_set.signing_private["key_ops"] == ["sign"]
    assert key_set.encryption_private["alg"] == "RSA-OAEP-256"
    assert key_set.signing_private["alg"] == "PS512"
    for private, public in (
        (key_set.encryption_private, enc),
        (key_set.signing_private, sig),
    ):
        assert private["kid"] == public["kid"]
        assert "d" in private
        assert "x5c" not in private
        assert public_jwk(private)["n"] == public["n"]
        for member in ("d", "p", "q", "dp", "dq", "qi"):
            assert member not in public


def test_kids_are_thumbprints(key_set: GeneratedKeySet) -> None:
    assert key_set.encryption_kid == thumbprint(key_set.encryption_public)
    assert key_set.signing_kid == thumbprint(key_set.signing_public)
    assert key_set.encryption_kid != key_set.signing_kid
    for kid in (key_set.encryption_kid, key_set.signing_kid):
        assert 8 <= len(kid) <= 64


def test_distinct_keys(key_set: GeneratedKeySet) -> None:
    ca_n = key_set.ca_certificate.public_key().public_numbers().n  # type: ignore[union-attr]
    n_values = {key_set.encryption_public["n"], key_set.signing_public["n"]}
    assert len(n_values) == 2
    assert public_key_from_jwk(key_set.encryption_public).public_numbers().n != ca_n


def _certs(jwk: dict[str, Any]) -> list[x509.Certificate]:
    return [x509.load_der_x509_certificate(base64.b64decode(c)) for c in jwk["x5c"]]


def test_certificates(key_set: GeneratedKeySet) -> None:
    ca = key_set.ca_certificate
    assert ca.subject == ca.issuer
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    ca_ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert isinstance(ca.public_key(), rsa.RSAPublicKey)
    assert ca.public_key().key_size == 4096  # type: ignore[union-attr]

    for jwk, wants_enc in ((key_set.encryption_public, True), (key_set.signing_public, False)):
        leaf, root = _certs(jwk)
        assert root == ca
        assert leaf.issuer == ca.subject
        leaf.verify_directly_issued_by(ca)
        leaf_usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
        assert leaf_usage.key_encipherment is wants_enc
        assert leaf_usage.digital_signature is not wants_enc
        assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ca_ski.digest
        leaf.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert leaf.public_key().public_numbers() == (  # type: ignore[union-attr]
            public_key_from_jwk(jwk).public_numbers()
        )
        # x5c entries are standard base64 with padding
        for entry in jwk["x5c"]:
            assert len(entry) % 4 == 0
            assert "-" not in entry
            assert "_" not in entry


def test_validity_period(key_set: GeneratedKeySet) -> None:
    for cert in [key_set.ca_certificate, *_certs(key_set.encryption_public)]:
        assert cert.not_valid_before_utc == START - timedelta(minutes=5)
        assert cert.not_valid_after_utc == START + timedelta(days=30)
    late = ManualClock(START + timedelta(days=30, seconds=1))
    with pytest.raises(CertificateError, match=r"x5c\[0\] .* expired on"):
        validate_destination_key(
            key_set.encryption_public, policy=TrustPolicy.test_environment(), clock=late
        )


def test_common_name() -> None:
    keys = generate_key_set(common_name="Stadt Musterhausen", key_factory=cached_keys(1, 2, 0))
    assert "Stadt Musterhausen" in keys.ca_certificate.subject.rfc4514_string()
    leaf = _certs(keys.signing_public)[0]
    assert "Stadt Musterhausen signature" in leaf.subject.rfc4514_string()


# --- the keys work -------------------------------------------------------------------------------


def test_encryption_private_key_decrypts_what_the_public_key_encrypts(
    key_set: GeneratedKeySet,
) -> None:
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    cek = os.urandom(32)
    wrapped = public_key_from_jwk(key_set.encryption_public).encrypt(cek, oaep)
    assert private_key_from_jwk(key_set.encryption_private).decrypt(wrapped, oaep) == cek
    with pytest.raises(ValueError, match="Decryption failed"):
        private_key_from_jwk(key_set.signing_private).decrypt(wrapped, oaep)


def test_signing_private_key_signs_a_ps512_jws(key_set: GeneratedKeySet) -> None:
    header = {"alg": "PS512", "kid": key_set.signing_kid, "typ": "secevent+jwt"}
    token = sign_compact(
        header, b'{"hello":"world"}', private_key_from_jwk(key_set.signing_private)
    )
    parsed = verify_compact(token, key_set.signing_public)
    assert parsed.payload == b'{"hello":"world"}'
    assert parsed.kid == key_set.signing_kid


# --- generator arguments -------------------------------------------------------------------------


def test_refuses_small_keys() -> None:
    with pytest.raises(InvalidKeyError, match="2048-bit key"):
        generate_key_set(key_factory=lambda: rsa_key(0, bits=2048))


def test_refuses_the_same_key_three_times() -> None:
    with pytest.raises(InvalidKeyError, match="three different keys"):
        generate_key_set(key_factory=lambda: rsa_key(0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"common_name": ""}, "non-empty"),
        ({"common_name": "x" * 54}, "at most 53"),
        ({"valid_days": 0}, "positive"),
    ],
)
def test_refuses_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    def never() -> rsa.RSAPrivateKey:
        raise AssertionError("arguments must be checked before any key is made")

    with pytest.raises(FormatError, match=match):
        generate_key_set(key_factory=never, **kwargs)


# --- files ---------------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def no_chmod(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files must be created with their mode, never chmod-ed afterwards."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("chmod called")

    monkeypatch.setattr(os, "chmod", refuse)
    monkeypatch.setattr(os, "fchmod", refuse)
    monkeypatch.setattr(Path, "chmod", refuse)


@pytest.mark.usefixtures("no_chmod")
def test_write_key_set(key_set: GeneratedKeySet, tmp_path: Path) -> None:
    out = tmp_path / "new" / "keys"
    paths = write_key_set(key_set, out)
    assert {name: path.name for name, path in paths.items()} == KEY_FILE_NAMES
    assert sorted(p.name for p in out.iterdir()) == sorted(KEY_FILE_NAMES.values())  # no temps
    assert _mode(paths["encryption_private"]) == 0o600
    assert _mode(paths["signing_private"]) == 0o600
    for name in ("encryption_public", "signing_public", "ca_certificate"):
        assert _mode(paths[name]) & 0o077 == 0o644 & 0o077 & ~_umask()
        assert _mode(paths[name]) & 0o600 == 0o600
    for name in ("encryption_private", "encryption_public", "signing_private", "signing_public"):
        assert load_jwk_file(paths[name]) == getattr(key_set, name)
    pem = paths["ca_certificate"].read_bytes()
    assert x509.load_pem_x509_certificate(pem) == key_set.ca_certificate
    assert json.loads(paths["signing_public"].read_text())["kid"] == key_set.signing_kid


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


@pytest.mark.usefixtures("no_chmod")
def test_no_overwrite_without_force(key_set: GeneratedKeySet, tmp_path: Path) -> None:
    write_key_set(key_set, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    other = generate_key_set(key_factory=cached_keys(2, 0, 1))
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        write_key_set(other, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    # a private file with too wide permissions is replaced by a fresh 0600 file
    private = tmp_path / KEY_FILE_NAMES["encryption_private"]
    os.replace(_copy_with_mode(private, 0o644), private)
    assert _mode(private) == 0o644
    paths = write_key_set(other, tmp_path, overwrite=True)
    assert load_jwk_file(paths["encryption_public"]) == other.encryption_public
    assert _mode(private) == 0o600
    assert len(list(tmp_path.iterdir())) == 5


def _copy_with_mode(path: Path, mode: int) -> Path:
    copy = path.with_name(path.name + ".copy")
    fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(path.read_bytes())
    return copy


def test_a_single_existing_file_blocks_everything(key_set: GeneratedKeySet, tmp_path: Path) -> None:
    (tmp_path / KEY_FILE_NAMES["ca_certificate"]).write_text("mine")
    with pytest.raises(FileExistsError, match=r"ca\.cert\.pem"):
        write_key_set(key_set, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["ca.cert.pem"]
    assert (tmp_path / "ca.cert.pem").read_text() == "mine"


def test_out_dir_is_a_file(key_set: GeneratedKeySet, tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError):
        write_key_set(key_set, target)


# --- load_jwk_file -------------------------------------------------------------------------------


def test_load_jwk_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="JWK file not found"):
        load_jwk_file(tmp_path / "missing.json")
    with pytest.raises(IsADirectoryError):
        load_jwk_file(tmp_path)
    secret = "c2VjcmV0LXByaXZhdGUta2V5LW1hdGVyaWFs"
    cases = {
        "broken.json": (f'{{"kty": "RSA", "d": "{secret}",', "not valid UTF-8 JSON"),
        "array.json": ('["kty"]', "does not contain a JWK"),
        "nokty.json": (f'{{"d": "{secret}"}}', "does not contain a JWK"),
        "jwks.json": ('{"keys": []}', "JWK Set"),
        "dup.json": (f'{{"kty": "RSA", "d": "{secret}", "d": "x"}}', "duplicate JSON member"),
    }
    for name, (content, fragment) in cases.items():
        (tmp_path / name).write_text(content)
        with pytest.raises(InvalidKeyError, match=fragment) as info:
            load_jwk_file(tmp_path / name)
        assert secret not in str(info.value)
        assert "\n" not in str(info.value)
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe")
    with pytest.raises(InvalidKeyError):
        load_jwk_file(tmp_path / "binary.json")
