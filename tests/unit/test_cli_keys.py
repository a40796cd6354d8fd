"""`fitconnect keys generate|check|thumbprint` (cli/keys.py)."""

from __future__ import annotations

import itertools
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from tests.keycache import rsa_key

from fitconnect_kit.cli import keys as cli_keys
from fitconnect_kit.cli.main import main
from fitconnect_kit.protocol.jose.jwk import thumbprint
from fitconnect_kit.protocol.keygen import KEY_FILE_NAMES


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["keys", *args])
    out, err = capsys.readouterr()
    code = info.value.code
    assert isinstance(code, int)
    return code, out, err


@pytest.fixture(autouse=True)
def cached_key_factory(monkeypatch: pytest.MonkeyPatch) -> None:
    """`keys generate` uses cached test keys (CA, encryption, signing) instead of new ones."""
    keys = itertools.cycle([rsa_key(0), rsa_key(1), rsa_key(2)])
    monkeypatch.setattr(cli_keys, "_key_factory", lambda: next(keys))


@pytest.fixture
def key_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    out = tmp_path / "keys"
    code, _, err = run(capsys, "generate", "--out", str(out))
    assert code == 0, err
    return out


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


# --- generate ------------------------------------------------------------------------------------


def test_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "keys"
    code, stdout, stderr = run(capsys, "generate", "--out", str(out), "--common-name", "Amt X")
    assert (code, stderr) == (0, "")
    for file_name in KEY_FILE_NAMES.values():
        assert str(out / file_name) in stdout
    enc_private = json.loads((out / KEY_FILE_NAMES["encryption_private"]).read_text())
    sig_private = json.loads((out / KEY_FILE_NAMES["signing_private"]).read_text())
    assert f"encryption kid: {enc_private['kid']}" in stdout
    assert f"signing kid:    {sig_private['kid']}" in stdout
    for private in (enc_private, sig_private):
        for member in ("d", "p", "q", "dp", "dq", "qi"):
            assert private[member] not in stdout
            assert private[member][:12] not in stdout
    for name in ("encryption_private", "signing_private"):
        assert stat.S_IMODE((out / KEY_FILE_NAMES[name]).stat().st_mode) == 0o600
    ca = x509.load_pem_x509_certificate((out / "ca.cert.pem").read_bytes())
    assert "CN=Amt X CA" in ca.subject.rfc4514_string()
    assert "mode 0600" in stdout


def test_generate_refuses_to_overwrite(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = (key_dir / KEY_FILE_NAMES["encryption_private"]).read_bytes()
    code, _, stderr = run(capsys, "generate", "--out", str(key_dir))
    assert code == 1
    line = _one_line(stderr)
    assert "refusing to overwrite" in line
    assert "use --force" in line
    assert (key_dir / KEY_FILE_NAMES["encryption_private"]).read_bytes() == before

    code, _, stderr = run(capsys, "generate", "--out", str(key_dir), "--force")
    assert (code, stderr) == (0, "")


def test_generate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "generate", "--out", str(tmp_path), "--common-name", "x" * 60)
    assert code == 2
    assert "at most 53" in _one_line(stderr)
    (tmp_path / "file").write_text("x")
    code, _, stderr = run(capsys, "generate", "--out", str(tmp_path / "file"))
    assert code == 2
    assert "not a directory" in _one_line(stderr)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(["generate"], id="missing-out"),
        pytest.param(["generate", "--out", "x", "--valid-days", "0"], id="valid-days-0"),
        pytest.param(["check", "x.json", "--purpose", "decryption"], id="bad-purpose"),
    ],
)
def test_option_parsing_errors_exit_2(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run(capsys, *args)
    assert code == 2


# --- check ---------------------------------------------------------------------------------------


def test_check_ok_with_self_signed_allowed(
    key_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = run(
        capsys, "check", str(key_dir / "encryption.public.jwk.json"), "--allow-self-signed"
    )
    assert (code, stderr) == (0, "")
    assert stdout.startswith("OK: encryption key '")
    assert "RSA 4096 bit, RSA-OAEP-256" in stdout
    assert "self-signed root (accepted: test environment only)" in stdout
    assert "revocation not checked" in stdout


def test_check_ok_with_trust_anchor(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(
        capsys,
        "check",
        str(key_dir / "signing.public.jwk.json"),
        "--trust-anchor",
        str(key_dir / "ca.cert.pem"),
        "--purpose",
        "signature",
    )
    assert (code, stderr) == (0, "")
    assert stdout.startswith("OK: signature key '")
    assert "ends in trust anchor" in stdout


def test_check_self_signed_without_permission_fails(
    key_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, stdout, stderr = run(capsys, "check", str(key_dir / "encryption.public.jwk.json"))
    assert code == 3
    assert stdout.startswith("FAIL $.x5c: x5c[1] (CN=fitconnect-kit Test-Zustellpunkt CA) is a")
    line = _one_line(stderr)
    assert "fails 1 check" in line
    assert "--allow-self-signed" in line


def test_check_reports_every_violation(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, stderr = run(
        capsys,
        "check",
        str(key_dir / "signing.public.jwk.json"),
        "--purpose",
        "encryption",
        "--allow-self-signed",
    )
    assert code == 3
    paths = [line.split()[1].rstrip(":") for line in stdout.splitlines()]
    assert paths == ["$.alg", "$.key_ops[0]", "$.key_ops", "$.use", "$.x5c"]
    assert "keyUsage does not allow keyEncipherment" in stdout
    assert "fails 5 checks" in _one_line(stderr)


def test_check_private_key_fails_without_leaking(
    key_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = key_dir / "encryption.private.jwk.json"
    private = json.loads(path.read_text())
    code, stdout, stderr = run(capsys, "check", str(path), "--allow-self-signed")
    assert code == 3
    assert "private key member(s) d, p, q, dp, dq, qi present" in stdout
    for member in ("d", "p", "q", "dp", "dq", "qi"):
        assert private[member][:12] not in stdout + stderr


def test_check_file_errors(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run(capsys, "check", str(key_dir / "missing.json"))
    assert code == 4
    assert "JWK file not found" in _one_line(stderr)
    code, _, stderr = run(
        capsys,
        "check",
        str(key_dir / "encryption.public.jwk.json"),
        "--trust-anchor",
        str(key_dir / "missing.pem"),
    )
    assert code == 4
    assert "missing.pem" in _one_line(stderr)
    code, _, stderr = run(capsys, "check", str(key_dir / "ca.cert.pem"))
    assert code == 3
    assert "not valid UTF-8 JSON" in _one_line(stderr)


# --- thumbprint ----------------------------------------------------------------------------------


def test_thumbprint(key_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("encryption.public.jwk.json", "encryption.private.jwk.json"):
        code, stdout, stderr = run(capsys, "thumbprint", str(key_dir / name))
        assert (code, stderr) == (0, "")
        jwk = json.loads((key_dir / name).read_text())
        assert stdout.strip() == thumbprint(jwk) == jwk["kid"]
    code, _, stderr = run(capsys, "thumbprint", str(key_dir / "nope.json"))
    assert code == 4
    (key_dir / "ec.json").write_text('{"kty": "EC", "crv": "P-256"}')
    code, _, stderr = run(capsys, "thumbprint", str(key_dir / "ec.json"))
    assert code == 3
    assert "only RSA keys" in _one_line(stderr)
    (key_dir / "no-n.json").write_text('{"kty": "RSA", "e": "AQAB"}')
    code, _, stderr = run(capsys, "thumbprint", str(key_dir / "no-n.json"))
    assert code == 3
    assert "'n'" in _one_line(stderr)


# --- the real thing, once ------------------------------------------------------------------------


@pytest.mark.slow
def test_generate_with_real_keys_in_a_subprocess(tmp_path: Path) -> None:
    """Fresh RSA-4096 keys through the real entry point (a few seconds)."""
    out = tmp_path / "real"
    command = [sys.executable, "-m", "fitconnect_kit.cli.main", "keys"]
    result = subprocess.run(
        [*command, "generate", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    check = subprocess.run(
        [
            *command,
            "check",
            str(out / "signing.public.jwk.json"),
            "--trust-anchor",
            str(out / "ca.cert.pem"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.startswith("OK: signature key")
