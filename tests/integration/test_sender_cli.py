"""`fitconnect send | status | destination show` against our real Zustelldienst over loopback.

The commands run in-process (``fitconnect_kit.cli.main.main``) with a profile file that points at
the live server, as a user would write one; a receiving system (the protocol-only
``Fachverfahren`` of ``test_sender_live``) accepts or rejects in the background while
``send --wait`` polls. Exit codes: 0 success, 3 check failed or rejected, 4 not found.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from fitconnect_kit.cli import profile as cli_profile
from fitconnect_kit.demo import DEMO_JSON_SCHEMA_URI, DEMO_XML_SCHEMA_URI, demo_json_data
from fitconnect_kit.protocol.events import AuthenticationTags, Event
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jsonutil import dumps_compact
from tests.integration.test_sender_live import (
    SERVICE,
    SERVICE_KEY,
    Fachverfahren,
    new_destination,
    route_to,
    submissions_of,
)
from tests.support.cli import run_cli
from tests.support.live import LiveServer
from tests.support.seed import ClientCredentials, SeededDestination

ENV_NAMES = (
    "FITCONNECT_ENV",
    "FITCONNECT_PROFILE",
    "FITCONNECT_CLIENT_ID",
    "FITCONNECT_CLIENT_SECRET",
    "FITCONNECT_TRUST_ANCHORS",
)
REJECT_PROBLEM = {
    "type": "https://schema.fitko.de/fit-connect/events/problems/schema-violation",
    "title": "Schema-Verletzung",
    "detail": "anschrift fehlt",
    "instance": "data",
}


@dataclass
class Stack:
    live: LiveServer
    destination: SeededDestination
    inactive: SeededDestination
    sender: ClientCredentials
    fachverfahren: Fachverfahren


@pytest.fixture(scope="module")
def stack(live: LiveServer) -> Stack:
    destination = new_destination(live)
    subscriber = live.seed.subscriber(destination.destination_id)
    return Stack(
        live=live,
        destination=destination,
        inactive=new_destination(live, status="inactive"),
        sender=live.seed.sender(),
        fachverfahren=Fachverfahren(
            live,
            destination,
            subscriber,
            {destination.encryption_kid: destination.encryption_private_key},
            destination.signing_private_key,
        ),
    )


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.chdir(tmp_path)  # no ./.fitconnect-dev/profile.json of a developer


@pytest.fixture
def profile(stack: Stack, tmp_path: Path) -> Path:
    """A profile file as a user writes one for our Zustelldienst (format of docs/sdk-sender)."""
    path = tmp_path / "profiles" / "live.json"
    path.parent.mkdir()
    path.write_text(
        json.dumps(
            {
                "profileVersion": 1,
                "name": "live",
                "environment": "local",
                "submissionApiUrl": stack.live.base_url + "/v1",
                "sender": {
                    "clientId": stack.sender.client_id,
                    "clientSecret": stack.sender.client_secret,
                },
                "destinationId": stack.destination.destination_id,
                "serviceIdentifier": SERVICE,
                "serviceName": "Testleistung",
                "dataSchemaUri": DEMO_JSON_SCHEMA_URI,
                "dataMimeType": "application/json",
            }
        ),
        encoding="utf-8",
    )
    return path


class Decider(threading.Thread):
    """Accepts (or rejects) the next submission that arrives, in the background."""

    def __init__(self, fachverfahren: Fachverfahren, *, accept: bool = True) -> None:
        super().__init__(daemon=True)
        self.fachverfahren = fachverfahren
        self.accept = accept
        self.known = set(fachverfahren.pending())
        self.decided: str | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                new = [s for s in self.fachverfahren.pending() if s not in self.known]
                if new:
                    if self.accept:
                        self.fachverfahren.accept(new[0])
                    else:
                        received = self.fachverfahren.receive(new[0])
                        self.fachverfahren.post_decision(
                            received,
                            event=Event.REJECT_SUBMISSION,
                            payload={"problems": [REJECT_PROBLEM]},
                        )
                    self.decided = new[0]
                    return
                time.sleep(0.1)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def result(self) -> str:
        self.join(timeout=40)
        if self.error is not None:
            raise self.error
        assert self.decided is not None, "nothing arrived"
        return self.decided


def test_send_with_attachments_and_wait_then_status(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_bytes(dumps_compact(demo_json_data()))
    pdf = tmp_path / "antrag.pdf"
    pdf.write_bytes(b"%PDF-1.4 Antrag " * 100)
    note = tmp_path / "nachweis.txt"
    note.write_text("Nachweis", encoding="utf-8")

    decider = Decider(stack.fachverfahren)
    decider.start()
    code, out, err = run_cli(
        capsys,
        "send",
        "--profile",
        str(profile),
        "--data",
        str(data),
        "--attachment",
        f"{pdf}:form",
        "--attachment",
        str(note),
        "--reply-email",
        "erika.mustermann@example.org",
        "--wait",
        "--timeout",
        "30",
        "--json",
    )
    assert code == 0, err
    sent = json.loads(out)
    # The ids came first, on stderr (before the wait; stdout stays one JSON document).
    assert f"submissionId {sent['submissionId']}, caseId {sent['caseId']}" in err
    assert decider.result() == sent["submissionId"]
    assert sent["destinationId"] == stack.destination.destination_id
    assert len(sent["attachmentIds"]) == 2
    assert sent["status"]["status"] == "accepted"
    assert sent["status"]["tagsChecked"] is True
    assert sent["status"]["authenticationTags"] == sent["authenticationTags"]

    code, out, err = run_cli(
        capsys, "status", "--profile", str(profile), "--case", sent["caseId"], "--json"
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "accepted"
    assert report["final"] is True
    assert report["tagsChecked"] is True
    assert report["submissionId"] == sent["submissionId"]
    assert report["destinationId"] == stack.destination.destination_id
    assert [e["event"] for e in report["events"]][-1] == "accept-submission"
    assert {e["signer"] for e in report["events"]} == {"zustelldienst", "destination"}

    code, out, err = run_cli(capsys, "status", "--profile", str(profile), "--last")
    assert code == 0, err
    assert "status: accepted" in out
    assert "all SETs verified, tags match" in out

    # The profile's URL changed as after `fitconnect dev --port …` (another loopback URL of
    # the same local stack): --last still finds the submission.
    document = json.loads(profile.read_text(encoding="utf-8"))
    document["submissionApiUrl"] = document["submissionApiUrl"].replace("127.0.0.1", "localhost")
    profile.write_text(json.dumps(document), encoding="utf-8")
    code, out, err = run_cli(capsys, "status", "--profile", str(profile), "--last", "--json")
    assert code == 0, err
    assert json.loads(out)["caseId"] == sent["caseId"]


def test_send_rejected_exits_3_with_the_problems(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_bytes(b'{"antragsteller":{"vorname":"Erika"}}')
    decider = Decider(stack.fachverfahren, accept=False)
    decider.start()
    code, out, err = run_cli(
        capsys, "send", "--profile", str(profile), "--data", str(data), "--wait", "--timeout", "30"
    )
    assert code == 3, err
    decider.result()
    assert "status: rejected" in out
    assert "Schema-Verletzung [data]: anschrift fehlt" in out
    assert REJECT_PROBLEM["type"] in out


def test_send_to_an_inactive_destination_exits_3_and_sends_nothing(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = submissions_of(stack.live, stack.sender)
    data = tmp_path / "antrag.json"
    data.write_bytes(dumps_compact(demo_json_data()))
    code, out, err = run_cli(
        capsys,
        "send",
        "--profile",
        str(profile),
        "--destination",
        stack.inactive.destination_id,
        "--data",
        str(data),
    )
    assert code == 3
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "'inactive'" in err
    assert submissions_of(stack.live, stack.sender) == before


def test_send_with_a_data_schema_the_destination_does_not_take_exits_3(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.xml"
    data.write_bytes(b"<antrag/>")
    code, _, err = run_cli(
        capsys,
        "send",
        "--profile",
        str(profile),
        "--data",
        str(data),
        "--schema",
        "urn:example:unbekannt:1.0",
    )
    assert code == 3
    assert "does not accept data schema urn:example:unbekannt:1.0 (application/xml)" in err
    assert DEMO_XML_SCHEMA_URI in err  # it says what is accepted


def test_status_of_a_tampered_decision_exits_3(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A validly signed accept that names other tags than were sent: not delivered."""
    data = tmp_path / "antrag.json"
    data.write_bytes(dumps_compact(demo_json_data()))
    code, out, err = run_cli(
        capsys, "send", "--profile", str(profile), "--data", str(data), "--json"
    )
    assert code == 0, err
    sent = json.loads(out)
    received = stack.fachverfahren.receive(sent["submissionId"])
    stack.fachverfahren.post_decision(
        received, tags=AuthenticationTags(metadata=received.tags.data, data=received.tags.data)
    )
    code, out, err = run_cli(capsys, "status", "--profile", str(profile), "--case", sent["caseId"])
    assert code == 3
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert "other authentication tags than were sent (metadata)" in err


def test_unknown_destination_and_case_exit_4(
    stack: Stack, profile: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "antrag.json"
    data.write_bytes(dumps_compact(demo_json_data()))
    unknown = new_id()
    code, _, err = run_cli(
        capsys, "send", "--profile", str(profile), "--destination", unknown, "--data", str(data)
    )
    assert code == 4
    assert f"destination {unknown} not found" in err
    code, _, err = run_cli(capsys, "destination", "show", "--profile", str(profile), unknown)
    assert code == 4
    code, _, err = run_cli(capsys, "status", "--profile", str(profile), "--case", unknown)
    assert code == 4
    assert "not found" in err


def test_destination_show(stack: Stack, profile: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(capsys, "destination", "show", "--profile", str(profile))
    assert code == 0, err
    assert stack.destination.destination_id in out
    assert "all checks passed" in out
    assert f"encryption key: {stack.destination.encryption_kid}" in out

    code, out, err = run_cli(capsys, "destination", "show", "--profile", str(profile), "--json")
    assert code == 0, err
    report: dict[str, Any] = json.loads(out)
    assert report["ok"] is True
    assert report["environment"] == "local"
    assert report["encryptionKey"] == {
        "kid": stack.destination.encryption_kid,
        "valid": True,
        "problem": None,
    }

    code, out, err = run_cli(
        capsys,
        "destination",
        "show",
        "--profile",
        str(profile),
        stack.inactive.destination_id,
        "--service",
        SERVICE_KEY,
    )
    assert code == 3
    assert "status is 'inactive', not 'active'" in out


def test_switching_the_cli_to_fitkos_test_environment_by_variables_only(
    stack: Stack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``FITCONNECT_ENV=test`` + client id/secret, no profile: the CLI talks to FITKO's test
    hostnames (routed to the live server here) with exactly the same commands."""
    client = stack.live.seed.sender()
    monkeypatch.setenv("FITCONNECT_ENV", "test")
    monkeypatch.setenv("FITCONNECT_CLIENT_ID", client.client_id)
    monkeypatch.setenv("FITCONNECT_CLIENT_SECRET", client.client_secret)
    hosts: set[str] = set()
    route = route_to(stack.live)

    class Route(httpx.AsyncHTTPTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            hosts.add(request.url.host)
            return await super().handle_async_request(route(request))

    monkeypatch.setattr(cli_profile, "_transport_factory", Route)
    code, out, err = run_cli(
        capsys, "destination", "show", stack.destination.destination_id, "--json"
    )
    assert code == 0, err
    assert json.loads(out)["environment"] == "test"
    # `profile show` shows the preset and where the credentials come from (no profile file).
    code, out, err = run_cli(capsys, "profile", "show", "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["environment"] == "test"
    assert shown["credentialsFromEnvironment"]["clientId"] == client.client_id
    assert client.client_secret not in out
    assert hosts == {
        "auth-testing.fit-connect.fitko.dev",
        "submission-api-testing.fit-connect.fitko.dev",
    }
