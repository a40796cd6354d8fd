"""`fitconnect set …` and `fitconnect callback …` through the real entry point (cli.main.main)."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fitconnect_kit.cli.main import main

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Run:
    def invoke(
        *argv: str, stdin: bytes = b"", env: dict[str, str] | None = None
    ) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as info:
            main(list(argv))
        out, err = capsys.readouterr()
        code = info.value.code
        return (code if isinstance(code, int) else 1), out, err

    return invoke


@pytest.fixture
def set_vector(load_vector: Callable[[str], Any]) -> dict[str, Any]:
    data: dict[str, Any] = load_vector("zustelldienst-set.json")
    return data


@pytest.fixture
def cb_vector(load_vector: Callable[[str], Any]) -> dict[str, Any]:
    data: dict[str, Any] = load_vector("callback-hmac.json")
    return data


@pytest.fixture
def jwks_file(tmp_path: Path, set_vector: dict[str, Any]) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(set_vector["jwks"]), encoding="utf-8")
    return path


SUBMISSION = "5e82c135-a3b7-4eb0-bd83-6df337331170"
CASE = "c9f0db91-9355-451a-b2a5-7a9be10ce765"


# --- set verify ---------------------------------------------------------------------------------


def test_set_verify_prints_verified_claims(
    run: Run, jwks_file: Path, set_vector: dict[str, Any]
) -> None:
    code, out, err = run(
        "set",
        "verify",
        "--jwks",
        str(jwks_file),
        "--expect-case",
        CASE,
        "--expect-submission",
        SUBMISSION,
        set_vector["set_valid"],
    )
    assert (code, err) == (0, "")
    assert json.loads(out) == set_vector["expected_payload"]


def test_set_verify_reads_stdin(run: Run, jwks_file: Path, set_vector: dict[str, Any]) -> None:
    token = (set_vector["set_valid"] + "\n").encode()
    code, out, _ = run("set", "verify", "--jwks", str(jwks_file), stdin=token)
    assert code == 0
    assert json.loads(out)["jti"] == "c6aa39ed-4ddf-4e2a-af52-b1ff7180445f"
    code, out, _ = run("set", "verify", "--jwks", str(jwks_file), "-", stdin=token)
    assert code == 0


def test_set_verify_accepts_a_single_jwk_file(
    run: Run, tmp_path: Path, set_vector: dict[str, Any]
) -> None:
    path = tmp_path / "key.json"
    path.write_text(json.dumps(set_vector["jwks"]["keys"][0]), encoding="utf-8")
    code, _, _ = run("set", "verify", "--jwks", str(path), set_vector["set_valid"])
    assert code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--expect-case", "e89e107e-ed79-40e6-ad34-4e770f9df263"], "expected case"),
        (["--expect-submission", "ce75a6b8-d72f-4b94-b09e-af6be35bc2ae"], "expected submission"),
        (["--expect-issuer", "https://other.example"], "expected"),
    ],
)
def test_set_verify_expectation_mismatch(
    run: Run, jwks_file: Path, set_vector: dict[str, Any], args: list[str], message: str
) -> None:
    code, out, err = run("set", "verify", "--jwks", str(jwks_file), *args, set_vector["set_valid"])
    assert code == 3
    assert out == ""
    assert err.startswith("error: SET verification failed:")
    assert message in err
    assert err.count("\n") == 1


def test_set_verify_refusals(
    run: Run, jwks_file: Path, tmp_path: Path, set_vector: dict[str, Any]
) -> None:
    code, _, err = run(
        "set", "verify", "--jwks", str(jwks_file), set_vector["set_signed_by_other_key"]
    )
    assert code == 3
    assert "no key with kid" in err
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps(set_vector["jwks_wrong_alg"]), encoding="utf-8")
    code, _, err = run("set", "verify", "--jwks", str(wrong), set_vector["set_valid"])
    assert code == 3
    assert "PS256" in err
    header, payload, sig = set_vector["set_valid"].split(".")
    code, _, err = run(
        "set", "verify", "--jwks", str(jwks_file), f"{header}.{payload}.{sig[:-4]}AAAA"
    )
    assert code == 3
    assert "does not verify" in err
    code, _, err = run("set", "verify", "--jwks", str(jwks_file), "not-a-token")
    assert code == 3


def test_set_verify_file_and_usage_errors(
    run: Run, jwks_file: Path, tmp_path: Path, set_vector: dict[str, Any]
) -> None:
    code, _, err = run(
        "set", "verify", "--jwks", str(tmp_path / "missing.json"), set_vector["set_valid"]
    )
    assert code == 4
    assert "not found" in err
    broken = tmp_path / "broken.json"
    broken.write_text("{nope", encoding="utf-8")
    code, _, err = run("set", "verify", "--jwks", str(broken), set_vector["set_valid"])
    assert code == 1
    assert "not a usable JWK Set" in err
    code, _, err = run("set", "verify", "--jwks", str(jwks_file), stdin=b"")
    assert code == 2
    assert "no token" in err
    code, _, err = run(
        "set", "verify", "--jwks", str(jwks_file), "--expect-case", "x", set_vector["set_valid"]
    )
    assert code == 2
    code, _, _ = run("set", "verify", set_vector["set_valid"])
    assert code == 2  # --jwks is required


# --- set decode ---------------------------------------------------------------------------------


def test_set_decode_is_labelled_unverified(run: Run, set_vector: dict[str, Any]) -> None:
    code, out, err = run("set", "decode", set_vector["set_signed_by_other_key"])
    assert code == 0
    decoded = json.loads(out)
    assert decoded["verified"] is False
    assert decoded["header"]["kid"] == "dd0409e5-410e-4d98-85b6-f81a40b8d980"
    assert decoded["payload"]["iss"] == "https://api.fitko.de/fit-connect/"
    assert "UNVERIFIED" in err
    code, out, err = run("set", "decode", stdin=set_vector["set_valid"].encode())
    assert code == 0
    assert json.loads(out)["payload"] == set_vector["expected_payload"]
    assert "note:" not in err


def test_set_decode_reports_rule_violations_and_garbage(
    run: Run, set_vector: dict[str, Any]
) -> None:
    _header, payload, sig = set_vector["set_valid"].split(".")
    from fitconnect_kit.protocol.b64 import b64url_encode

    typ_jwt = b64url_encode(b'{"kid":"k","typ":"JWT","alg":"PS512"}')
    code, out, err = run("set", "decode", f"{typ_jwt}.{payload}.{sig}")
    assert code == 0
    assert "note: not a valid FIT-Connect SET" in err
    assert json.loads(out)["header"]["typ"] == "JWT"
    code, _, err = run("set", "decode", "a.b")
    assert code == 3
    code, _, err = run("set", "decode", "!!.??.x")
    assert code == 3


# --- callback -----------------------------------------------------------------------------------


def _write_body(tmp_path: Path, case: dict[str, Any], name: str = "body.json") -> Path:
    path = tmp_path / name
    path.write_bytes(case["body"].encode("utf-8"))
    return path


@pytest.mark.parametrize("index", [0, 1])
def test_callback_verify_vectors(
    run: Run, tmp_path: Path, cb_vector: dict[str, Any], index: int
) -> None:
    case = cb_vector["cases"][index]
    body = _write_body(tmp_path, case)
    args = [
        "callback",
        "verify",
        "--secret",
        cb_vector["secret"],
        "--timestamp",
        case["callback_timestamp"],
        "--signature",
        case["callback_authentication"],
    ]
    code, out, err = run(*args, "--now", str(int(case["callback_timestamp"]) + 10), str(body))
    assert (code, out, err) == (0, "valid\n", "")
    # From stdin, byte for byte.
    code, out, _ = run(*args, "--now", case["callback_timestamp"], stdin=case["body"].encode())
    assert (code, out) == (0, "valid\n")
    # Without --now the 2023 example is stale.
    code, out, err = run(*args, str(body))
    assert code == 3
    assert out == ""
    assert "stale" in err
    assert cb_vector["secret"] not in err


def test_callback_verify_refusals(run: Run, tmp_path: Path, cb_vector: dict[str, Any]) -> None:
    case = cb_vector["cases"][1]
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(case["body"]), indent=2), encoding="utf-8")
    common = [
        "--timestamp",
        case["callback_timestamp"],
        "--signature",
        case["callback_authentication"],
        "--now",
        case["callback_timestamp"],
    ]
    code, _, err = run("callback", "verify", "--secret", cb_vector["secret"], *common, str(pretty))
    assert code == 3
    assert "(mismatch)" in err
    code, _, err = run(
        "callback", "verify", "--secret", "wrong", *common, str(_write_body(tmp_path, case))
    )
    assert code == 3
    assert "(mismatch)" in err
    code, _, err = run("callback", "verify", "--secret", "s", *common, str(tmp_path / "nope.json"))
    assert code == 4
    code, _, _ = run("callback", "verify", "--secret", "s", "--timestamp", "1", stdin=b"{}")
    assert code == 2  # --signature missing


def test_callback_secret_from_environment(
    run: Run, tmp_path: Path, cb_vector: dict[str, Any]
) -> None:
    case = cb_vector["cases"][0]
    code, out, _ = run(
        "callback",
        "verify",
        "--timestamp",
        case["callback_timestamp"],
        "--signature",
        case["callback_authentication"],
        "--now",
        case["callback_timestamp"],
        str(_write_body(tmp_path, case)),
        env={"FITCONNECT_CALLBACK_SECRET": cb_vector["secret"]},
    )
    assert (code, out) == (0, "valid\n")


def test_callback_sign_then_verify(run: Run, tmp_path: Path, cb_vector: dict[str, Any]) -> None:
    case = cb_vector["cases"][1]
    body = _write_body(tmp_path, case)
    code, out, _ = run(
        "callback",
        "sign",
        "--secret",
        cb_vector["secret"],
        "--now",
        case["callback_timestamp"],
        str(body),
    )
    assert code == 0
    assert out.splitlines() == [
        f"callback-authentication: {case['callback_authentication']}",
        f"callback-timestamp: {case['callback_timestamp']}",
    ]
    code, out, _ = run("callback", "sign", "--secret", "s3", stdin=b'{"a":1}')
    headers = dict(line.split(": ", 1) for line in out.splitlines())
    code, out, _ = run(
        "callback",
        "verify",
        "--secret",
        "s3",
        "--timestamp",
        headers["callback-timestamp"],
        "--signature",
        headers["callback-authentication"],
        stdin=b'{"a":1}',
    )
    assert (code, out) == (0, "valid\n")


@pytest.mark.parametrize(
    "argv",
    [
        ["set", "--help"],
        ["set", "verify", "--help"],
        ["set", "decode", "--help"],
        ["callback", "--help"],
        ["callback", "verify", "--help"],
        ["callback", "sign", "--help"],
    ],
)
def test_help(run: Run, argv: list[str]) -> None:
    code, out, _ = run(*argv)
    assert code == 0
    assert "Usage" in out
