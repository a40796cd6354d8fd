"""`fitconnect inbox|receive|events` against the in-memory Zustelldienst."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import run_cli
from tests.unit.test_client_fakes import API, BASE, CLIENT_ID, CLIENT_SECRET, JSON_SCHEMA
from tests.unit.test_subscriber_fakes import SCHEMA_FILE_JSON, SubscriberZD, base_plan, send_plan

from fitconnect_kit.cli import profile as cli_profile
from fitconnect_kit.protocol.events import parse_set


@pytest.fixture
def zd(monkeypatch: pytest.MonkeyPatch) -> SubscriberZD:
    fake = SubscriberZD()
    monkeypatch.setattr(cli_profile, "_transport_factory", fake.transport)
    for name in (
        "FITCONNECT_ENV",
        "FITCONNECT_PROFILE",
        "FITCONNECT_CLIENT_ID",
        "FITCONNECT_CLIENT_SECRET",
        "FITCONNECT_TRUST_ANCHORS",
    ):
        monkeypatch.delenv(name, raising=False)
    return fake


@pytest.fixture
def profile(tmp_path: Path, zd: SubscriberZD) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "encryption.private.jwk.json").write_text(json.dumps(zd.keys.encryption_private))
    (keys / "signing.private.jwk.json").write_text(json.dumps(zd.keys.signing_private))
    path = tmp_path / "profile.json"
    path.write_text(
        json.dumps(
            {
                "environment": "unit",
                "tokenUrl": BASE + "/token",
                "submissionApiUrl": API,
                "trust": "test",
                "subscriber": {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET},
                "destinationId": zd.destination_id,
                "keys": {
                    "encryptionPrivate": "keys/encryption.private.jwk.json",
                    "signingPrivate": "keys/signing.private.jwk.json",
                },
            }
        )
    )
    return path


@pytest.fixture
def schema(tmp_path: Path) -> str:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA_FILE_JSON))
    return f"{JSON_SCHEMA}={path}"


def sent(zd: SubscriberZD, **changes: Any) -> tuple[str, str]:
    built = asyncio.run(send_plan(zd, base_plan(zd, **changes)))
    return built.submission_id or "", built.case_id or ""


def posted(zd: SubscriberZD) -> list[str]:
    return [parse_set(t).event.short_name for t in zd.posted_events]


def test_inbox(zd: SubscriberZD, profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "inbox", "--profile", str(profile))
    assert code == 0
    assert "no submissions waiting" in out
    first, case = sent(zd)
    second, _ = sent(zd)
    code, out, _ = run_cli(capsys, "inbox", "--profile", str(profile))
    assert code == 0
    assert first in out
    assert second in out
    assert case in out
    code, out, _ = run_cli(
        capsys, "inbox", "--profile", str(profile), "--destination", zd.destination_id, "--json"
    )
    data = json.loads(out)
    assert data["destinationId"] == zd.destination_id
    assert [s["submissionId"] for s in data["submissions"]] == [first, second]


def test_receive_only_verifies(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = sent(zd)
    out_dir = tmp_path / "out"
    code, out, err = run_cli(
        capsys, "receive", "-p", str(profile), "-s", sid, "-o", str(out_dir), "--schema", schema
    )
    assert code == 0, err
    assert "result: valid (no action)" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["antrag.pdf", "data.json", "metadata.json"]
    assert posted(zd) == []


def test_receive_invalid_without_action_exits_3(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = sent(zd, wrong_data_hash=True)
    code, out, _ = run_cli(
        capsys,
        "receive",
        "-p",
        str(profile),
        "-s",
        sid,
        "-o",
        str(tmp_path / "o"),
        "--schema",
        schema,
    )
    assert code == 3
    assert "hash-mismatch [data]" in out
    assert "invalid: 1 problem(s) (no action)" in out


def test_receive_auto_accepts_and_rejects(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, _ = sent(zd)
    bad, _ = sent(zd, reply_channel={"deMail": {"address": "x@example.de-mail.de"}})
    args = ["receive", "-p", str(profile), "--schema", schema, "--auto"]
    code, out, _ = run_cli(capsys, *args, "-s", good, "-o", str(tmp_path / "good"))
    assert code == 0
    assert "result: accepted" in out
    code, out, _ = run_cli(capsys, *args, "-s", bad, "-o", str(tmp_path / "bad"), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["result"] == "rejected with 1 problem(s)"
    assert data["decision"]["event"] == "reject-submission"
    assert [p["instance"] for p in data["problems"]] == ["metadata"]
    assert posted(zd) == ["accept-submission", "reject-submission"]


def test_receive_accept_refuses_an_invalid_submission(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = sent(zd, wrong_data_hash=True)
    code, _, err = run_cli(
        capsys,
        *("receive", "-p", str(profile), "-s", sid, "-o", str(tmp_path / "o")),
        *("--schema", schema, "--accept"),
    )
    assert code == 3
    assert "invalid and was not accepted" in err
    assert posted(zd) == []


def test_receive_reject_as_asked(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, case = sent(zd)
    code, out, _ = run_cli(
        capsys,
        *("receive", "-p", str(profile), "-s", sid, "-o", str(tmp_path / "o"), "--schema", schema),
        *("--reject", "schema-violation:data", "--reject", "technical-error"),
    )
    assert code == 0
    assert "result: rejected with 2 problem(s)" in out
    assert posted(zd) == ["reject-submission"]
    code, out, _ = run_cli(capsys, "events", "-p", str(profile), "--case", case)
    assert code == 0
    assert "reject-submission" in out
    assert f"submission {sid}: rejected" in out
    code, out, _ = run_cli(capsys, "events", "-p", str(profile), "--case", case, "--json")
    data = json.loads(out)
    assert data["submissions"][sid]["status"] == "rejected"
    assert [e["event"] for e in data["events"]][-1] == "reject-submission"


def test_receive_usage_errors(
    zd: SubscriberZD, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sid, _ = sent(zd)
    base = ["receive", "-p", str(profile), "-s", sid, "-o", str(tmp_path / "o")]
    code, _, err = run_cli(capsys, *base, "--reject", "no-such-problem")
    assert code == 2
    assert "unknown reject problem" in err
    code, _, err = run_cli(capsys, *base, "--accept", "--auto")
    assert code == 2
    assert "choose one" in err


def test_receive_missing_schema_decides_nothing(
    zd: SubscriberZD, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zd.destination["services"][0]["submissionSchemas"].append(
        {"schemaUri": "urn:unknown:schema", "mimeType": "application/json"}
    )
    sid, _ = sent(zd, data_schema_uri="urn:unknown:schema")
    code, out, err = run_cli(
        capsys, "receive", "-p", str(profile), "-s", sid, "-o", str(tmp_path / "o"), "--auto"
    )
    assert code == 2
    assert "urn:unknown:schema" in err
    assert "local configuration" in out
    assert posted(zd) == []


def test_receive_not_found_and_explicit_keys(
    zd: SubscriberZD, profile: Path, schema: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = "11111111-2222-4333-8444-555555555555"
    code, _, err = run_cli(
        capsys, "receive", "-p", str(profile), "-s", missing, "-o", str(tmp_path)
    )
    assert code == 4
    assert "not found" in err
    no_key = str(tmp_path / "no-such-key.json")
    code, _, err = run_cli(
        capsys, "receive", "-p", str(profile), "-s", missing, "-o", str(tmp_path), "-k", no_key
    )
    assert code == 4
    assert "not found" in err
    sid, _ = sent(zd)
    code, out, _ = run_cli(
        capsys,
        *("receive", "-p", str(profile), "-s", sid, "-o", str(tmp_path / "o"), "--schema", schema),
        *(
            "--key",
            str(tmp_path / "keys"),
            "--signing-key",
            str(tmp_path / "keys" / "signing.private.jwk.json"),
        ),
        "--accept",
    )
    assert code == 0
    assert "result: accepted" in out
