"""Interoperability with jwcrypto (test-only oracle): JWE both ways, PS512 JWS both ways."""

from __future__ import annotations

import io
import json
import os
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwcrypto import jwe as jjwe
from jwcrypto import jwk as jjwk
from jwcrypto import jws as jjws
from tests.keycache import rsa_key

from fitconnect_kit.protocol.errors import (
    InvalidHeaderError,
    SignatureError,
    UnsupportedAlgorithmError,
)
from fitconnect_kit.protocol.jose import jwe, jws
from fitconnect_kit.protocol.jose.jwk import jwk_from_private_key, public_jwk


@pytest.fixture(scope="module")
def key0() -> rsa.RSAPrivateKey:
    return rsa_key(0)


@pytest.fixture(scope="module")
def theirs(key0: rsa.RSAPrivateKey) -> jjwk.JWK:
    """The same key pair as a jwcrypto JWK."""
    return jjwk.JWK(**jwk_from_private_key(key0, kid="k0"))


def jwcrypto_encrypt(plaintext: bytes, key: jjwk.JWK, header: dict[str, Any]) -> str:
    token = jjwe.JWE(plaintext, protected=json.dumps(header))
    token.add_recipient(key)
    result: str = token.serialize(compact=True)
    return result


def jwcrypto_decrypt(token: str | bytes, key: jjwk.JWK) -> tuple[bytes, dict[str, Any]]:
    obj = jjwe.JWE()
    obj.deserialize(token.decode() if isinstance(token, bytes) else token, key=key)
    return obj.payload, json.loads(obj.objects["protected"])


# --- JWE ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 17, 10_000])
def test_our_jwe_decrypts_in_jwcrypto(key0: rsa.RSAPrivateKey, theirs: jjwk.JWK, size: int) -> None:
    plaintext = os.urandom(size)
    token = jwe.encrypt(plaintext, key0.public_key(), kid="k0", cty="application/json").token
    payload, header = jwcrypto_decrypt(token, theirs)
    assert payload == plaintext
    assert header == {
        "alg": "RSA-OAEP-256",
        "enc": "A256GCM",
        "kid": "k0",
        "cty": "application/json",
    }


def test_our_streamed_jwe_decrypts_in_jwcrypto(key0: rsa.RSAPrivateKey, theirs: jjwk.JWK) -> None:
    plaintext = os.urandom(2 * (1 << 20) + 7)
    sink = io.BytesIO()
    jwe.encrypt_stream(io.BytesIO(plaintext), sink, key0.public_key(), kid="k0", chunk_size=65_536)
    assert jwcrypto_decrypt(sink.getvalue(), theirs)[0] == plaintext


def test_our_jwe_from_a_public_jwk_decrypts_in_jwcrypto(
    key0: rsa.RSAPrivateKey, theirs: jjwk.JWK
) -> None:
    destination_key = public_jwk(
        jwk_from_private_key(key0, kid="k0", alg="RSA-OAEP-256", key_ops=["wrapKey"])
    )
    token = jwe.encrypt(b"to the authority", destination_key).token
    assert jwcrypto_decrypt(token, theirs)[0] == b"to the authority"


@pytest.mark.parametrize("zipped", [False, True])
@pytest.mark.parametrize("size", [1, 5000])
def test_jwcrypto_jwe_decrypts_here(
    key0: rsa.RSAPrivateKey, theirs: jjwk.JWK, zipped: bool, size: int
) -> None:
    plaintext = (b"FIT-Connect " * size)[:size]
    header: dict[str, Any] = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k0"}
    if zipped:
        header["zip"] = "DEF"
    token = jwcrypto_encrypt(plaintext, theirs.public(), header)

    result = jwe.decrypt(token, key0)
    assert result.plaintext == plaintext
    assert result.header == header

    sink = io.BytesIO()
    streamed = jwe.decrypt_stream(io.BytesIO(token.encode()), sink, key0, chunk_size=333)
    assert sink.getvalue() == plaintext
    assert streamed.plaintext_sha512 == result.plaintext_sha512


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "k0"}, UnsupportedAlgorithmError),
        ({"alg": "RSA-OAEP-256", "enc": "A128GCM", "kid": "k0"}, UnsupportedAlgorithmError),
        ({"alg": "RSA-OAEP-256", "enc": "A256CBC-HS512", "kid": "k0"}, UnsupportedAlgorithmError),
        ({"alg": "RSA-OAEP-256", "enc": "A256GCM"}, InvalidHeaderError),
    ],
)
def test_jwcrypto_jwe_with_other_algorithms_is_refused(
    key0: rsa.RSAPrivateKey, theirs: jjwk.JWK, header: dict[str, Any], error: type[Exception]
) -> None:
    token = jwcrypto_encrypt(b"payload", theirs.public(), header)
    with pytest.raises(error):
        jwe.decrypt(token, key0)
    with pytest.raises(error):
        jwe.parse(token)


# --- JWS PS512 ----------------------------------------------------------------------------------

SET_HEADER = {"typ": "secevent+jwt", "alg": "PS512", "kid": "k0"}


def test_our_ps512_jws_verifies_in_jwcrypto(key0: rsa.RSAPrivateKey, theirs: jjwk.JWK) -> None:
    payload = json.dumps({"jti": "4ac47caa-bce1-435a-b04f-3322b224b32e"}).encode()
    token = jws.sign_compact(SET_HEADER, payload, key0)
    verifier = jjws.JWS()
    verifier.deserialize(token)
    verifier.verify(theirs.public())
    assert verifier.payload == payload
    assert json.loads(verifier.objects["protected"]) == SET_HEADER


def test_jwcrypto_ps512_jws_verifies_here(key0: rsa.RSAPrivateKey, theirs: jjwk.JWK) -> None:
    signer = jjws.JWS(b'{"events":{}}')
    signer.add_signature(theirs, alg="PS512", protected=json.dumps(SET_HEADER))
    token = signer.serialize(compact=True)
    verified = jws.verify_compact(token, key0.public_key())
    assert verified.payload == b'{"events":{}}'
    assert verified.kid == "k0"
    with pytest.raises(SignatureError):
        jws.verify_compact(token, rsa_key(1).public_key())


@pytest.mark.parametrize("alg", ["PS256", "RS512", "RS256", "HS256"])
def test_jwcrypto_jws_with_another_alg_is_refused(
    key0: rsa.RSAPrivateKey, theirs: jjwk.JWK, alg: str
) -> None:
    key = jjwk.JWK.generate(kty="oct", size=256) if alg.startswith("HS") else theirs
    signer = jjws.JWS(b"{}")
    signer.add_signature(key, alg=alg, protected=json.dumps({"alg": alg, "kid": "k0"}))
    token = signer.serialize(compact=True)
    with pytest.raises(UnsupportedAlgorithmError):
        jws.verify_compact(token, key0.public_key())
