"""One-shot JWE (RSA-OAEP-256 + A256GCM): round trips, strictness, key rules, no oracle."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from tests.keycache import rsa_key

from fitconnect_kit.protocol.errors import (
    DecryptionError,
    InvalidHeaderError,
    InvalidKeyError,
    MalformedJoseError,
    UnsupportedAlgorithmError,
)
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import jwk_from_private_key, public_jwk

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
BASE_HEADER: dict[str, Any] = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k0"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def craft(
    header: dict[str, Any] | bytes,
    plaintext: bytes,
    public: rsa.RSAPublicKey,
    *,
    cek: bytes | None = None,
    iv: bytes | None = None,
) -> str:
    """A cryptographically valid JWE with an arbitrary header, built without our code."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    protected = b64(raw)
    cek = cek or os.urandom(32)
    iv = iv or os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    parts = (
        protected,
        b64(public.encrypt(cek, OAEP)),
        b64(iv),
        b64(sealed[:-16]),
        b64(sealed[-16:]),
    )
    return ".".join(parts)


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


@pytest.fixture(scope="module")
def key0() -> rsa.RSAPrivateKey:
    return rsa_key(0)


@pytest.fixture(scope="module")
def key1() -> rsa.RSAPrivateKey:
    return rsa_key(1)


@pytest.fixture(scope="module")
def token(key0: rsa.RSAPrivateKey) -> str:
    return jwe.encrypt(b"hello FIT-Connect", key0.public_key(), kid="k0", cty="text/plain").token


def replace_segment(token: str, index: int, value: str) -> str:
    parts = token.split(".")
    parts[index] = value
    return ".".join(parts)


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 4, 15, 16, 17, 1000, 65_537])
def test_round_trip(key0: rsa.RSAPrivateKey, size: int) -> None:
    plaintext = os.urandom(size)
    part = jwe.encrypt(plaintext, key0.public_key(), kid="k0", cty="application/pdf")
    assert part.plaintext_length == size
    assert part.plaintext_sha512 == hashlib.sha512(plaintext).hexdigest()
    assert part.authentication_tag == part.token.rsplit(".", 1)[1]
    assert len(part.token) == jwe.compact_length(size, kid="k0", cty="application/pdf")

    result = jwe.decrypt(part.token, key0)
    assert result.plaintext == plaintext
    assert result.plaintext_sha512 == part.plaintext_sha512
    assert result.authentication_tag == part.authentication_tag
    assert result.kid == "k0"
    assert result.cty == "application/pdf"
    # bytes work as well as str
    assert jwe.decrypt(part.token.encode("ascii"), key0).plaintext == plaintext


def test_header_is_compact_json_in_fixed_order(key0: rsa.RSAPrivateKey) -> None:
    with_cty = jwe.encrypt(b"x", key0.public_key(), kid="k0", cty="application/json").token
    assert unb64(with_cty.split(".")[0]) == (
        b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"k0","cty":"application/json"}'
    )
    without = jwe.encrypt(b"x", key0.public_key(), kid="k0").token
    assert unb64(without.split(".")[0]) == b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"k0"}'


def test_segment_sizes(key0: rsa.RSAPrivateKey, token: str) -> None:
    _header, encrypted_key, iv, ciphertext, tag = token.split(".")
    assert len(unb64(encrypted_key)) == 512
    assert len(unb64(iv)) == 12
    assert len(unb64(tag)) == 16
    assert len(unb64(ciphertext)) == len(b"hello FIT-Connect")


def test_fresh_cek_and_iv_every_time(key0: rsa.RSAPrivateKey) -> None:
    first = jwe.encrypt(b"same", key0.public_key(), kid="k0").token.split(".")
    second = jwe.encrypt(b"same", key0.public_key(), kid="k0").token.split(".")
    assert first[1] != second[1]
    assert first[2] != second[2]


def test_compact_length_minimum_from_the_reference() -> None:
    # Reference §3.6: a JWE of an empty payload with a 4096-bit key has at least 776 chars.
    assert jwe.compact_length(0, kid="k", cty=None) >= 776
    assert jwe.compact_length(10, kid="k", cty=None, key_bytes=256) < 776


def test_compact_length_with_non_ascii_kid(key0: rsa.RSAPrivateKey) -> None:
    part = jwe.encrypt(b"abc", key0.public_key(), kid="schlüssel-ä", cty=None)
    assert len(part.token) == jwe.compact_length(3, kid="schlüssel-ä", cty=None)
    assert jwe.decrypt(part.token, key0).kid == "schlüssel-ä"


def test_decrypted_part_repr_hides_plaintext(key0: rsa.RSAPrivateKey, token: str) -> None:
    assert "hello" not in repr(jwe.decrypt(token, key0))
    assert "hello" not in repr(jwe.parse(token))


# --- encryption key rules -----------------------------------------------------------------------


def test_encrypt_with_public_jwk_takes_its_kid(key0: rsa.RSAPrivateKey) -> None:
    jwk = public_jwk(
        jwk_from_private_key(key0, kid="dest-key", alg="RSA-OAEP-256", key_ops=["wrapKey"])
    )
    part = jwe.encrypt(b"data", jwk)
    assert jwe.parse(part.token).kid == "dest-key"
    assert jwe.decrypt(part.token, key0).plaintext == b"data"
    # Naming the same kid explicitly is fine, a different one is a mistake.
    jwe.encrypt(b"data", jwk, kid="dest-key")
    with pytest.raises(InvalidKeyError, match="does not match"):
        jwe.encrypt(b"data", jwk, kid="other")


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"alg": "PS512"}, "not RSA-OAEP-256"),
        ({"alg": "RSA-OAEP"}, "not RSA-OAEP-256"),
        ({"key_ops": ["verify"]}, "wrapKey"),
        ({"key_ops": ["unwrapKey"]}, "wrapKey"),
        ({"key_ops": "wrapKey"}, "wrapKey"),
        ({"use": "sig"}, "use"),
        ({"kid": 7}, "kid"),
    ],
)
def test_encrypt_refuses_unsuitable_jwk(
    key0: rsa.RSAPrivateKey, members: dict[str, Any], message: str
) -> None:
    jwk = {**public_jwk(jwk_from_private_key(key0, kid="k0")), **members}
    with pytest.raises(InvalidKeyError, match=message):
        jwe.encrypt(b"data", jwk)


def test_encrypt_refuses_non_rsa_and_private_keys(key0: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidKeyError):
        jwe.encrypt(b"data", {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA", "kid": "k"})
    with pytest.raises(InvalidKeyError, match="public key"):
        jwe.encrypt(b"data", key0, kid="k0")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        jwe.encrypt(b"data", "not a key", kid="k0")  # type: ignore[arg-type]


def test_encrypt_needs_a_kid(key0: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidHeaderError, match="kid"):
        jwe.encrypt(b"data", key0.public_key())
    with pytest.raises(InvalidHeaderError, match="kid"):
        jwe.encrypt(b"data", key0.public_key(), kid="")
    with pytest.raises(InvalidHeaderError, match="cty"):
        jwe.encrypt(b"data", key0.public_key(), kid="k", cty="")


def test_encryption_key_must_have_4096_bits() -> None:
    small = rsa_key(0, bits=2048)
    with pytest.raises(InvalidKeyError, match="4096"):
        jwe.encrypt(b"data", small.public_key(), kid="k")
    # The bound can be relaxed explicitly (tests, other profiles), on both sides.
    part = jwe.encrypt(b"data", small.public_key(), kid="k", min_bits=2048)
    with pytest.raises(InvalidKeyError, match="4096"):
        jwe.decrypt(part.token, small)
    assert jwe.decrypt(part.token, small, min_bits=2048).plaintext == b"data"


# --- decryption keys and selection by kid -------------------------------------------------------


def test_decrypt_selects_by_kid_among_jwks(
    key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey
) -> None:
    token = jwe.encrypt(b"rotated", key1.public_key(), kid="new").token
    jwks = [
        jwk_from_private_key(key0, kid="old", alg="RSA-OAEP-256", key_ops=["unwrapKey"]),
        jwk_from_private_key(key1, kid="new", alg="RSA-OAEP-256", key_ops=["unwrapKey"]),
    ]
    assert jwe.decrypt(token, jwks).plaintext == b"rotated"
    assert jwe.decrypt(token, {"keys": jwks}).plaintext == b"rotated"  # a JWK Set


def test_decrypt_selects_by_kid_in_mapping(
    key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey
) -> None:
    keys = {"k0": key0, "k1": key1}
    for kid, key in keys.items():
        token = jwe.encrypt(kid.encode(), key.public_key(), kid=kid).token
        assert jwe.decrypt(token, keys).plaintext == kid.encode()


def test_unknown_kid(key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey, token: str) -> None:
    with pytest.raises(jwe.KeyNotFoundError, match="'k0'"):
        jwe.decrypt(token, {"other": key0})
    with pytest.raises(jwe.KeyNotFoundError):
        jwe.decrypt(token, [jwk_from_private_key(key0, kid="other")])
    with pytest.raises(jwe.KeyNotFoundError):
        jwe.decrypt(token, jwk_from_private_key(key0, kid="other"))  # one JWK, other kid
    assert issubclass(jwe.KeyNotFoundError, DecryptionError)


def test_single_private_jwk(key0: rsa.RSAPrivateKey, token: str) -> None:
    # Without kid it is used as is; with the token's kid too; no key_ops is fine for decryption.
    jwk = jwk_from_private_key(key0)
    assert jwe.decrypt(token, jwk).plaintext == b"hello FIT-Connect"


def test_bare_key_is_used_whatever_the_kid(key0: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(b"x", key0.public_key(), kid="anything").token
    assert jwe.decrypt(token, key0).plaintext == b"x"


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"alg": "RSA-OAEP"}, "not RSA-OAEP-256"),
        ({"key_ops": ["wrapKey"]}, "unwrapKey"),
        ({"use": "sig"}, "use"),
    ],
)
def test_decrypt_refuses_unsuitable_jwk(
    key0: rsa.RSAPrivateKey, token: str, members: dict[str, Any], message: str
) -> None:
    jwk = {**jwk_from_private_key(key0, kid="k0"), **members}
    with pytest.raises(InvalidKeyError, match=message):
        jwe.decrypt(token, jwk)


def test_decrypt_refuses_public_jwk_and_junk(key0: rsa.RSAPrivateKey, token: str) -> None:
    with pytest.raises(InvalidKeyError, match="private key is needed"):
        jwe.decrypt(token, public_jwk(jwk_from_private_key(key0, kid="k0")))
    with pytest.raises(InvalidKeyError):
        jwe.decrypt(token, "key")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        jwe.decrypt(token, [key0])  # type: ignore[list-item]
    with pytest.raises(InvalidKeyError):
        jwe.decrypt(token, {"k0": "not a key"})  # type: ignore[dict-item]


def test_load_private_keys(key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey) -> None:
    jwks = {"keys": [jwk_from_private_key(key0, kid="a"), jwk_from_private_key(key1, kid="b")]}
    keys = jwe.load_private_keys(jwks)
    assert set(keys) == {"a", "b"}
    token = jwe.encrypt(b"x", key1.public_key(), kid="b").token
    assert jwe.decrypt(token, keys).plaintext == b"x"
    with pytest.raises(InvalidKeyError, match="kid"):
        jwe.load_private_keys([jwk_from_private_key(key0)])
    with pytest.raises(InvalidKeyError, match="unwrapKey"):
        jwe.load_private_keys([jwk_from_private_key(key0, kid="a", key_ops=["wrapKey"])])


# --- no decryption oracle -----------------------------------------------------------------------


def _failure_message(token: str, key: rsa.RSAPrivateKey) -> str:
    with pytest.raises(DecryptionError) as info:
        jwe.decrypt(token, key)
    return str(info.value)


def test_every_crypto_failure_looks_the_same(
    key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey, token: str
) -> None:
    _header, encrypted_key, _iv, ciphertext, tag = token.split(".")
    flipped_ct = b64(bytes([unb64(ciphertext)[0] ^ 1]) + unb64(ciphertext)[1:])
    flipped_tag = b64(unb64(tag)[:-1] + bytes([unb64(tag)[-1] ^ 0x80]))
    other_header = b64(b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"k0"}')  # AAD changes
    cases = {
        "wrong key": (token, key1),
        "random wrapped key": (replace_segment(token, 1, b64(os.urandom(512))), key0),
        "short wrapped key": (replace_segment(token, 1, b64(unb64(encrypted_key)[:-1])), key0),
        "wrapped other length CEK": (
            replace_segment(token, 1, b64(key0.public_key().encrypt(os.urandom(16), OAEP))),
            key0,
        ),
        "tampered ciphertext": (replace_segment(token, 3, flipped_ct), key0),
        "tampered tag": (replace_segment(token, 4, flipped_tag), key0),
        "tampered header": (replace_segment(token, 0, other_header), key0),
        "tampered iv": (replace_segment(token, 2, b64(os.urandom(12))), key0),
        "truncated ciphertext": (replace_segment(token, 3, b64(unb64(ciphertext)[:-1])), key0),
    }
    messages = {name: _failure_message(tok, key) for name, (tok, key) in cases.items()}
    assert len(set(messages.values())) == 1, messages
    assert "hello" not in next(iter(messages.values()))


# --- strict syntax and header rules -------------------------------------------------------------


def _header(**changes: Any) -> str:
    header = {**BASE_HEADER, **changes}
    return b64(json.dumps({k: v for k, v in header.items() if v is not None}).encode())


MALFORMED_EDITS: dict[str, tuple[int, str]] = {
    "header not json": (0, b64(b"not json")),
    "header json array": (0, b64(b'["alg"]')),
    "header duplicate member": (
        0,
        b64(b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"k0","kid":"k1"}'),
    ),
    "header NaN": (0, b64(b'{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"k0","x":NaN}')),
    "header not utf-8": (0, b64(b'{"alg":"\xff"}')),
    "header empty": (0, ""),
    "header padded": (0, _header() + "=="),
    "header plus sign": (0, _header()[:-1] + "+"),
    "encrypted key empty": (1, ""),
    "encrypted key slash": (1, "ab/c"),
    "iv 8 bytes": (2, b64(os.urandom(8))),
    "iv 16 bytes": (2, b64(os.urandom(16))),
    "iv bad char": (2, "AAAAAAAAAAAAAAA!"),
    "ciphertext space": (3, "AAAA AAA"),
    "ciphertext impossible length": (3, "AAAAA"),
    "ciphertext padding": (3, "AA=="),
    "ciphertext non-canonical": (3, "AB"),
    "tag 12 bytes": (4, b64(os.urandom(12))),
    "tag 17 bytes": (4, b64(os.urandom(17))),
    "tag empty": (4, ""),
    "tag non-canonical": (4, "A" * 21 + "B"),
    "tag bad char": (4, "A" * 21 + "*"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED_EDITS))
def test_malformed_segments(token: str, key0: rsa.RSAPrivateKey, name: str) -> None:
    index, value = MALFORMED_EDITS[name]
    broken = replace_segment(token, index, value)
    with pytest.raises(MalformedJoseError):
        jwe.parse(broken)
    with pytest.raises(MalformedJoseError):
        jwe.decrypt(broken, key0)


@pytest.mark.parametrize("count", [1, 3, 4, 6, 7])
def test_segment_count(token: str, count: int) -> None:
    parts = token.split(".")
    broken = ".".join((parts + parts)[:count])
    with pytest.raises(MalformedJoseError, match="5 segments"):
        jwe.parse(broken)


def test_non_ascii_and_whitespace(token: str, key0: rsa.RSAPrivateKey) -> None:
    with pytest.raises(MalformedJoseError):
        jwe.parse(token + "ä")
    with pytest.raises(MalformedJoseError):
        jwe.parse(" " + token)
    with pytest.raises(MalformedJoseError):
        jwe.parse(token + "\nX")
    with pytest.raises(MalformedJoseError):
        jwe.parse(token.replace(".", ". ", 1))
    # A trailing newline (files, HTTP bodies) is tolerated.
    assert jwe.decrypt(token + "\r\n", key0).plaintext == b"hello FIT-Connect"
    assert jwe.parse((token + " \n").encode()).authentication_tag == token.rsplit(".", 1)[1]


HEADER_CASES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"alg": "RSA-OAEP"}, UnsupportedAlgorithmError),
    ({"alg": "RSA1_5"}, UnsupportedAlgorithmError),
    ({"alg": "dir"}, UnsupportedAlgorithmError),
    ({"alg": None}, UnsupportedAlgorithmError),
    ({"enc": "A128GCM"}, UnsupportedAlgorithmError),
    ({"enc": "A256CBC-HS512"}, UnsupportedAlgorithmError),
    ({"enc": None}, UnsupportedAlgorithmError),
    ({"kid": None}, InvalidHeaderError),
    ({"kid": 17}, InvalidHeaderError),
    ({"kid": ""}, InvalidHeaderError),
    ({"crit": ["exp"]}, InvalidHeaderError),
    ({"zip": "GZIP"}, InvalidHeaderError),
    ({"zip": None, "cty": 5}, InvalidHeaderError),
    ({"jku": "https://example.org/jwks"}, InvalidHeaderError),
    ({"jwk": {"kty": "RSA"}}, InvalidHeaderError),
    ({"x5u": "https://example.org/cert"}, InvalidHeaderError),
    ({"x5c": ["MIIB"]}, InvalidHeaderError),
]


@pytest.mark.parametrize(("changes", "error"), HEADER_CASES)
def test_header_rules(
    key0: rsa.RSAPrivateKey, changes: dict[str, Any], error: type[Exception]
) -> None:
    header = {k: v for k, v in {**BASE_HEADER, **changes}.items() if v is not None}
    # Cryptographically valid token: only the header rules may refuse it.
    token = craft(header, b"payload", key0.public_key())
    with pytest.raises(error):
        jwe.parse(token)
    with pytest.raises(error):
        jwe.decrypt(token, key0)
    with pytest.raises(error):
        jwe.check_header(header)


def test_check_header_accepts_fit_connect_headers() -> None:
    jwe.check_header(BASE_HEADER)
    jwe.check_header({**BASE_HEADER, "cty": "application/json", "zip": "DEF", "typ": "JOSE"})
    with pytest.raises(MalformedJoseError):
        jwe.check_header(["alg"])  # type: ignore[arg-type]


def test_unknown_header_members_are_allowed(key0: rsa.RSAPrivateKey) -> None:
    token = craft({**BASE_HEADER, "x-vendor": 1}, b"ok", key0.public_key())
    assert jwe.decrypt(token, key0).plaintext == b"ok"


def test_parse(token: str) -> None:
    parsed = jwe.parse(token)
    assert parsed.header == {
        "alg": "RSA-OAEP-256",
        "enc": "A256GCM",
        "kid": "k0",
        "cty": "text/plain",
    }
    assert parsed.protected == token.split(".")[0]
    assert len(parsed.encrypted_key) == 512
    assert len(parsed.iv) == 12
    assert len(parsed.tag) == 16
    assert parsed.authentication_tag == token.rsplit(".", 1)[1]
    assert parsed.kid == "k0"
    assert parsed.cty == "text/plain"
    assert not parsed.compressed


def test_oversized_segments_are_refused(token: str) -> None:
    with pytest.raises(MalformedJoseError, match="too long"):
        jwe.parse(replace_segment(token, 0, "A" * 10_000))
    with pytest.raises(MalformedJoseError, match="too long"):
        jwe.parse(replace_segment(token, 1, b64(os.urandom(4096))))


def test_authentication_tag(token: str) -> None:
    tag = token.rsplit(".", 1)[1]
    assert jwe.authentication_tag(token) == tag
    assert jwe.authentication_tag(token.encode()) == tag
    assert jwe.authentication_tag(token + "\n") == tag
    with pytest.raises(MalformedJoseError):
        jwe.authentication_tag("no-dots-at-all")
    with pytest.raises(MalformedJoseError):
        jwe.authentication_tag(token + "A")
    with pytest.raises(MalformedJoseError):
        jwe.authentication_tag(replace_segment(token, 4, "A" * 21 + "B"))
    with pytest.raises(MalformedJoseError):
        jwe.authentication_tag(replace_segment(token, 4, "A" * 21 + "é"))


# --- zip: DEF -----------------------------------------------------------------------------------


def test_zip_def_is_accepted(key0: rsa.RSAPrivateKey) -> None:
    plaintext = b'{"data": "' + b"abc" * 1000 + b'"}'
    token = craft({**BASE_HEADER, "zip": "DEF"}, deflate_raw(plaintext), key0.public_key())
    result = jwe.decrypt(token, key0)
    assert result.plaintext == plaintext
    assert result.plaintext_sha512 == hashlib.sha512(plaintext).hexdigest()
    assert result.header["zip"] == "DEF"


def test_zip_bomb_is_bounded(key0: rsa.RSAPrivateKey) -> None:
    bomb = deflate_raw(bytes(8 << 20))  # 8 MiB of zeros in ~8 KiB
    token = craft({**BASE_HEADER, "zip": "DEF"}, bomb, key0.public_key())
    assert len(token) < 20_000
    with pytest.raises(jwe.PlaintextTooLargeError):
        jwe.decrypt(token, key0, max_plaintext_size=1 << 20)
    assert len(jwe.decrypt(token, key0, max_plaintext_size=8 << 20).plaintext) == 8 << 20


def test_uncompressed_size_limit(key0: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(bytes(1000), key0.public_key(), kid="k0").token
    with pytest.raises(jwe.PlaintextTooLargeError):
        jwe.decrypt(token, key0, max_plaintext_size=999)
    assert jwe.decrypt(token, key0, max_plaintext_size=1000).plaintext == bytes(1000)


@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe not deflate", deflate_raw(b"abc")[:-1], deflate_raw(b"abc") + b"trailing"],
)
def test_zip_def_invalid_content(key0: rsa.RSAPrivateKey, content: bytes) -> None:
    token = craft({**BASE_HEADER, "zip": "DEF"}, content, key0.public_key())
    with pytest.raises(DecryptionError, match="DEFLATE"):
        jwe.decrypt(token, key0)
