"""x5c certificate chain validation under a TrustPolicy (protocol/keys.py)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID, ObjectIdentifier
from tests.keycache import rsa_key

from fitconnect_kit.protocol.b64 import b64url_encode
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.errors import CertificateError, KeyRuleError
from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key
from fitconnect_kit.protocol.keys import (
    KeyPurpose,
    KeyRuleViolationError,
    TrustPolicy,
    validate_destination_key,
    validate_x5c,
    validate_x5c_chain,
)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
NOT_BEFORE = datetime(2030, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2031, 1, 1, tzinfo=UTC)

IssuerKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

ENC_USAGE = {"key_encipherment": True}
SIG_USAGE = {"digital_signature": True}
CA_USAGE = {"key_cert_sign": True, "crl_sign": True}


def _usage(**flags: bool) -> x509.KeyUsage:
    names = (
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    )
    return x509.KeyUsage(**{name: flags.get(name, False) for name in names})


def make_cert(
    cn: str,
    key: IssuerKey,
    *,
    issuer: tuple[x509.Certificate | x509.Name, IssuerKey] | None = None,
    ca: bool | None = False,
    path_length: int | None = None,
    key_usage: dict[str, bool] | None = None,
    not_before: datetime = NOT_BEFORE,
    not_after: datetime = NOT_AFTER,
    hash_algorithm: hashes.SHA256 | hashes.SHA384 | None = None,
    pss: bool = False,
    extra: list[tuple[x509.ExtensionType, bool]] | None = None,
) -> x509.Certificate:
    """A certificate for ``key``; self-signed unless ``issuer`` = (cert or name, issuer key)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    if issuer is None:
        issuer_name, issuer_key = subject, key
    else:
        issuer_ref, issuer_key = issuer
        issuer_name = issuer_ref.subject if isinstance(issuer_ref, x509.Certificate) else issuer_ref
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), critical=True
        )
    if key_usage is not None:
        builder = builder.add_extension(_usage(**key_usage), critical=True)
    for extension, critical in extra or []:
        builder = builder.add_extension(extension, critical=critical)
    rsa_padding = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32) if pss else None
    return builder.sign(issuer_key, hash_algorithm or hashes.SHA256(), rsa_padding=rsa_padding)


def b64der(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def jwk_for(
    key: rsa.RSAPrivateKey,
    chain: list[x509.Certificate],
    purpose: KeyPurpose = KeyPurpose.ENCRYPTION,
) -> dict[str, Any]:
    enc = purpose is KeyPurpose.ENCRYPTION
    return jwk_from_public_key(
        key.public_key(),
        kid="test-key-" + purpose.value,
        alg="RSA-OAEP-256" if enc else "PS512",
        key_ops=["wrapKey"] if enc else ["verify"],
        x5c=[b64der(c) for c in chain],
    )


@dataclass(frozen=True)
class Pki:
    root_key: rsa.RSAPrivateKey
    inter_key: rsa.RSAPrivateKey
    leaf_key: rsa.RSAPrivateKey
    other_key: rsa.RSAPrivateKey
    root: x509.Certificate
    inter: x509.Certificate
    leaf: x509.Certificate  # encryption leaf (keyEncipherment)
    sig_leaf: x509.Certificate  # signature leaf (digitalSignature) for the same key


@pytest.fixture(scope="module")
def pki() -> Pki:
    root_key, inter_key, leaf_key, other_key = (rsa_key(i) for i in range(4))
    root = make_cert("Test Root CA", root_key, ca=True, key_usage=CA_USAGE)
    inter = make_cert(
        "Test Intermediate CA",
        inter_key,
        issuer=(root, root_key),
        ca=True,
        path_length=0,
        key_usage=CA_USAGE,
    )
    leaf = make_cert("Zustellpunkt enc", leaf_key, issuer=(inter, inter_key), key_usage=ENC_USAGE)
    sig_leaf = make_cert(
        "Zustellpunkt sig", leaf_key, issuer=(inter, inter_key), key_usage=SIG_USAGE
    )
    return Pki(root_key, inter_key, leaf_key, other_key, root, inter, leaf, sig_leaf)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOW)


TEST = TrustPolicy.test_environment()


def _fails(
    jwk: dict[str, Any],
    policy: TrustPolicy,
    clock: ManualClock,
    match: str,
    purpose: KeyPurpose = KeyPurpose.ENCRYPTION,
) -> CertificateError:
    with pytest.raises(CertificateError, match=match) as info:
        validate_x5c(jwk, policy, purpose=purpose, clock=clock)
    message = str(info.value)
    assert "\n" not in message
    return info.value


# --- good chains and trust anchors ---------------------------------------------------------------


def test_good_chain_under_test_policy(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    assert validate_x5c(jwk, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock) == pki.leaf
    chain = validate_x5c_chain(jwk, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock)
    assert chain.self_signed
    assert chain.trust_anchor is None
    assert chain.path == (pki.leaf, pki.inter, pki.root)
    assert chain.not_after == NOT_AFTER


def test_signature_chain(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.sig_leaf, pki.inter, pki.root], KeyPurpose.SIGNATURE)
    assert validate_x5c(jwk, TEST, purpose=KeyPurpose.SIGNATURE, clock=clock) == pki.sig_leaf


def test_same_chain_refused_by_strict_policy_without_anchors(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    error = _fails(jwk, TrustPolicy.strict(()), clock, r"^x5c\[2\] \(CN=Test Root CA\) is a self")
    assert "not a trust anchor of policy 'strict' (0 anchor(s) configured)" in str(error)
    assert TrustPolicy().allow_self_signed is False  # the default is strict, too
    _fails(jwk, TrustPolicy(), clock, "self-signed root")


def test_same_chain_accepted_with_the_root_as_anchor(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    policy = TrustPolicy.strict([pki.root])
    chain = validate_x5c_chain(jwk, policy, purpose=KeyPurpose.ENCRYPTION, clock=clock)
    assert chain.trust_anchor == pki.root
    assert not chain.self_signed
    assert chain.path == (pki.leaf, pki.inter, pki.root)


def test_chain_without_root_is_issued_by_the_anchor(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    chain = validate_x5c_chain(
        jwk, TrustPolicy.strict([pki.root]), purpose=KeyPurpose.ENCRYPTION, clock=clock
    )
    assert chain.trust_anchor == pki.root
    assert chain.path == (pki.leaf, pki.inter, pki.root)
    # without the root, the test policy cannot accept it: the chain does not end self-signed
    _fails(jwk, TEST, clock, r"x5c\[1\] \(CN=Test Intermediate CA\), issued by 'CN=Test Root CA'")
    _fails(jwk, TrustPolicy.strict(()), clock, "has no trust anchors")


def test_intermediate_as_anchor(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    chain = validate_x5c_chain(
        jwk, TrustPolicy.strict([pki.inter]), purpose=KeyPurpose.ENCRYPTION, clock=clock
    )
    assert chain.trust_anchor == pki.inter


def test_chain_not_issued_by_configured_anchor(pki: Pki, clock: ManualClock) -> None:
    other_root = make_cert("Other Root CA", pki.other_key, ca=True)
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    _fails(
        jwk,
        TrustPolicy.strict([other_root]),
        clock,
        r"x5c\[1\] \(CN=Test Intermediate CA\) is not issued by a trust anchor of policy 'strict'",
    )


def test_anchor_with_same_name_but_other_key(pki: Pki, clock: ManualClock) -> None:
    impostor = make_cert("Test Root CA", pki.other_key, ca=True)
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    _fails(jwk, TrustPolicy.strict([impostor]), clock, "signature does not verify")
    # key rollover: two anchors share the name, the second one verifies
    chain = validate_x5c_chain(
        jwk, TrustPolicy.strict([impostor, pki.root]), purpose=KeyPurpose.ENCRYPTION, clock=clock
    )
    assert chain.trust_anchor == pki.root


def test_single_self_signed_certificate(pki: Pki, clock: ManualClock) -> None:
    cert = make_cert("Self-signed leaf", pki.leaf_key, ca=None, key_usage=ENC_USAGE)
    jwk = jwk_for(pki.leaf_key, [cert])
    assert validate_x5c(jwk, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock) == cert
    _fails(jwk, TrustPolicy.strict(()), clock, r"x5c\[0\] .* is a self-signed root")
    assert (
        validate_x5c(jwk, TrustPolicy.strict([cert]), purpose=KeyPurpose.ENCRYPTION, clock=clock)
        == cert
    )


def test_fake_self_signed_root(pki: Pki, clock: ManualClock) -> None:
    # issuer == subject, but signed by another key
    fake = make_cert(
        "Fake Root",
        pki.root_key,
        issuer=(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fake Root")]), pki.other_key),
        ca=True,
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(fake, pki.root_key), key_usage=ENC_USAGE)
    _fails(
        jwk_for(pki.leaf_key, [leaf, fake]),
        TEST,
        clock,
        r"x5c\[1\] \(CN=Fake Root\) claims to be self-signed but its signature does not verify",
    )


# --- validity period -----------------------------------------------------------------------------


def test_expired_certificates(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    clock.set(NOT_AFTER + timedelta(seconds=1))
    _fails(jwk, TEST, clock, r"^x5c\[0\] \(CN=Zustellpunkt enc\) expired on 2031-01-01T00:00:00Z$")
    clock.set(NOT_AFTER)  # the last second is still valid
    validate_x5c(jwk, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock)


def test_not_yet_valid(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    clock.set(NOT_BEFORE - timedelta(seconds=1))
    _fails(jwk, TEST, clock, r"^x5c\[0\] .* is not valid before 2030-01-01T00:00:00Z$")


def test_expired_intermediate(pki: Pki, clock: ManualClock) -> None:
    inter = make_cert(
        "Short-lived CA",
        pki.inter_key,
        issuer=(pki.root, pki.root_key),
        ca=True,
        not_after=NOW - timedelta(days=1),
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(inter, pki.inter_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, inter, pki.root]),
        TEST,
        clock,
        r"^x5c\[1\] \(CN=Short-lived CA\) expired on",
    )


def test_expired_external_anchor(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    old_root = make_cert("Test Root CA", pki.root_key, ca=True, not_after=NOW - timedelta(days=1))
    _fails(
        jwk, TrustPolicy.strict([old_root]), clock, r"^trust anchor \(CN=Test Root CA\) expired on"
    )


# --- chain links ---------------------------------------------------------------------------------


def test_leaf_from_another_ca_with_the_same_name(pki: Pki, clock: ManualClock) -> None:
    # same issuer name as the intermediate, but signed by a different key
    forged = make_cert("Zustellpunkt enc", pki.leaf_key, issuer=(pki.inter, pki.other_key))
    _fails(
        jwk_for(pki.leaf_key, [forged, pki.inter, pki.root]),
        TEST,
        clock,
        r"^x5c\[0\] .* signature does not verify with the key of x5c\[1\] "
        r"\(CN=Test Intermediate CA\)$",
    )


def test_leaf_from_another_ca(pki: Pki, clock: ManualClock) -> None:
    other_ca = make_cert("Other CA", pki.other_key, ca=True)
    leaf = make_cert("leaf", pki.leaf_key, issuer=(other_ca, pki.other_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, pki.inter, pki.root]),
        TEST,
        clock,
        r"^x5c\[0\] \(CN=leaf\) names issuer 'CN=Other CA', not x5c\[1\]",
    )


def test_wrong_order(pki: Pki, clock: ManualClock) -> None:
    _fails(
        jwk_for(pki.leaf_key, [pki.leaf, pki.root, pki.inter]),
        TEST,
        clock,
        r"^x5c\[0\] .* names issuer 'CN=Test Intermediate CA', not x5c\[1\]",
    )


@pytest.mark.parametrize(
    ("ca", "fragment"), [(False, "basicConstraints CA=false"), (None, "basicConstraints missing")]
)
def test_non_ca_issuer(pki: Pki, clock: ManualClock, ca: bool | None, fragment: str) -> None:
    not_a_ca = make_cert("Not a CA", pki.inter_key, issuer=(pki.root, pki.root_key), ca=ca)
    leaf = make_cert("leaf", pki.leaf_key, issuer=(not_a_ca, pki.inter_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, not_a_ca, pki.root]),
        TEST,
        clock,
        rf"^x5c\[1\] \(CN=Not a CA\) issues a certificate but is not a CA \({fragment}\)$",
    )


def test_path_length_constraint(pki: Pki, clock: ManualClock) -> None:
    root0 = make_cert("Root pathlen 0", pki.root_key, ca=True, path_length=0)
    inter = make_cert("Inter", pki.inter_key, issuer=(root0, pki.root_key), ca=True)
    leaf = make_cert("leaf", pki.leaf_key, issuer=(inter, pki.inter_key))
    jwk = jwk_for(pki.leaf_key, [leaf, inter, root0])
    _fails(jwk, TEST, clock, r"^x5c\[2\] .* has pathLenConstraint 0 but 1 intermediate")
    # the same constraint on an external anchor is enforced as well
    _fails(
        jwk_for(pki.leaf_key, [leaf, inter]),
        TrustPolicy.strict([root0]),
        clock,
        r"^trust anchor .* has pathLenConstraint 0",
    )
    # pathlen 0 directly above the leaf is fine
    direct = make_cert("leaf", pki.leaf_key, issuer=(root0, pki.root_key))
    validate_x5c(
        jwk_for(pki.leaf_key, [direct, root0]), TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock
    )


def test_issuer_key_usage_without_key_cert_sign(pki: Pki, clock: ManualClock) -> None:
    ca = make_cert("CA without keyCertSign", pki.root_key, ca=True, key_usage={"crl_sign": True})
    leaf = make_cert("leaf", pki.leaf_key, issuer=(ca, pki.root_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, ca]),
        TEST,
        clock,
        r"^x5c\[1\] .* keyUsage does not allow keyCertSign$",
    )


def test_rsa_pss_and_ecdsa_issuers(pki: Pki, clock: ManualClock) -> None:
    ec_key = ec.generate_private_key(ec.SECP384R1())
    ec_root = make_cert("ECDSA Root", ec_key, ca=True, hash_algorithm=hashes.SHA384())
    pss_inter = make_cert(
        "PSS Intermediate",
        pki.inter_key,
        issuer=(ec_root, ec_key),
        ca=True,
        hash_algorithm=hashes.SHA384(),
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(pss_inter, pki.inter_key), pss=True)
    jwk = jwk_for(pki.leaf_key, [leaf, pss_inter, ec_root])
    assert validate_x5c(jwk, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock) == leaf
    assert (
        validate_x5c(jwk, TrustPolicy.strict([ec_root]), purpose=KeyPurpose.ENCRYPTION, clock=clock)
        == leaf
    )


def _resign_with_sha1(cert: x509.Certificate, issuer_key: rsa.RSAPrivateKey) -> x509.Certificate:
    """``cert`` re-signed with sha1WithRSAEncryption (cryptography refuses to build SHA-1 certs)."""
    sha256_rsa = bytes.fromhex("2a864886f70d01010b")  # 1.2.840.113549.1.1.11, same DER length
    sha1_rsa = bytes.fromhex("2a864886f70d010105")  # 1.2.840.113549.1.1.5
    der = cert.public_bytes(serialization.Encoding.DER)
    assert der.count(sha256_rsa) == 2  # in the TBS and in the outer signatureAlgorithm
    tbs = cert.tbs_certificate_bytes.replace(sha256_rsa, sha1_rsa)
    signature = issuer_key.sign(tbs, padding.PKCS1v15(), hashes.SHA1())
    assert len(signature) == len(cert.signature)  # so every DER length stays the same
    forged = der.replace(sha256_rsa, sha1_rsa)[: -len(signature)] + signature
    return x509.load_der_x509_certificate(forged)


def test_sha1_signature_is_refused(pki: Pki, clock: ManualClock) -> None:
    leaf = _resign_with_sha1(pki.leaf, pki.inter_key)
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA1)
    _fails(
        jwk_for(pki.leaf_key, [leaf, pki.inter, pki.root]),
        TEST,
        clock,
        r"^x5c\[0\] .* is signed with a weak hash \(SHA-1/MD5\)$",
    )


def test_unknown_critical_extension_is_refused(pki: Pki, clock: ManualClock) -> None:
    unknown = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00")
    inter = make_cert(
        "Inter", pki.inter_key, issuer=(pki.root, pki.root_key), ca=True, extra=[(unknown, True)]
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(inter, pki.inter_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, inter, pki.root]),
        TEST,
        clock,
        r"^x5c\[1\] \(CN=Inter\) has a critical 1\.3\.6\.1\.4\.1\.99999\.1 extension",
    )
    # the same extension non-critical is ignored
    inter = make_cert(
        "Inter", pki.inter_key, issuer=(pki.root, pki.root_key), ca=True, extra=[(unknown, False)]
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(inter, pki.inter_key))
    validate_x5c(
        jwk_for(pki.leaf_key, [leaf, inter, pki.root]),
        TEST,
        purpose=KeyPurpose.ENCRYPTION,
        clock=clock,
    )


def test_critical_name_constraints_are_refused_not_ignored(pki: Pki, clock: ManualClock) -> None:
    constraints = x509.NameConstraints(
        permitted_subtrees=[x509.DNSName("example.org")], excluded_subtrees=None
    )
    inter = make_cert(
        "Constrained",
        pki.inter_key,
        issuer=(pki.root, pki.root_key),
        ca=True,
        extra=[(constraints, True)],
    )
    leaf = make_cert("leaf", pki.leaf_key, issuer=(inter, pki.inter_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, inter, pki.root]),
        TEST,
        clock,
        r"critical nameConstraints extension this validator does not evaluate",
    )


# --- leaf ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("purpose", "usage", "ok"),
    [
        (KeyPurpose.ENCRYPTION, ENC_USAGE, True),
        (KeyPurpose.ENCRYPTION, SIG_USAGE, False),
        (KeyPurpose.ENCRYPTION, {"data_encipherment": True}, False),
        (KeyPurpose.SIGNATURE, SIG_USAGE, True),
        (KeyPurpose.SIGNATURE, {"content_commitment": True}, True),
        (KeyPurpose.SIGNATURE, ENC_USAGE, False),
        (KeyPurpose.ENCRYPTION, None, True),  # no keyUsage extension: no restriction
        (KeyPurpose.SIGNATURE, None, True),
    ],
)
def test_leaf_key_usage(
    pki: Pki,
    clock: ManualClock,
    purpose: KeyPurpose,
    usage: dict[str, bool] | None,
    ok: bool,
) -> None:
    leaf = make_cert("leaf", pki.leaf_key, issuer=(pki.inter, pki.inter_key), key_usage=usage)
    jwk = jwk_for(pki.leaf_key, [leaf, pki.inter, pki.root], purpose)
    if ok:
        assert validate_x5c(jwk, TEST, purpose=purpose, clock=clock) == leaf
    else:
        expected = "keyEncipherment" if purpose is KeyPurpose.ENCRYPTION else "digitalSignature"
        _fails(
            jwk, TEST, clock, rf"^x5c\[0\] \(CN=leaf\) keyUsage does not allow {expected}", purpose
        )


def test_jwk_does_not_match_the_leaf(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.other_key, [pki.leaf, pki.inter, pki.root])
    _fails(
        jwk,
        TEST,
        clock,
        r"^x5c\[0\] \(CN=Zustellpunkt enc\) certifies a different public key than the JWK",
    )
    with pytest.raises(CertificateError):
        validate_destination_key(jwk, policy=TEST, clock=clock)


def test_leaf_with_non_rsa_key(pki: Pki, clock: ManualClock) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    leaf = make_cert("EC leaf", ec_key, issuer=(pki.inter, pki.inter_key))
    _fails(
        jwk_for(pki.leaf_key, [leaf, pki.inter, pki.root]), TEST, clock, r"certifies a non-RSA key"
    )


def test_x5t_thumbprints(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    der = pki.leaf.public_bytes(serialization.Encoding.DER)
    good = dict(jwk, **{"x5t#S256": b64url_encode(hashlib.sha256(der).digest())})
    validate_x5c(good, TEST, purpose=KeyPurpose.ENCRYPTION, clock=clock)
    bad = dict(jwk, **{"x5t#S256": b64url_encode(hashlib.sha256(b"x").digest())})
    _fails(bad, TEST, clock, r"^JWK x5t#S256 does not match the thumbprint of x5c\[0\]")


# --- syntax --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x5c", "match"),
    [
        pytest.param([], r"^x5c must be a non-empty array", id="empty"),
        pytest.param("MIIB", r"^x5c must be a non-empty array", id="string"),
        pytest.param(["%%%garbage"], r"^x5c\[0\] is not standard base64", id="garbage-b64"),
        pytest.param(["Z2FyYmFnZQ=="], r"^x5c\[0\] is not a DER-encoded X\.509", id="garbage-der"),
        pytest.param([None], r"^x5c\[0\] must be a non-empty string", id="null"),
    ],
)
def test_x5c_syntax_errors(pki: Pki, clock: ManualClock, x5c: object, match: str) -> None:
    jwk = dict(jwk_for(pki.leaf_key, [pki.leaf]), x5c=x5c)
    _fails(jwk, TEST, clock, match)


def test_garbage_in_a_later_entry(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    truncated = pki.root.public_bytes(serialization.Encoding.DER)[:-10]
    jwk["x5c"].append(base64.b64encode(truncated).decode("ascii"))
    _fails(jwk, TEST, clock, r"^x5c\[2\] is not a DER-encoded X\.509 certificate$")


def test_missing_x5c(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf])
    del jwk["x5c"]
    _fails(jwk, TEST, clock, r"^x5c is missing")


# --- revocation hook, policies, validate_destination_key -----------------------------------------


def test_revocation_checker_sees_the_path(pki: Pki, clock: ManualClock) -> None:
    seen: list[tuple[tuple[x509.Certificate, ...], datetime]] = []

    def checker(path: tuple[x509.Certificate, ...], when: datetime) -> None:
        seen.append((path, when))
        if any(cert.subject == pki.inter.subject for cert in path):
            raise CertificateError("x5c[1] (CN=Test Intermediate CA) is revoked")

    policy = TrustPolicy.strict([pki.root], revocation_checker=checker)
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    _fails(jwk, policy, clock, "is revoked")
    assert seen == [((pki.leaf, pki.inter, pki.root), NOW)]


def test_from_pem(pki: Pki, tmp_path: Path, clock: ManualClock) -> None:
    root_pem = pki.root.public_bytes(serialization.Encoding.PEM)
    inter_pem = pki.inter.public_bytes(serialization.Encoding.PEM)
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(root_pem + inter_pem)
    assert TrustPolicy.from_pem(root_pem).trust_anchors == (pki.root,)
    assert TrustPolicy.from_pem(root_pem.decode()).trust_anchors == (pki.root,)
    assert TrustPolicy.from_pem(bundle).trust_anchors == (pki.root, pki.inter)
    policy = TrustPolicy.from_pem([str(bundle), inter_pem], allow_self_signed=True)
    assert policy.trust_anchors == (pki.root, pki.inter, pki.inter)
    assert policy.allow_self_signed
    assert policy.name == "test"
    strict = TrustPolicy.from_pem(bundle)
    assert (strict.allow_self_signed, strict.name) == (False, "strict")
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter])
    validate_x5c(jwk, strict, purpose=KeyPurpose.ENCRYPTION, clock=clock)

    with pytest.raises(FileNotFoundError, match=r"missing\.pem"):
        TrustPolicy.from_pem(tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(CertificateError, match="contains no PEM certificate"):
        TrustPolicy.from_pem(tmp_path / "junk.pem")
    with pytest.raises(ValueError, match="no PEM"):  # TrustAnchorError is a ValueError too
        TrustPolicy.from_pem(tmp_path / "junk.pem")
    broken = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(CertificateError, match="invalid PEM certificate"):
        TrustPolicy.from_pem(broken)


def test_policy_constructors() -> None:
    test = TrustPolicy.test_environment()
    assert (test.allow_self_signed, test.require_x5c, test.name) == (True, True, "test")
    strict = TrustPolicy.strict([])
    assert (strict.allow_self_signed, strict.trust_anchors, strict.name) == (False, (), "strict")
    assert TrustPolicy(trust_anchors=[]).trust_anchors == ()  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        TrustPolicy(trust_anchors=("not a certificate",))  # type: ignore[arg-type]


def test_validate_destination_key(pki: Pki, clock: ManualClock) -> None:
    jwk = jwk_for(pki.leaf_key, [pki.leaf, pki.inter, pki.root])
    key = validate_destination_key(jwk, policy=TEST, clock=clock)
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.public_numbers() == pki.leaf_key.public_key().public_numbers()
    key = validate_destination_key(
        jwk, purpose=KeyPurpose.ENCRYPTION, policy=TrustPolicy.strict([pki.root]), clock=clock
    )
    with pytest.raises(CertificateError, match="self-signed root"):
        validate_destination_key(jwk, policy=TrustPolicy.strict(()), clock=clock)
    # key rules are checked first and reported as such
    with pytest.raises(KeyRuleViolationError, match=r"\$\.alg: must be 'PS512'"):
        validate_destination_key(jwk, purpose=KeyPurpose.SIGNATURE, policy=TEST, clock=clock)
    # without x5c: a key rule violation unless the policy does not require x5c
    bare = {k: v for k, v in jwk.items() if k != "x5c"}
    with pytest.raises(KeyRuleError, match=r"\$\.x5c: missing"):
        validate_destination_key(bare, policy=TEST, clock=clock)
    lax = TrustPolicy(require_x5c=False)
    assert validate_destination_key(bare, policy=lax, clock=clock).key_size == 4096
    # ... but an x5c that is present is always validated
    with pytest.raises(CertificateError):
        validate_destination_key(jwk, policy=lax, clock=clock)
