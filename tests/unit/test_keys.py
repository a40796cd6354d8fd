"""FIT-Connect key rules for public destination JWKs (protocol/keys.py: key_rule_violations)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.keycache import rsa_key

from fitconnect_kit.protocol.b64 import b64url_encode
from fitconnect_kit.protocol.errors import KeyRuleError, Violation
from fitconnect_kit.protocol.jose.jwk import jwk_from_private_key, jwk_from_public_key
from fitconnect_kit.protocol.keys import (
    ENCRYPTION_ALG,
    MAX_KID_LENGTH,
    MIN_KID_LENGTH,
    MIN_RSA_BITS,
    SIGNATURE_ALG,
    KeyPurpose,
    KeyRuleViolationError,
    check_key_rules,
    infer_purpose,
    key_rule_violations,
)


def _self_signed_x5c(key: rsa.RSAPrivateKey) -> list[str]:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "key rules test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")]


@pytest.fixture(scope="module")
def enc_jwk() -> dict[str, Any]:
    key = rsa_key(0)
    return jwk_from_public_key(
        key.public_key(),
        kid="enc-key-0001",
        alg=ENCRYPTION_ALG,
        key_ops=["wrapKey"],
        x5c=_self_signed_x5c(key),
    )


@pytest.fixture(scope="module")
def sig_jwk() -> dict[str, Any]:
    key = rsa_key(1)
    return jwk_from_public_key(
        key.public_key(),
        kid="sig-key-0001-verify",
        alg=SIGNATURE_ALG,
        key_ops=["verify"],
        x5c=_self_signed_x5c(key),
    )


def _paths(violations: list[Violation]) -> list[str]:
    return [v.path for v in violations]


# --- good keys ---------------------------------------------------------------------------------


def test_good_encryption_key_has_no_violations(enc_jwk: dict[str, Any]) -> None:
    assert key_rule_violations(enc_jwk) == []
    assert key_rule_violations(enc_jwk, KeyPurpose.ENCRYPTION) == []
    assert check_key_rules(enc_jwk) is KeyPurpose.ENCRYPTION


def test_good_signature_key_has_no_violations(sig_jwk: dict[str, Any]) -> None:
    assert key_rule_violations(sig_jwk) == []
    assert check_key_rules(sig_jwk, KeyPurpose.SIGNATURE) is KeyPurpose.SIGNATURE


@pytest.mark.parametrize(("purpose", "use"), [("enc", "enc"), ("sig", "sig")])
def test_matching_use_is_accepted(
    enc_jwk: dict[str, Any], sig_jwk: dict[str, Any], purpose: str, use: str
) -> None:
    jwk = dict(enc_jwk if purpose == "enc" else sig_jwk, use=use)
    assert key_rule_violations(jwk) == []


@pytest.mark.parametrize("length", [MIN_KID_LENGTH, MAX_KID_LENGTH])
def test_kid_length_boundaries_are_accepted(enc_jwk: dict[str, Any], length: int) -> None:
    assert key_rule_violations(dict(enc_jwk, kid="k" * length)) == []


def test_x5c_may_be_absent_when_not_required(enc_jwk: dict[str, Any]) -> None:
    jwk = {k: v for k, v in enc_jwk.items() if k != "x5c"}
    assert key_rule_violations(jwk, require_x5c=False) == []
    assert _paths(key_rule_violations(jwk)) == ["$.x5c"]


def test_constants_match_the_schema() -> None:
    assert (MIN_RSA_BITS, MIN_KID_LENGTH, MAX_KID_LENGTH) == (4096, 8, 64)
    assert (ENCRYPTION_ALG, SIGNATURE_ALG) == ("RSA-OAEP-256", "PS512")
    assert KeyPurpose("encryption") is KeyPurpose.ENCRYPTION
    assert KeyPurpose.SIGNATURE.value == "signature"
    assert f"{KeyPurpose.ENCRYPTION}" == "encryption"


# --- each violation alone ------------------------------------------------------------------------

_DROP = object()


def _odd_even_modulus() -> str:
    """A 4096-bit, 683-character modulus that is even — no valid RSA modulus."""
    return b64url_encode(((1 << 4095) + 2).to_bytes(512, "big"))


def _short_padded_modulus() -> str:
    """683 characters (512 bytes with a leading zero) but only 4088 bits."""
    return b64url_encode(((1 << 4087) + 1).to_bytes(512, "big"))


def _small_key_modulus() -> str:
    n = rsa_key(0, bits=2048).public_key().public_numbers().n
    return b64url_encode(n.to_bytes(256, "big"))


ENC_CASES: list[tuple[str, str, object, str]] = [
    # (id, member, new value or _DROP, expected message fragment) — expected path is $.<member>
    ("kty-missing", "kty", _DROP, "missing"),
    ("kty-ec", "kty", "EC", "must be 'RSA'"),
    ("n-missing", "n", _DROP, "missing"),
    ("n-not-string", "n", 12345, "base64url string"),
    ("n-not-b64url", "n", "ab+/" * 200, "not unpadded base64url"),
    ("e-missing", "e", _DROP, "missing"),
    ("e-3", "e", "Aw", "must be 'AQAB'"),
    ("kid-missing", "kid", _DROP, "missing"),
    ("kid-not-string", "kid", 12345678, "must be a string"),
    ("kid-too-short", "kid", "k" * (MIN_KID_LENGTH - 1), "has 7 characters"),
    ("kid-too-long", "kid", "k" * (MAX_KID_LENGTH + 1), "has 65 characters"),
    ("alg-wrong", "alg", "RSA1_5", "must be 'RSA-OAEP-256'"),
    ("alg-missing", "alg", _DROP, "missing; must be 'RSA-OAEP-256'"),
    ("key_ops-missing", "key_ops", _DROP, "missing"),
    ("key_ops-string", "key_ops", "wrapKey", "array of strings"),
    ("key_ops-empty", "key_ops", [], "is empty"),
    ("use-sig", "use", "sig", "must be 'enc'"),
    ("x5c-missing", "x5c", _DROP, "missing"),
    ("x5c-empty", "x5c", [], "non-empty array"),
    ("x5c-string", "x5c", "MIIB", "non-empty array"),
]


@pytest.mark.parametrize(
    ("member", "value", "fragment"),
    [pytest.param(m, v, f, id=i) for i, m, v, f in ENC_CASES],
)
def test_each_violation_alone(
    enc_jwk: dict[str, Any], member: str, value: object, fragment: str
) -> None:
    jwk = {k: v for k, v in enc_jwk.items() if k != member}
    if value is not _DROP:
        jwk[member] = value
    violations = key_rule_violations(jwk)
    assert _paths(violations) == [f"$.{member}"], violations
    assert fragment in violations[0].message


@pytest.mark.parametrize(
    ("make_n", "fragment"),
    [
        pytest.param(_small_key_modulus, "2048 bits (342 base64url characters)", id="2048-bit"),
        pytest.param(_short_padded_modulus, "4088 bits (683", id="leading-zero-4088-bit"),
        pytest.param(_odd_even_modulus, "not a valid RSA modulus", id="even-modulus"),
    ],
)
def test_modulus_rules(enc_jwk: dict[str, Any], make_n: Callable[[], str], fragment: str) -> None:
    # x5c is dropped (and not required) so that only the modulus rule is under test
    jwk = {k: v for k, v in enc_jwk.items() if k != "x5c"}
    jwk["n"] = make_n()
    violations = key_rule_violations(jwk, require_x5c=False)
    assert _paths(violations) == ["$.n"]
    assert fragment in violations[0].message


@pytest.mark.parametrize(
    ("key_ops", "expected_paths", "fragment"),
    [
        (["wrapKey", "encrypt"], ["$.key_ops[1]"], "does not belong"),
        (["wrapKey", "unwrapKey"], ["$.key_ops[1]"], "private-key operation"),
        (["wrapKey", "wrapKey"], ["$.key_ops[1]"], "duplicate"),
        (["wrapKey", "verify"], ["$.key_ops[1]"], "does not belong"),
        (["wrapKey", 7], ["$.key_ops"], "array of strings"),
        (["encrypt"], ["$.key_ops[0]", "$.key_ops"], "does not belong"),
    ],
)
def test_key_ops_rules(
    enc_jwk: dict[str, Any], key_ops: list[object], expected_paths: list[str], fragment: str
) -> None:
    violations = key_rule_violations(dict(enc_jwk, key_ops=key_ops))
    assert _paths(violations) == expected_paths
    assert fragment in violations[0].message


def test_signature_key_rules(sig_jwk: dict[str, Any]) -> None:
    violations = key_rule_violations(dict(sig_jwk, alg="PS256"), KeyPurpose.SIGNATURE)
    assert _paths(violations) == ["$.alg"]
    assert "must be 'PS512' for a signature key" in violations[0].message

    violations = key_rule_violations(dict(sig_jwk, key_ops=["verify", "sign"]))
    assert _paths(violations) == ["$.key_ops[1]"]

    violations = key_rule_violations(dict(sig_jwk, key_ops=["wrapKey"]))
    assert _paths(violations) == ["$.key_ops[0]", "$.key_ops"]
    assert "must contain 'verify'" in violations[1].message

    assert _paths(key_rule_violations(dict(sig_jwk, use="enc"))) == ["$.use"]


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth"])
def test_private_member_in_public_key_is_a_violation(enc_jwk: dict[str, Any], member: str) -> None:
    violations = key_rule_violations(dict(enc_jwk, **{member: "c2VjcmV0"}))
    assert _paths(violations) == [f"$.{member}"]
    assert "leak" in violations[0].message
    assert "c2VjcmV0" not in violations[0].message


def test_full_private_jwk_reports_members_once_without_material() -> None:
    key = rsa_key(0)
    private = jwk_from_private_key(
        key, kid="enc-key-0001", alg=ENCRYPTION_ALG, key_ops=["unwrapKey"]
    )
    private["x5c"] = _self_signed_x5c(key)
    with pytest.raises(KeyRuleViolationError) as info:
        check_key_rules(private)
    assert _paths(list(info.value.violations)) == ["$.key_ops[0]", "$.key_ops", "$.d"]
    message = str(info.value)
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        assert private[member] not in message
        assert private[member][:16] not in message


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        pytest.param(123, "non-empty string", id="not-a-string"),
        pytest.param("", "non-empty string", id="empty-string"),
        pytest.param("not base64!!", "standard base64", id="garbage"),
        pytest.param("QUJD", "not a DER-encoded X.509 certificate", id="not-der"),
        pytest.param("QUI", "standard base64", id="unpadded"),
    ],
)
def test_x5c_entry_syntax(enc_jwk: dict[str, Any], entry: object, fragment: str) -> None:
    jwk = dict(enc_jwk, x5c=[*enc_jwk["x5c"], entry])
    violations = key_rule_violations(jwk)
    assert _paths(violations) == ["$.x5c[1]"]
    assert fragment in violations[0].message


def test_x5c_in_base64url_is_refused(enc_jwk: dict[str, Any]) -> None:
    der = base64.b64decode(enc_jwk["x5c"][0])
    url = base64.urlsafe_b64encode(der).decode("ascii").rstrip("=")
    assert url != enc_jwk["x5c"][0]  # the DER of a 4096-bit cert always contains +, / or =
    violations = key_rule_violations(dict(enc_jwk, x5c=[url]))
    assert _paths(violations) == ["$.x5c[0]"]


def test_not_an_object() -> None:
    assert _paths(key_rule_violations(["kty", "RSA"])) == ["$"]  # type: ignore[arg-type]
    with pytest.raises(KeyRuleViolationError, match=r"\$: a JWK must be a JSON object"):
        check_key_rules("RSA")  # type: ignore[arg-type]


def test_purpose_not_declared_anywhere(enc_jwk: dict[str, Any]) -> None:
    jwk = {k: v for k, v in enc_jwk.items() if k not in ("alg", "key_ops")}
    violations = key_rule_violations(jwk)
    assert _paths(violations) == ["$.alg", "$.key_ops"]
    assert "'RSA-OAEP-256' (encryption) or 'PS512' (signature)" in violations[0].message


def test_explicit_purpose_overrides_the_declared_one(enc_jwk: dict[str, Any]) -> None:
    violations = key_rule_violations(enc_jwk, KeyPurpose.SIGNATURE)
    assert _paths(violations) == ["$.alg", "$.key_ops[0]", "$.key_ops"]
    with pytest.raises(KeyRuleViolationError):
        check_key_rules(enc_jwk, KeyPurpose.SIGNATURE)


# --- several violations at once ------------------------------------------------------------------


def test_every_violation_is_reported_at_once(enc_jwk: dict[str, Any]) -> None:
    jwk: dict[str, Any] = {
        "kty": "RSA",
        "kid": "short",
        "alg": "RSA1_5",
        "key_ops": ["wrapKey", "unwrapKey", "wrapKey"],
        "use": "sig",
        "n": _small_key_modulus(),
        "e": "Aw",
        "d": "c2VjcmV0LXByaXZhdGUtZXhwb25lbnQ",
        "x5c": ["garbage!"],
    }
    violations = key_rule_violations(jwk)
    assert _paths(violations) == [
        "$.n",
        "$.e",
        "$.kid",
        "$.alg",
        "$.key_ops[1]",
        "$.key_ops[2]",
        "$.use",
        "$.d",
        "$.x5c[0]",
    ]
    with pytest.raises(KeyRuleError) as info:
        check_key_rules(jwk)
    error = info.value
    assert isinstance(error, KeyRuleViolationError)
    assert error.violations == tuple(violations)
    message = str(error)
    assert "\n" not in message
    assert message.startswith("JWK 'short' violates 9 FIT-Connect key rules: ")
    for violation in violations:
        assert str(violation) in message
    assert jwk["d"] not in message


def test_infer_purpose() -> None:
    assert infer_purpose({"alg": "RSA-OAEP-256"}) is KeyPurpose.ENCRYPTION
    assert infer_purpose({"alg": "PS512", "key_ops": ["wrapKey"]}) is KeyPurpose.SIGNATURE
    assert infer_purpose({"key_ops": ["verify"]}) is KeyPurpose.SIGNATURE
    assert infer_purpose({"key_ops": ["unwrapKey"]}) is KeyPurpose.ENCRYPTION
    assert infer_purpose({"key_ops": ["verify", "wrapKey"]}) is None
    assert infer_purpose({"use": "enc"}) is KeyPurpose.ENCRYPTION
    assert infer_purpose({"alg": "RS256"}) is None
    assert infer_purpose([]) is None  # type: ignore[arg-type]


# --- robustness ----------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children),
    max_leaves=8,
)
_members = st.sampled_from(
    ["kty", "kid", "alg", "key_ops", "use", "n", "e", "x5c", "d", "x5t#S256", "oth"]
)


@settings(max_examples=150, deadline=None)
@given(
    base=st.sampled_from(["enc", "sig", "empty"]),
    changes=st.dictionaries(_members, _json, max_size=6),
    purpose=st.sampled_from([None, KeyPurpose.ENCRYPTION, KeyPurpose.SIGNATURE]),
)
def test_any_json_gives_violations_never_an_exception(
    enc_jwk: dict[str, Any],
    sig_jwk: dict[str, Any],
    base: str,
    changes: dict[str, Any],
    purpose: KeyPurpose | None,
) -> None:
    start = {"enc": enc_jwk, "sig": sig_jwk, "empty": {}}[base]
    jwk = {**start, **changes}
    violations = key_rule_violations(jwk, purpose)
    assert all(v.path.startswith("$") for v in violations)
    if violations:
        with pytest.raises(KeyRuleViolationError):
            check_key_rules(jwk, purpose)
    else:
        assert check_key_rules(jwk, purpose) in (KeyPurpose.ENCRYPTION, KeyPurpose.SIGNATURE)
