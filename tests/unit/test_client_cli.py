"""`fitconnect send|status|destination show|profile show` against the in-memory Zustelldienst."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests.support.cli import run_cli
from tests.unit.test_client_fakes import (
    API,
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    JSON_SCHEMA,
    SERVICE,
    SERVICE_NAME,
    FakeZustelldienst,
)

from fitconnect_kit.cli import _common as cli_common
from fitconnect_kit.cli import profile as cli_profile
from fitconnect_kit.cli.send import parse_attachment


@pytest.fixture
def zd(monkeypatch: pytest.MonkeyPatch) -> FakeZustelldienst:
    fake = FakeZustelldienst()
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
def profile(tmp_path: Path, zd: FakeZustelldienst) -> Path:
    path = tmp_path / "unit-profile.json"
    path.write_text(
        json.dumps(
            {
                "name": "unit",
                "environment": "unit",
                "tokenUrl": BASE + "/token",
                "submissionApiUrl": API,
                "trust": "test",
                "sender": {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET},
                "destinationId": zd.destination_id,
                "serviceIdentifier": SERVICE,
                "serviceName": SERVICE_NAME,
                "dataSchemaUri": JSON_SCHEMA,
            }
        )
    )
    return path


@pytest.fixture
def wide(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wide stdout console, so rich never folds URLs and ids (whatever $COLUMNS was)."""
    monkeypatch.setattr(cli_common.stdout, "_width", 200)
    monkeypatch.setattr(cli_common.stdout, "_height", 50)


def test_parse_attachment() -> None:
    assert parse_attachment("a.pdf:form") == (Path("a.pdf"), "form")
    assert parse_attachment("a.pdf") == (Path("a.pdf"), "attachment")
    assert parse_attachment("dir:x/a.pdf") == (Path("dir:x/a.pdf"), "attachment")


def test_send_with_profile_defaults_and_wait(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text('{"antrag": 1}')
    pdf = tmp_path / "antrag.pdf"
    pdf.write_bytes(b"%PDF-1.7")
    zd.auto_decide = "accept"
    code, out, err = run_cli(
        capsys,
        "send",
        "--profile",
        str(profile),
        "--data",
        str(data),
        "--attachment",
        f"{pdf}:form",
        "--reply-email",
        "erika@example.org",
        "--wait",
        "--json",
    )
    assert code == 0, err
    result = json.loads(out)
    stored = zd.only_submission()
    assert result["submissionId"] == stored.submission_id
    assert result["caseId"] == stored.case_id
    assert result["status"]["status"] == "accepted"
    assert zd.decrypt(stored.encrypted_data or "") == b'{"antrag": 1}'
    metadata = json.loads(zd.decrypt(stored.encrypted_metadata or ""))
    assert metadata["contentStructure"]["attachments"][0]["purpose"] == "form"
    assert CLIENT_SECRET not in out + err


def test_send_text_output_and_rejection_exit_code(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    zd.auto_decide = "reject"
    code, out, _ = run_cli(capsys, "send", "-p", str(profile), "--data", str(data), "--wait")
    assert code == 3
    sub = zd.only_submission()
    assert f"submissionId: {sub.submission_id}" in out
    assert f"caseId: {sub.case_id}" in out
    assert "rejected" in out
    assert "Feld 'name' fehlt" in out


def test_send_usage_and_check_errors(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    code, _, err = run_cli(
        capsys, "send", "-p", str(profile), "--data", str(tmp_path / "nope.json")
    )
    assert code == 4
    assert "data file not found" in err
    code, _, err = run_cli(
        capsys, "send", "-p", str(profile), "--data", str(data), "-s", "99123456760610"
    )
    assert code == 3
    assert err.startswith("error: destination")
    assert "does not offer service" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(
        capsys,
        "send",
        "-p",
        str(profile),
        "--data",
        str(data),
        "--destination",
        "6f3c1f2e-3b7a-4c39-9b1e-0a1b2c3d4e5f",
    )
    assert code == 4
    assert "not found" in err
    assert zd.count("POST", "/v1/submissions") == 0


def test_status_table_and_json(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    assert run_cli(capsys, "send", "-p", str(profile), "--data", str(data))[0] == 0
    sub = zd.only_submission()
    zd.accept(sub.submission_id)
    code, out, err = run_cli(capsys, "status", "-p", str(profile), "--case", sub.case_id)
    assert code == 0, err
    for text in ("create-submission", "submit-submission", "accept-submission", "accepted"):
        assert text in out
    assert "Zustelldienst" in out
    code, out, _ = run_cli(capsys, "status", "-p", str(profile), "--case", sub.case_id, "--json")
    report: dict[str, Any] = json.loads(out)
    assert report["status"] == "accepted"
    assert [e["event"] for e in report["events"]][-1] == "accept-submission"
    # A tampered event log is a check failure (exit 3), never a status.
    log = zd.case_events[sub.case_id]
    log[-1] = log[-1][:-6] + "AAAAAA"
    code, _, err = run_cli(capsys, "status", "-p", str(profile), "--case", sub.case_id)
    assert code == 3
    assert "cannot be trusted" in err


def test_destination_show(
    zd: FakeZustelldienst, profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "destination", "show", zd.destination_id, "-p", str(profile))
    assert code == 0, err
    for text in ("active", SERVICE, JSON_SCHEMA, "DE09", "eMail", "1.2.0", "valid"):
        assert text in out
    assert "all checks passed" in out
    zd.destination["status"] = "inactive"
    code, out, _ = run_cli(
        capsys, "destination", "show", zd.destination_id, "-p", str(profile), "--json"
    )
    assert code == 3
    report = json.loads(out)
    assert report["ok"] is False
    assert report["destination"]["status"] == "inactive"
    code, _, err = run_cli(
        capsys, "destination", "show", "6f3c1f2e-3b7a-4c39-9b1e-0a1b2c3d4e5f", "-p", str(profile)
    )
    assert code == 4


def test_profile_show_masks_secrets(profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "profile", "show", "--profile", str(profile))
    assert code == 0, err
    assert CLIENT_ID in out
    assert CLIENT_SECRET not in out
    assert "********" in out
    code, out, _ = run_cli(capsys, "profile", "show", "--profile", str(profile), "--json")
    data = json.loads(out)
    assert data["profile"]["sender"]["clientSecret"] == "********"
    code, out, _ = run_cli(
        capsys, "profile", "show", "--profile", str(profile), "--json", "--show-secrets"
    )
    assert json.loads(out)["profile"]["sender"]["clientSecret"] == CLIENT_SECRET


def test_profile_show_without_profile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("FITCONNECT_PROFILE", raising=False)
    monkeypatch.delenv("FITCONNECT_ENV", raising=False)
    code, _, err = run_cli(capsys, "profile", "show")
    assert code == 4
    assert "fitconnect dev" in err
    code, _, err = run_cli(capsys, "profile", "show", "--profile", str(tmp_path / "x.json"))
    assert code == 4


def test_missing_credentials_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("FITCONNECT_PROFILE", "FITCONNECT_CLIENT_ID", "FITCONNECT_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_cli(capsys, "status", "--env", "test", "--case", "x")
    assert code == 2
    assert "Self-Service-Portal" in err


# --- status --last across a restart of `fitconnect dev` on another port ------------------------


def _local_profile(path: Path, zd: FakeZustelldienst, base: str, **extra: Any) -> Path:
    document: dict[str, Any] = {
        "name": "local",
        "environment": "local",
        "submissionApiUrl": base + "/v1",
        "sender": {"clientId": CLIENT_ID, "clientSecret": CLIENT_SECRET},
        "destinationId": zd.destination_id,
        "serviceIdentifier": SERVICE,
        "serviceName": SERVICE_NAME,
        "dataSchemaUri": JSON_SCHEMA,
    }
    document.update(extra)
    path.write_text(json.dumps(document))
    return path


def test_status_last_follows_a_local_restart_on_another_port(
    zd: FakeZustelldienst, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    local = _local_profile(tmp_path / "profile.json", zd, "http://127.0.0.1:8080")
    assert run_cli(capsys, "send", "-p", str(local), "--data", str(data))[0] == 0
    sub = zd.only_submission()
    zd.accept(sub.submission_id)
    noted = json.loads((tmp_path / "profile.last-sent.json").read_text())
    assert noted["environment"] == "local"
    # `fitconnect dev` restarted with --port 9090 rewrote the profile's URLs: same stack.
    for base in ("http://127.0.0.1:9090", "http://localhost:9090"):
        _local_profile(local, zd, base)
        code, out, err = run_cli(capsys, "status", "-p", str(local), "--last", "--json")
        assert code == 0, err
        assert json.loads(out)["caseId"] == sub.case_id
    # Another local stack (another checkout: another demo destination) is not the same one.
    _local_profile(local, zd, "http://127.0.0.1:9090", destinationId=str(uuid.uuid4()))
    code, _, err = run_cli(capsys, "status", "-p", str(local), "--last")
    assert code == 2
    assert "pass --case instead" in err
    assert len(err.strip().splitlines()) == 1


def test_status_last_never_mixes_environments(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    local = _local_profile(tmp_path / "profile.json", zd, "http://127.0.0.1:8080")
    note = tmp_path / "profile.last-sent.json"
    # A note of the test environment (or a remote URL) next to a local profile is refused.
    note.write_text(
        json.dumps(
            {
                "environment": "test",
                "submissionApiUrl": "https://submission-api-testing.fit-connect.fitko.dev/v1",
                "caseId": "c",
                "submissionId": "s",
                "destinationId": zd.destination_id,
            }
        )
    )
    code, _, err = run_cli(capsys, "status", "-p", str(local), "--last")
    assert code == 2
    assert "submission-api-testing" in err
    assert "pass --case instead" in err
    note.write_text(
        json.dumps(
            {
                "environment": "test",
                "submissionApiUrl": "http://127.0.0.1:8081/v1",
                "caseId": "c",
                "submissionId": "s",
                "destinationId": zd.destination_id,
            }
        )
    )
    assert run_cli(capsys, "status", "-p", str(local), "--last")[0] == 2
    # Outside `local`, another URL is another installation: refused as before.
    assert run_cli(capsys, "send", "-p", str(profile), "--data", str(data))[0] == 0
    document = json.loads(profile.read_text())
    document["submissionApiUrl"] = "https://other-zd.test/v1"
    profile.write_text(json.dumps(document))
    code, _, err = run_cli(capsys, "status", "-p", str(profile), "--last")
    assert code == 2
    assert "pass --case instead" in err


# --- profile show for a non-local environment configured by variables --------------------------


@pytest.mark.usefixtures("wide")
def test_profile_show_test_environment_from_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for name in ("FITCONNECT_PROFILE", "FITCONNECT_TRUST_ANCHORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FITCONNECT_ENV", "test")
    monkeypatch.setenv("FITCONNECT_CLIENT_ID", "my-sender")
    monkeypatch.setenv("FITCONNECT_CLIENT_SECRET", "very-secret")
    code, out, err = run_cli(capsys, "profile", "show")
    assert code == 0, err
    assert "https://submission-api-testing.fit-connect.fitko.dev/v1" in out
    assert "https://auth-testing.fit-connect.fitko.dev/token" in out
    assert "$FITCONNECT_CLIENT_ID" in out
    assert "my-sender" in out
    assert "very-secret" not in out
    assert "********" in out
    assert "fitconnect dev" not in out + err
    code, out, _ = run_cli(capsys, "profile", "show", "--json")
    document = json.loads(out)
    assert document["path"] is None
    assert document["environment"] == "test"
    assert document["preset"]["tokenUrl"] == "https://auth-testing.fit-connect.fitko.dev/token"
    assert document["credentialsFromEnvironment"]["clientSecret"] == "********"
    code, out, _ = run_cli(capsys, "profile", "show", "--json", "--show-secrets")
    assert json.loads(out)["credentialsFromEnvironment"]["clientSecret"] == "very-secret"
    # No credentials anywhere: not found, and the hint is the portal, never `fitconnect dev`.
    monkeypatch.delenv("FITCONNECT_CLIENT_ID")
    monkeypatch.delenv("FITCONNECT_CLIENT_SECRET")
    code, _, err = run_cli(capsys, "profile", "show", "--env", "stage")
    assert code == 4
    assert "fitconnect dev" not in err
    assert "FITCONNECT_CLIENT_ID" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "profile", "show", "--env", "mine")
    assert code == 4
    assert "fitconnect dev" not in err


@pytest.mark.usefixtures("wide")
def test_profile_show_names_credentials_from_variables_over_the_profile(
    profile: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FITCONNECT_CLIENT_ID", "my-sender")
    monkeypatch.setenv("FITCONNECT_CLIENT_SECRET", "very-secret")
    code, out, err = run_cli(capsys, "profile", "show", "-p", str(profile))
    assert code == 0, err
    assert "my-sender" in out
    assert "win over the profile" in out
    assert "very-secret" not in out


# --- send --wait: the ids come first ------------------------------------------------------------


def test_send_wait_prints_the_ids_before_waiting(
    zd: FakeZustelldienst, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_text("{}")
    zd.auto_decide = "accept"
    code, out, err = run_cli(
        capsys, "send", "-p", str(profile), "--data", str(data), "--wait", "--json"
    )
    assert code == 0, err
    sub = zd.only_submission()
    assert json.loads(out)["caseId"] == sub.case_id  # stdout: still one JSON document
    assert f"submissionId {sub.submission_id}, caseId {sub.case_id}" in err
    # Nobody decides: the wait times out, but the caseId was printed and is in the error.
    zd.auto_decide = None
    code, out, err = run_cli(
        capsys, "send", "-p", str(profile), "--data", str(data), "--wait", "--timeout", "1"
    )
    assert code == 1
    second = next(s for s in zd.submissions.values() if s.submission_id != sub.submission_id)
    lines = err.strip().splitlines()
    assert f"caseId {second.case_id}" in lines[0]
    assert lines[-1].startswith("error: ")
    assert f"status --case {second.case_id}" in lines[-1]
    assert out == ""


# --- destination show: the top-level reply channels -----------------------------------------------


@pytest.mark.usefixtures("wide")
def test_destination_show_explains_top_level_reply_channels(
    zd: FakeZustelldienst, profile: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    zd.destination["replyChannels"] = {"eMail": {}, "deMail": {}}
    code, out, err = run_cli(capsys, "destination", "show", "-p", str(profile))
    assert code == 0, err
    assert "deprecated" in out
    assert "a service's own list wins" in out
    assert "all services" not in out
    del zd.destination["services"][0]["replyChannels"]
    code, out, _ = run_cli(capsys, "destination", "show", "-p", str(profile))
    assert "the top-level list above applies" in out
