"""`fitconnect jwe encrypt|decrypt`: files, stdin/stdout, errors and exit codes."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.keycache import rsa_key

from fitconnect_kit.cli._common import EXIT_CHECK_FAILED, EXIT_NOT_FOUND, EXIT_USAGE
from fitconnect_kit.cli.main import main
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import jwk_from_private_key, public_jwk

FITCONNECT = Path(sys.executable).with_name("fitconnect")


def run(argv: list[str], capsysbinary: pytest.CaptureFixture[bytes]) -> tuple[int, bytes, str]:
    """Run the CLI in-process; return exit code, stdout bytes and stderr text."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    captured = capsysbinary.readouterr()
    code = info.value.code
    return (code if isinstance(code, int) else 1), captured.out, captured.err.decode()


def set_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("keys")
    private = jwk_from_private_key(rsa_key(0), kid="k0", alg="RSA-OAEP-256", key_ops=["unwrapKey"])
    public = {**public_jwk(private), "key_ops": ["wrapKey"]}
    other = jwk_from_private_key(rsa_key(1), kid="k1", alg="RSA-OAEP-256", key_ops=["unwrapKey"])
    impostor = {**jwk_from_private_key(rsa_key(1)), "kid": "k0"}  # wrong key, same kid
    files: dict[str, Any] = {
        "public": public,
        "private": private,
        "other": other,
        "impostor": impostor,
        "jwks": {"keys": [public, {**public_jwk(other), "key_ops": ["wrapKey"]}]},
    }
    paths = {}
    for name, content in files.items():
        paths[name] = directory / f"{name}.json"
        paths[name].write_text(json.dumps(content), encoding="utf-8")
    return paths


def test_round_trip_through_files(
    keys: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    plaintext = os.urandom(100_000)
    (tmp_path / "in.bin").write_bytes(plaintext)
    code, out, err = run(
        ["jwe", "encrypt", "--key", str(keys["public"]), "--cty", "application/pdf",
         str(tmp_path / "in.bin"), str(tmp_path / "token.jwe")],
        capsysbinary,
    )  # fmt: skip
    assert (code, out, err) == (0, b"", "")
    token = (tmp_path / "token.jwe").read_text()
    assert jwe.parse(token).header == {
        "alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": "k0", "cty": "application/pdf",
    }  # fmt: skip

    code, out, err = run(
        ["jwe", "decrypt", "--key", str(keys["private"]), str(tmp_path / "token.jwe"),
         str(tmp_path / "out.bin")],
        capsysbinary,
    )  # fmt: skip
    assert (code, out, err) == (0, b"", "")
    assert (tmp_path / "out.bin").read_bytes() == plaintext


def test_round_trip_through_stdin_and_stdout(
    keys: dict[str, Path],
    capsysbinary: pytest.CaptureFixture[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    plaintext = b'{"hello": "Verwaltung"}'
    set_stdin(monkeypatch, plaintext)
    code, token, err = run(["jwe", "encrypt", "-k", str(keys["public"])], capsysbinary)
    assert (code, err) == (0, "")
    assert token.count(b".") == 4
    assert not token.endswith(b"\n")

    set_stdin(monkeypatch, token)
    code, out, err = run(["jwe", "decrypt", "-k", str(keys["private"]), "-", "-"], capsysbinary)
    assert (code, out, err) == (0, plaintext, "")


def test_verbose_prints_tag_and_hash_to_stderr(
    keys: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "in.txt").write_bytes(b"abc")
    code, out, err = run(
        ["jwe", "encrypt", "--key", str(keys["public"]), "--verbose", str(tmp_path / "in.txt")],
        capsysbinary,
    )
    assert code == 0
    assert jwe.authentication_tag(out) in err
    assert hashlib.sha512(b"abc").hexdigest() in err
    assert jwe.authentication_tag(out).encode() not in out.rsplit(b".", 1)[0]


def test_encrypt_picks_from_a_jwks_by_kid(
    keys: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "in.txt").write_bytes(b"abc")
    code, out, err = run(
        ["jwe", "encrypt", "-k", str(keys["jwks"]), "--kid", "k1", str(tmp_path / "in.txt")],
        capsysbinary,
    )
    assert code == 0
    assert jwe.parse(out).kid == "k1"
    code, out, err = run(
        ["jwe", "encrypt", "-k", str(keys["jwks"]), str(tmp_path / "in.txt")], capsysbinary
    )
    assert code == EXIT_USAGE
    assert "--kid" in err


def test_decrypt_with_several_keys(
    keys: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    token = jwe.encrypt(b"secret", rsa_key(0).public_key(), kid="k0").token
    (tmp_path / "t.jwe").write_text(token)
    code, out, err = run(
        ["jwe", "decrypt", "-k", str(keys["other"]), "-k", str(keys["private"]),
         str(tmp_path / "t.jwe")],
        capsysbinary,
    )  # fmt: skip
    assert (code, out, err) == (0, b"secret", "")


@pytest.mark.parametrize("key_name", ["impostor", "other"])
def test_wrong_key_fails_with_one_line(
    keys: dict[str, Path],
    tmp_path: Path,
    capsysbinary: pytest.CaptureFixture[bytes],
    key_name: str,
) -> None:
    token = jwe.encrypt(b"secret plaintext", rsa_key(0).public_key(), kid="k0").token
    (tmp_path / "t.jwe").write_text(token)
    target = tmp_path / "out.bin"
    code, out, err = run(
        ["jwe", "decrypt", "-k", str(keys[key_name]), str(tmp_path / "t.jwe"), str(target)],
        capsysbinary,
    )
    assert code == EXIT_CHECK_FAILED
    assert out == b""
    assert err.startswith("error: ")
    assert err.count("\n") == 1
    assert "secret" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.jwe"]  # no output, no temp file


def test_tampered_token_to_stdout_prints_nothing(
    keys: dict[str, Path], tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    token = jwe.encrypt(os.urandom(5000), rsa_key(0).public_key(), kid="k0").token
    tampered = token[:-22] + ("A" if token[-22] != "A" else "B") + token[-21:]
    (tmp_path / "t.jwe").write_text(tampered)
    code, out, _err = run(
        ["jwe", "decrypt", "-k", str(keys["private"]), str(tmp_path / "t.jwe")], capsysbinary
    )
    assert code == EXIT_CHECK_FAILED
    assert out == b""  # unauthenticated plaintext never reaches stdout


@pytest.mark.parametrize("command", ["encrypt", "decrypt"])
def test_missing_key_file_exits_4(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], command: str
) -> None:
    (tmp_path / "in").write_bytes(b"x")
    code, out, err = run(
        ["jwe", command, "--key", str(tmp_path / "nope.json"), str(tmp_path / "in")],
        capsysbinary,
    )
    assert code == EXIT_NOT_FOUND
    assert out == b""
    assert "nope.json" in err
    assert err.count("\n") == 1


def test_missing_input_exits_4(
    keys: dict[str, Path], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    code, _, err = run(["jwe", "encrypt", "-k", str(keys["public"]), "/no/such/file"], capsysbinary)
    assert code == EXIT_NOT_FOUND
    assert err.count("\n") == 1


def test_bad_key_file_is_a_check_failure(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    (tmp_path / "in").write_bytes(b"x")
    (tmp_path / "k.json").write_text("{not json")
    code, _, err = run(
        ["jwe", "encrypt", "-k", str(tmp_path / "k.json"), str(tmp_path / "in")], capsysbinary
    )
    assert code == EXIT_CHECK_FAILED
    assert err.count("\n") == 1
    (tmp_path / "k.json").write_text(
        json.dumps({"kty": "RSA", "kid": "x", "alg": "PS512", "n": "AQAB", "e": "AQAB"})
    )
    code, _, err = run(
        ["jwe", "encrypt", "-k", str(tmp_path / "k.json"), str(tmp_path / "in")], capsysbinary
    )
    assert code == EXIT_CHECK_FAILED
    assert "PS512" in err


def test_usage_errors(capsysbinary: pytest.CaptureFixture[bytes]) -> None:
    code, _, _ = run(["jwe", "encrypt"], capsysbinary)  # --key is required
    assert code == EXIT_USAGE
    code, out, _ = run(["jwe", "decrypt", "--help"], capsysbinary)
    assert code == 0
    assert b"PRIVATE_JWK" in out


def test_real_pipe_through_the_installed_command(keys: dict[str, Path], tmp_path: Path) -> None:
    """``fitconnect jwe encrypt < in | fitconnect jwe decrypt``: two processes, one OS pipe."""
    if not FITCONNECT.exists():
        pytest.skip("the fitconnect script is not installed next to this Python")
    plaintext = os.urandom(50_000)
    (tmp_path / "in.bin").write_bytes(plaintext)
    with (tmp_path / "in.bin").open("rb") as source:
        encrypt = subprocess.Popen(
            [str(FITCONNECT), "jwe", "encrypt", "--key", str(keys["public"])],
            stdin=source, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        decrypt = subprocess.Popen(
            [str(FITCONNECT), "jwe", "decrypt", "--key", str(keys["private"])],
            stdin=encrypt.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        assert encrypt.stdout is not None
        encrypt.stdout.close()  # the decrypt process owns the read end now
        out, err = decrypt.communicate(timeout=60)
        assert encrypt.wait(timeout=60) == 0
        assert encrypt.stderr is not None
        assert encrypt.stderr.read() == b""
        encrypt.stderr.close()
    assert (decrypt.returncode, err) == (0, b"")
    assert out == plaintext
