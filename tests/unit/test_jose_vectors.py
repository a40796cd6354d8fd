"""Real FIT-Connect JOSE material from the test environment (``../shared/reference/vectors``)."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable
from typing import Any

import pytest

from fitconnect_kit.protocol.errors import InvalidKeyError, SignatureError
from fitconnect_kit.protocol.jose import jwe, jws
from fitconnect_kit.protocol.jose.jwk import find_key, jwks_keys

LoadVector = Callable[[str], Any]


@pytest.fixture(scope="module")
def metadata_vector(load_vector: LoadVector) -> dict[str, Any]:
    vector: dict[str, Any] = load_vector("sender-metadata-jwe-zip.json")
    return vector


@pytest.fixture(scope="module")
def set_vector(load_vector: LoadVector) -> dict[str, Any]:
    vector: dict[str, Any] = load_vector("zustelldienst-set.json")
    return vector


def test_metadata_jwe_with_zip_def_decrypts(metadata_vector: dict[str, Any]) -> None:
    result = jwe.decrypt(metadata_vector["jwe"], metadata_vector["private_jwk"])
    assert json.loads(result.plaintext) == metadata_vector["expected_plaintext"]
    assert result.header["zip"] == "DEF"
    assert result.cty == "application/json"
    assert result.kid == metadata_vector["private_jwk"]["kid"]
    assert result.plaintext_sha512 == hashlib.sha512(result.plaintext).hexdigest()
    assert result.authentication_tag == metadata_vector["jwe"].rsplit(".", 1)[1]


def test_metadata_jwe_decrypts_streaming(metadata_vector: dict[str, Any]) -> None:
    # Convert the JWK once (its RSA check is slow) and select it by kid from a mapping.
    keys = jwe.load_private_keys([metadata_vector["private_jwk"]])
    token = metadata_vector["jwe"].encode("ascii")
    sink = io.BytesIO()
    result = jwe.decrypt_stream(
        (token[i : i + 100] for i in range(0, len(token), 100)), sink, keys, chunk_size=64
    )
    assert json.loads(sink.getvalue()) == metadata_vector["expected_plaintext"]
    assert result.plaintext_length == len(sink.getvalue())
    assert result.plaintext_sha512 == hashlib.sha512(sink.getvalue()).hexdigest()
    assert result.header["zip"] == "DEF"


def test_metadata_jwe_passes_the_syntax_checks(metadata_vector: dict[str, Any]) -> None:
    token = metadata_vector["jwe"]
    parsed = jwe.parse(token)
    checker = jwe.JweSyntaxChecker()
    for i in range(0, len(token), 7):
        checker.feed(token[i : i + 7].encode())
    info = checker.finish()
    assert info.header == parsed.header
    assert info.authentication_tag == jwe.authentication_tag(token) == parsed.authentication_tag
    assert len(token) >= 776  # reference §3.6 minimum length


def test_zustelldienst_set_verifies(set_vector: dict[str, Any]) -> None:
    token = set_vector["set_valid"]
    parsed = jws.parse_compact(token)
    key = find_key(jwks_keys(set_vector["jwks"]), parsed.kid or "")
    assert key is not None
    verified = jws.verify_compact(token, key)
    assert json.loads(verified.payload) == set_vector["expected_payload"]
    assert verified.header["typ"] == "secevent+jwt"


def test_set_signed_by_another_key_is_refused(set_vector: dict[str, Any]) -> None:
    key = jwks_keys(set_vector["jwks"])[0]
    with pytest.raises(SignatureError):
        jws.verify_compact(set_vector["set_signed_by_other_key"], key)


def test_jwks_key_with_wrong_alg_is_refused(set_vector: dict[str, Any]) -> None:
    key = jwks_keys(set_vector["jwks_wrong_alg"])[0]
    assert key["alg"] == "PS256"
    with pytest.raises(InvalidKeyError):
        jws.verify_compact(set_vector["set_valid"], key)
