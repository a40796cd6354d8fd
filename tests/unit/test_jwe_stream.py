"""Streaming JWE: identity with one-shot, sources and sinks, syntax checker, atomic files."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import stat
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
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

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
CHUNK = 3 * 1024  # small chunks, so that a few KiB cross many chunk boundaries


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def craft_zip(plaintext_deflated: bytes, public: rsa.RSAPublicKey, kid: str = "k0") -> str:
    """A valid zip:DEF JWE built without our code (content given already deflated)."""
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "zip": "DEF", "kid": kid}
    protected = b64(json.dumps(header).encode())
    cek, iv = os.urandom(32), os.urandom(12)
    sealed = AESGCM(cek).encrypt(iv, plaintext_deflated, protected.encode("ascii"))
    wrapped = public.encrypt(cek, OAEP)
    return ".".join((protected, b64(wrapped), b64(iv), b64(sealed[:-16]), b64(sealed[-16:])))


def deflate_raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.fixture(scope="module")
def key0() -> rsa.RSAPrivateKey:
    return rsa_key(0)


@pytest.fixture(scope="module")
def key1() -> rsa.RSAPrivateKey:
    return rsa_key(1)


@pytest.fixture(scope="module")
def fixed(key0: rsa.RSAPrivateKey) -> dict[str, Any]:
    """Fixed CEK, IV and wrapped key (private test hooks) for deterministic output."""
    cek = os.urandom(32)
    return {
        "_cek": cek,
        "_iv": os.urandom(12),
        "_encrypted_key": key0.public_key().encrypt(cek, OAEP),
    }


# --- one-shot and streaming produce the same bytes ----------------------------------------------

# around 0, base64 quanta (3 bytes) and chunk boundaries (CHUNK is normalized to a multiple of 3)
IDENTITY_SIZES = [
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    CHUNK - 1,
    CHUNK,
    CHUNK + 1,
    CHUNK + 2,
    2 * CHUNK,
    3 * CHUNK + 4,
]


@pytest.mark.parametrize("size", IDENTITY_SIZES)
def test_stream_identical_to_one_shot(
    key0: rsa.RSAPrivateKey, fixed: dict[str, Any], size: int
) -> None:
    plaintext = os.urandom(size)
    public = key0.public_key()
    one_shot = jwe.encrypt(plaintext, public, kid="k0", cty="application/pdf", **fixed)

    sink = io.BytesIO()
    result = jwe.encrypt_stream(
        io.BytesIO(plaintext),
        sink,
        public,
        kid="k0",
        cty="application/pdf",
        chunk_size=CHUNK,
        **fixed,
    )
    assert sink.getvalue() == one_shot.token.encode("ascii")
    assert result.authentication_tag == one_shot.authentication_tag
    assert result.plaintext_sha512 == one_shot.plaintext_sha512
    assert result.plaintext_length == size
    assert result.token_length == len(one_shot.token)

    iterator = jwe.iter_encrypt(
        pieces(plaintext, 7), public, kid="k0", cty="application/pdf", chunk_size=1000, **fixed
    )
    assert b"".join(iterator) == one_shot.token.encode("ascii")
    assert iterator.result == result


def test_stream_identical_with_default_chunks_and_worker_threads(
    key0: rsa.RSAPrivateKey, fixed: dict[str, Any]
) -> None:
    # > 1 MiB: hashing and writing move to worker threads; several default-size chunks.
    plaintext = os.urandom(3 * (1 << 20) + 1)
    one_shot = jwe.encrypt(plaintext, key0.public_key(), kid="k0", **fixed)
    sink = io.BytesIO()
    result = jwe.encrypt_stream(io.BytesIO(plaintext), sink, key0.public_key(), kid="k0", **fixed)
    assert sink.getvalue() == one_shot.token.encode("ascii")
    assert result.plaintext_sha512 == hashlib.sha512(plaintext).hexdigest()

    out = io.BytesIO()
    decrypted = jwe.decrypt_stream(io.BytesIO(sink.getvalue()), out, key0)
    assert out.getvalue() == plaintext
    assert decrypted.plaintext_sha512 == result.plaintext_sha512


class ReadOnly:
    """A file-like object with ``read`` only (no ``readinto``), returning short reads."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 5) if size > 0 else size)


class ShortReads(io.RawIOBase):
    """A raw stream whose ``readinto`` delivers at most 1000 bytes per call."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[:1000]
        return self._data.readinto(view)


def test_all_source_kinds_give_the_same_token(
    key0: rsa.RSAPrivateKey, fixed: dict[str, Any], tmp_path: Path
) -> None:
    plaintext = os.urandom(2 * CHUNK + 11)
    expected = jwe.encrypt(plaintext, key0.public_key(), kid="k0", **fixed).token.encode()
    path = tmp_path / "plain.bin"
    path.write_bytes(plaintext)
    with path.open("rb") as file, path.open("rb", buffering=0) as raw:
        sources: dict[str, Any] = {
            "bytes": plaintext,
            "bytearray": bytearray(plaintext),
            "memoryview": memoryview(plaintext),
            "BytesIO": io.BytesIO(plaintext),
            "file": file,
            "raw file": raw,
            "short reads": ShortReads(plaintext),
            "read only": ReadOnly(plaintext),
            "1-byte pieces": pieces(plaintext, 1),
            "odd pieces with empties": iter([b"", plaintext[:7], b"", plaintext[7:]]),
            "memoryview pieces": (memoryview(p) for p in pieces(plaintext, 1024)),
        }
        for name, source in sources.items():
            sink = io.BytesIO()
            jwe.encrypt_stream(source, sink, key0.public_key(), kid="k0", chunk_size=CHUNK, **fixed)
            assert sink.getvalue() == expected, name


def test_bad_sources(key0: rsa.RSAPrivateKey) -> None:
    with pytest.raises(TypeError):
        jwe.encrypt_stream("text", io.BytesIO(), key0.public_key(), kid="k0")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        jwe.encrypt_stream(iter(["text"]), io.BytesIO(), key0.public_key(), kid="k0")  # type: ignore[list-item]
    with pytest.raises(TypeError):
        jwe.encrypt_stream(io.StringIO("text"), io.BytesIO(), key0.public_key(), kid="k0")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="chunk_size"):
        jwe.encrypt_stream(b"x", io.BytesIO(), key0.public_key(), kid="k0", chunk_size=2)


def test_key_problems_raise_before_any_output(key0: rsa.RSAPrivateKey) -> None:
    with pytest.raises(InvalidKeyError):
        jwe.iter_encrypt(b"x", {"kty": "RSA", "alg": "PS512", "n": "AQAB", "e": "AQAB"})
    sink = io.BytesIO()
    with pytest.raises(InvalidKeyError):
        jwe.encrypt_stream(b"x", sink, rsa_key(0, bits=2048).public_key(), kid="k")
    assert sink.getvalue() == b""


# --- iter_encrypt: length up front, result after ----------------------------------------------


def test_iter_encrypt_length_known_up_front(key0: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    plaintext = os.urandom(5000)
    expected_length = jwe.compact_length(5000, kid="k0", cty="text/plain")
    assert jwe.iter_encrypt(plaintext, key0.public_key(), kid="k0", cty="text/plain").length == (
        expected_length
    )
    path = tmp_path / "p"
    path.write_bytes(plaintext)
    with path.open("rb") as file:
        file.read(1000)  # the remaining length counts
        iterator = jwe.iter_encrypt(file, key0.public_key(), kid="k0", cty="text/plain")
        assert iterator.length == jwe.compact_length(4000, kid="k0", cty="text/plain")
        with pytest.raises(RuntimeError):
            _ = iterator.result
        token = b"".join(iterator)
    assert len(token) == iterator.length == iterator.result.token_length
    assert jwe.decrypt(token, key0).plaintext == plaintext[1000:]

    generated = jwe.iter_encrypt(pieces(plaintext, 100), key0.public_key(), kid="k0")
    assert generated.length is None
    announced = jwe.iter_encrypt(
        pieces(plaintext, 100), key0.public_key(), kid="k0", plaintext_length=5000
    )
    assert announced.length == jwe.compact_length(5000, kid="k0", cty=None)
    assert len(b"".join(announced)) == announced.length


@pytest.mark.parametrize("announced", [4999, 5001, 0])
def test_iter_encrypt_refuses_a_wrong_announced_length(
    key0: rsa.RSAPrivateKey, announced: int
) -> None:
    iterator = jwe.iter_encrypt(
        pieces(bytes(5000), 64), key0.public_key(), kid="k0", plaintext_length=announced
    )
    with pytest.raises(jwe.PlaintextLengthError):
        b"".join(iterator)


def test_iter_encrypt_closed_early_stops_threads(key0: rsa.RSAPrivateKey) -> None:
    before = threading.active_count()
    iterator = jwe.iter_encrypt(bytes(4 << 20), key0.public_key(), kid="k0", chunk_size=1 << 19)
    for _ in range(5):
        next(iterator)
    iterator.close()
    assert threading.active_count() == before
    with pytest.raises(StopIteration):
        next(iterator)


# --- decrypt_stream -----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1000, CHUNK + 1])
@pytest.mark.parametrize("piece_size", [1, 7, 4096])
def test_decrypt_stream_in_odd_pieces(key0: rsa.RSAPrivateKey, size: int, piece_size: int) -> None:
    plaintext = os.urandom(size)
    part = jwe.encrypt(plaintext, key0.public_key(), kid="k0", cty="text/csv")
    sink = io.BytesIO()
    result = jwe.decrypt_stream(pieces(part.token.encode(), piece_size), sink, {"k0": key0})
    assert sink.getvalue() == plaintext
    assert result.plaintext_sha512 == part.plaintext_sha512
    assert result.plaintext_length == size
    assert result.authentication_tag == part.authentication_tag
    assert result.header == {
        "alg": "RSA-OAEP-256",
        "enc": "A256GCM",
        "kid": "k0",
        "cty": "text/csv",
    }


@pytest.mark.parametrize("chunk_size", [1, 5, 4096, 1 << 20])
def test_decrypt_stream_chunk_sizes(key0: rsa.RSAPrivateKey, chunk_size: int) -> None:
    plaintext = os.urandom(2 * CHUNK + 5)
    token = jwe.encrypt(plaintext, key0.public_key(), kid="k0").token
    sink = io.BytesIO()
    jwe.decrypt_stream(io.BytesIO(token.encode() + b"\n"), sink, key0, chunk_size=chunk_size)
    assert sink.getvalue() == plaintext


def test_decrypt_stream_failures(key0: rsa.RSAPrivateKey, key1: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(os.urandom(5000), key0.public_key(), kid="k0").token
    parts = token.split(".")
    tampered_tag = ".".join([*parts[:4], b64(os.urandom(16))])
    messages = set()
    for bad, key in ((token, key1), (tampered_tag, key0)):
        with pytest.raises(DecryptionError) as info:
            jwe.decrypt_stream(io.BytesIO(bad.encode()), io.BytesIO(), key)
        messages.add(str(info.value))
    assert len(messages) == 1

    sink = io.BytesIO()
    with pytest.raises(jwe.KeyNotFoundError):
        jwe.decrypt_stream(io.BytesIO(token.encode()), sink, {"other": key0})
    assert sink.getvalue() == b""  # the kid is checked before anything is decrypted
    with pytest.raises(UnsupportedAlgorithmError):
        jwe.decrypt_stream(io.BytesIO(b"eyJhbGciOiJkaXIifQ..x.y.z"), io.BytesIO(), key0)
    with pytest.raises(MalformedJoseError):
        jwe.decrypt_stream(io.BytesIO(token[:-30].encode()), io.BytesIO(), key0)


def test_decrypt_stream_size_limit(key0: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(bytes(10_000), key0.public_key(), kid="k0").token
    sink = io.BytesIO()
    with pytest.raises(jwe.PlaintextTooLargeError):
        jwe.decrypt_stream(io.BytesIO(token.encode()), sink, key0, max_plaintext_size=4000)
    assert len(sink.getvalue()) <= 4000


# --- zip: DEF in streaming mode -----------------------------------------------------------------


def test_decrypt_stream_zip_def(key0: rsa.RSAPrivateKey) -> None:
    plaintext = b"".join(b"line %d of a compressible document\n" % i for i in range(20_000))
    token = craft_zip(deflate_raw(plaintext), key0.public_key())
    for piece_size in (7, 4096):
        sink = io.BytesIO()
        result = jwe.decrypt_stream(pieces(token.encode(), piece_size), sink, key0, chunk_size=4096)
        assert sink.getvalue() == plaintext
        assert result.plaintext_sha512 == hashlib.sha512(plaintext).hexdigest()
        assert result.plaintext_length == len(plaintext)


def test_decrypt_stream_zip_bomb_is_bounded(key0: rsa.RSAPrivateKey) -> None:
    token = craft_zip(deflate_raw(bytes(16 << 20)), key0.public_key())  # 16 MiB in ~16 KiB
    sink = io.BytesIO()
    with pytest.raises(jwe.PlaintextTooLargeError):
        jwe.decrypt_stream(io.BytesIO(token.encode()), sink, key0, max_plaintext_size=1 << 20)
    assert len(sink.getvalue()) <= 1 << 20


def test_tampered_zip_gives_the_generic_error(key0: rsa.RSAPrivateKey) -> None:
    # Modified unauthenticated plaintext fails to inflate; that must not show in the error.
    token = craft_zip(deflate_raw(os.urandom(3000)), key0.public_key())
    parts = token.split(".")
    ciphertext = bytearray(base64.urlsafe_b64decode(parts[3] + "=" * (-len(parts[3]) % 4)))
    ciphertext[0] ^= 0xFF
    tampered = ".".join([*parts[:3], b64(bytes(ciphertext)), parts[4]])
    wrong_key_message = ""
    with pytest.raises(DecryptionError) as wrong_key:
        jwe.decrypt_stream(io.BytesIO(token.encode()), io.BytesIO(), {"k0": rsa_key(1)})
    wrong_key_message = str(wrong_key.value)
    with pytest.raises(DecryptionError) as info:
        jwe.decrypt_stream(io.BytesIO(tampered.encode()), io.BytesIO(), key0)
    assert str(info.value) == wrong_key_message
    assert "DEFLATE" not in str(info.value)


@pytest.mark.parametrize(
    "content", [b"\xff\xfe not deflate", deflate_raw(b"abc")[:-1], deflate_raw(b"abc") + b"x"]
)
def test_decrypt_stream_invalid_deflate(key0: rsa.RSAPrivateKey, content: bytes) -> None:
    token = craft_zip(content, key0.public_key())
    with pytest.raises(DecryptionError, match="DEFLATE"):
        jwe.decrypt_stream(io.BytesIO(token.encode()), io.BytesIO(), key0)


# --- decrypt_to_path ----------------------------------------------------------------------------


def test_decrypt_to_path(key0: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    plaintext = os.urandom(10_000)
    token = jwe.encrypt(plaintext, key0.public_key(), kid="k0").token
    target = tmp_path / "out.bin"
    result = jwe.decrypt_to_path(io.BytesIO(token.encode()), target, key0, chunk_size=1000)
    assert target.read_bytes() == plaintext
    assert result.plaintext_sha512 == hashlib.sha512(plaintext).hexdigest()
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_decrypt_to_path_leaves_nothing_on_failure(key0: rsa.RSAPrivateKey, tmp_path: Path) -> None:
    token = jwe.encrypt(os.urandom(10_000), key0.public_key(), kid="k0").token
    tampered = token[:-22] + b64(os.urandom(16))
    with pytest.raises(DecryptionError):
        jwe.decrypt_to_path(io.BytesIO(tampered.encode()), tmp_path / "new.bin", key0)
    assert list(tmp_path.iterdir()) == []

    existing = tmp_path / "existing.bin"
    existing.write_bytes(b"keep me")
    with pytest.raises(DecryptionError):
        jwe.decrypt_to_path(io.BytesIO(tampered.encode()), existing, key0)
    assert existing.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["existing.bin"]


# --- JweSyntaxChecker ---------------------------------------------------------------------------


def _check(token: bytes, chunk: int) -> jwe.JweSyntaxInfo:
    checker = jwe.JweSyntaxChecker()
    for piece in pieces(token, chunk):
        checker.feed(piece)
    return checker.finish()


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
@pytest.mark.parametrize("size", [0, 1, 100, 1001])
def test_syntax_checker_agrees_with_parse(key0: rsa.RSAPrivateKey, chunk: int, size: int) -> None:
    token = jwe.encrypt(os.urandom(size), key0.public_key(), kid="k0", cty="application/xml").token
    parsed = jwe.parse(token)
    info = _check(token.encode(), chunk)
    assert info.header == parsed.header
    assert info.authentication_tag == parsed.authentication_tag
    assert info.total_length == len(token)
    assert info.ciphertext_length == size


def test_syntax_checker_accepts_memoryview_and_trailing_newline(key0: rsa.RSAPrivateKey) -> None:
    token = jwe.encrypt(b"abc", key0.public_key(), kid="k0").token.encode() + b"\r\n"
    checker = jwe.JweSyntaxChecker()
    checker.feed(memoryview(token))
    assert checker.finish().total_length == len(token)


def _bad_tokens(good: str) -> dict[str, str]:
    parts = good.split(".")
    header = {"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k0"}

    def with_header(**changes: Any) -> str:
        new = {k: v for k, v in {**header, **changes}.items() if v is not None}
        return ".".join([b64(json.dumps(new).encode()), *parts[1:]])

    def with_part(index: int, value: str) -> str:
        return ".".join([*parts[:index], value, *parts[index + 1 :]])

    return {
        "alg": with_header(alg="RSA-OAEP"),
        "enc": with_header(enc="A128CBC-HS256"),
        "kid missing": with_header(kid=None),
        "kid number": with_header(kid=1),
        "crit": with_header(crit=["x"]),
        "zip": with_header(zip="LZ"),
        "jwk": with_header(jwk={}),
        "x5c": with_header(x5c=[]),
        "header duplicate": with_part(0, b64(b'{"alg":"RSA-OAEP-256","alg":"RSA-OAEP-256"}')),
        "header array": with_part(0, b64(b"[]")),
        "header bad b64": with_part(0, "eyJ*"),
        "header empty": with_part(0, ""),
        "key empty": with_part(1, ""),
        "key bad char": with_part(1, parts[1][:-1] + "="),
        "iv short": with_part(2, b64(bytes(11))),
        "iv long": with_part(2, b64(bytes(13))),
        "ciphertext bad char": with_part(3, "AAAA+AAA"),
        "ciphertext length": with_part(3, "AAAAA"),
        "ciphertext non-canonical": with_part(3, "AAB"),
        "tag short": with_part(4, b64(bytes(15))),
        "tag long": with_part(4, b64(bytes(17))),
        "tag non-canonical": with_part(4, "A" * 21 + "C"),
        "four segments": ".".join(parts[:4]),
        "six segments": good + ".AAAA",
        "two segments": ".".join(parts[:2]),
        "garbage after whitespace": good + "\n\nx",
        "leading whitespace": " " + good,
        "empty": "",
        "non-ascii": good[:50] + "é" + good[51:],
    }


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
def test_syntax_checker_refuses_what_parse_refuses(key0: rsa.RSAPrivateKey, chunk: int) -> None:
    good = jwe.encrypt(os.urandom(50), key0.public_key(), kid="k0").token
    for name, bad in _bad_tokens(good).items():
        with pytest.raises(
            (MalformedJoseError, InvalidHeaderError, UnsupportedAlgorithmError)
        ) as p:
            jwe.parse(bad)
        with pytest.raises(type(p.value)) as c:
            _check(bad.encode(), chunk)
        assert type(c.value) is type(p.value), name


def test_syntax_checker_fails_early(key0: rsa.RSAPrivateKey) -> None:
    bad_header = b64(b'{"alg":"RSA1_5","enc":"A256GCM","kid":"k"}')
    checker = jwe.JweSyntaxChecker()
    checker.feed(bad_header.encode())  # not complete yet: nothing to say
    with pytest.raises(UnsupportedAlgorithmError):
        checker.feed(b".")  # the header segment ends here
    with pytest.raises(UnsupportedAlgorithmError):
        checker.feed(b"more")  # a failed checker stays failed
    with pytest.raises(UnsupportedAlgorithmError):
        checker.finish()

    checker = jwe.JweSyntaxChecker()
    with pytest.raises(MalformedJoseError):
        checker.feed(b'{"alg"')  # raw JSON instead of base64url: refused at once

    good = jwe.encrypt(b"x", key0.public_key(), kid="k0").token
    checker = jwe.JweSyntaxChecker()
    head, rest = good.split(".", 1)
    checker.feed((head + "." + rest.split(".")[0] + ".").encode())
    with pytest.raises(MalformedJoseError, match="initialization vector"):
        checker.feed(b"A" * 17)  # too long before the segment even ends


def test_syntax_checker_memory_is_bounded() -> None:
    checker = jwe.JweSyntaxChecker()
    for _ in range(8):
        checker.feed(b"A" * 1000)  # a "header" that never ends ...
    with pytest.raises(MalformedJoseError, match="too long"):
        checker.feed(b"A" * 1000)  # ... is refused once it passes the 8192-character bound
