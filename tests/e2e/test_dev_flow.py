"""`fitconnect dev` end to end: send with the printed commands and the SDK, the demo
Fachverfahren decides, `fitconnect status` shows it verified; sender callbacks; restart.

All tests share one dev process (session fixture). The restart test checks that everything sent
before (by the other tests, or by itself when run alone) is still there afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fitconnect_kit.client import Sender, SubmissionBuilder
from fitconnect_kit.demo import (
    DEMO_JSON_SCHEMA_URI,
    DEMO_SERVICE_IDENTIFIER,
    DEMO_SERVICE_NAME,
    DEMO_XML_SCHEMA_URI,
    demo_json_data,
)
from fitconnect_kit.protocol.callbacks import CallbackType
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.protocol.keygen import load_jwk_file
from tests.e2e.conftest import CliResult, DevProcess
from tests.support.callback_receiver import CallbackReceiver
from tests.support.evil_sender import (
    BuiltSubmission,
    EvilAttachment,
    EvilPlan,
    EvilSender,
    build,
    expected_problems,
    problem_pairs,
)

pytestmark = pytest.mark.slow

PROBLEMS = "https://schema.fitko.de/fit-connect/events/problems/"
WAIT = "60"

#: case id → (submission id, expected final status), filled by the tests, checked after restart.
SENT: dict[str, tuple[str, str]] = {}


def _json(result: CliResult) -> dict[str, Any]:
    assert result.stdout.strip(), result.output
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def _status(dev: DevProcess, case_id: str) -> dict[str, Any]:
    result = dev.cli("status", "--env", "local", "--case", case_id, "--json")
    report = _json(result)
    assert result.returncode == (3 if report["status"] == "rejected" else 0), result.output
    return report


def _sender(dev: DevProcess) -> Sender:
    return Sender.from_config(profile=dev.data_dir / "profile.json")


def _stored(dev: DevProcess, submission_id: str) -> Path:
    return dev.data_dir / "fachverfahren" / submission_id


# --- the three printed commands ------------------------------------------------------------------


def test_the_printed_commands_work_as_printed(dev: DevProcess) -> None:
    send, status, inbox = dev.commands()
    sent = dev.run_line(send)
    assert sent.returncode == 0, sent.output
    assert "status: accepted" in sent.stdout
    submission_id = sent.stdout.split("submissionId: ")[1].split()[0]
    case_id = sent.stdout.split("caseId: ")[1].split()[0]
    SENT[case_id] = (submission_id, "accepted")

    shown = dev.run_line(status)
    assert shown.returncode == 0, shown.output
    assert f"submission: {submission_id}" in shown.stdout
    assert "status: accepted  (all SETs verified, tags match)" in shown.stdout
    assert "accept-submission" in shown.stdout

    received = dev.run_line(inbox)
    assert received.returncode == 0, received.output
    assert f"accepted  {submission_id}  (case {case_id})" in received.stdout
    assert "data.json" in received.stdout

    stored = _stored(dev, submission_id)
    assert json.loads((stored / "data.json").read_bytes()) == demo_json_data()
    assert json.loads((stored / "decision.json").read_bytes())["event"] == "accept-submission"


# --- more kinds of submissions -------------------------------------------------------------------


def test_xml_data_with_attachments_is_accepted(dev: DevProcess) -> None:
    pdf = dev.root / "antrag.pdf"
    pdf.write_bytes(b"%PDF-1.4\n% demo\n" + bytes(range(256)) * 64)
    result = dev.cli(
        "send",
        "--env",
        "local",
        "--data",
        ".fitconnect-dev/antrag.xml",
        "--schema",
        DEMO_XML_SCHEMA_URI,
        "--attachment",
        f"{pdf}:form",
        "--attachment",
        ".fitconnect-dev/nachweis.txt",
        "--reply-email",
        "erika.mustermann@example.org",
        "--wait",
        "--timeout",
        WAIT,
        "--json",
    )
    assert result.returncode == 0, result.output
    document = _json(result)
    assert document["status"]["status"] == "accepted"
    assert len(document["attachmentIds"]) == 2
    SENT[document["caseId"]] = (document["submissionId"], "accepted")

    report = _status(dev, document["caseId"])
    assert report["status"] == "accepted"
    assert report["tagsChecked"] is True
    stored = _stored(dev, document["submissionId"])
    files = {p.name: p.read_bytes() for p in stored.rglob("*") if p.is_file()}
    assert pdf.read_bytes() in files.values()
    assert (dev.data_dir / "nachweis.txt").read_bytes() in files.values()


def test_schema_violation_is_rejected(dev: DevProcess) -> None:
    """The demo file that violates the demo schema (as in docs/quickstart.md)."""
    result = dev.cli(
        "send",
        "--env",
        "local",
        "--data",
        ".fitconnect-dev/antrag-ungueltig.json",
        "--wait",
        "--timeout",
        WAIT,
        "--json",
    )
    assert result.returncode == 3, result.output
    document = _json(result)
    assert document["status"]["status"] == "rejected"
    SENT[document["caseId"]] = (document["submissionId"], "rejected")

    shown = dev.cli("status", "--env", "local", "--last")
    assert shown.returncode == 3, shown.output
    assert "status: rejected  (all SETs verified, tags match)" in shown.stdout
    assert "Schema-Verletzung [data]" in shown.stdout
    assert PROBLEMS + "schema-violation" in shown.stdout
    report = _status(dev, document["caseId"])
    problems = [(p["type"], p.get("instance")) for p in report["problems"]]
    assert problems == [(PROBLEMS + "schema-violation", "data")]

    inbox = dev.cli("dev", "inbox")
    assert f"rejected  {document['submissionId']}" in inbox.stdout
    assert "schema-violation [data]" in inbox.stdout


def test_wrong_data_hash_is_rejected(dev: DevProcess) -> None:
    """Fachdaten encrypted outside the SDK with a hash in the metadata that does not match."""
    public_key = load_jwk_file(dev.data_dir / "keys" / "encryption.public.jwk.json")
    plaintext = dumps_compact(demo_json_data("Max Mustermann"))
    token = jwe.encrypt(plaintext, public_key, cty="application/json").token
    wrong = hashlib.sha512(plaintext + b" ").hexdigest()
    with _sender(dev) as sender:
        profile = sender.profile
        assert profile is not None
        assert profile.destination_id is not None
        submission = (
            SubmissionBuilder(profile.destination_id)
            .service(DEMO_SERVICE_IDENTIFIER, DEMO_SERVICE_NAME)
            .encrypted_data(token, sha512_hex=wrong, schema_uri=DEMO_JSON_SCHEMA_URI)
            .build()
        )
        sent = sender.send(submission)
        report = sender.wait(sent, timeout=float(WAIT), poll_interval=0.5, max_interval=2)
    assert report.rejected
    SENT[sent.case_id] = (sent.submission_id, "rejected")
    problems = [(p.type, p.instance) for p in report.problems]
    assert (PROBLEMS + "hash-mismatch", "data") in problems

    shown = dev.cli("status", "--env", "local", "--case", sent.case_id)
    assert shown.returncode == 3, shown.output
    assert PROBLEMS + "hash-mismatch" in shown.stdout


EVIL_SWITCHES: dict[str, dict[str, Any]] = {
    "wrong_data_hash": {"wrong_data_hash": True},
    "swap_attachments": {"swap_attachments": True},
    "wrong_service": {"wrong_service": "urn:de:fim:leika:leistung:99123456760610"},
    "reply_channel": {"reply_channel": {"deMail": {"address": "a@b.de-mail.de"}}},
    "missing_attachment_in_metadata": {"missing_attachment_in_metadata": True},
    "undecryptable:data": {"undecryptable": "data"},
}


def test_evil_submissions_are_rejected_with_the_right_problems(dev: DevProcess) -> None:
    """Broken submissions sent with tests/support/evil_sender.py (bypassing the SDK's checks)."""
    profile = json.loads((dev.data_dir / "profile.json").read_text())
    plan = EvilPlan(
        destination_id=profile["destinationId"],
        encryption_key=load_jwk_file(dev.data_dir / "keys" / "encryption.public.jwk.json"),
        service=DEMO_SERVICE_IDENTIFIER,
        service_name=DEMO_SERVICE_NAME,
        data=dumps_compact(demo_json_data()),
        data_schema_uri=DEMO_JSON_SCHEMA_URI,
        attachments=(EvilAttachment(b"eins"), EvilAttachment(b"zwei", filename="zwei.txt")),
    )
    evil = EvilSender(
        dev.base_url, profile["sender"]["clientId"], profile["sender"]["clientSecret"]
    )
    sent: dict[str, BuiltSubmission] = {}
    for name, switch in EVIL_SWITCHES.items():
        sent[name] = asyncio.run(evil.send(build(plan.but(**switch))))
    with _sender(dev) as sender:
        for name, built in sent.items():
            assert built.case_id is not None
            assert built.submission_id is not None
            report = sender.wait(
                built.case_id,
                submission_id=built.submission_id,
                timeout=float(WAIT),
                poll_interval=0.5,
                max_interval=2,
            )
            assert report.rejected, name
            assert problem_pairs(report.problems) == expected_problems(name, built), name
            SENT[built.case_id] = (built.submission_id, "rejected")
    # … and `fitconnect status` shows it (exit status 3).
    built = sent["swap_attachments"]
    assert built.case_id is not None
    shown = dev.cli("status", "--env", "local", "--case", built.case_id)
    assert shown.returncode == 3, shown.output
    assert f"Prüfsumme abweichend [attachment:{built.attachment_ids[0]}]" in shown.stdout


# --- sender callbacks ----------------------------------------------------------------------------


def test_sender_callback_new_events_is_signed(dev: DevProcess) -> None:
    secret = "e2e-callback-secret-0123456789abcdef"
    with CallbackReceiver(secret=secret, clock=SYSTEM_CLOCK) as receiver, _sender(dev) as sender:
        profile = sender.profile
        assert profile is not None
        assert profile.destination_id is not None
        submission = (
            SubmissionBuilder(profile.destination_id)
            .service(DEMO_SERVICE_IDENTIFIER, DEMO_SERVICE_NAME)
            .json_data(demo_json_data(), schema_uri=DEMO_JSON_SCHEMA_URI)
            .callback(receiver.url, secret)
            .build()
        )
        sent = sender.send(submission)
        report = sender.wait(sent, timeout=float(WAIT), poll_interval=0.5, max_interval=2)
        assert report.accepted
        SENT[sent.case_id] = (sent.submission_id, "accepted")
        receiver.wait_for(1, timeout=30)
        callbacks = list(receiver.received)
    assert callbacks
    assert all(c.verified for c in callbacks), [c.failure for c in callbacks]
    bodies = [json.loads(c.body) for c in callbacks]
    assert all(b["type"] == CallbackType.NEW_EVENTS.value for b in bodies)
    assert any(
        s.get("submissionId") == sent.submission_id for b in bodies for s in b["submissions"]
    )


# --- restart -------------------------------------------------------------------------------------


def _event_logs(dev: DevProcess) -> dict[str, tuple[str, list[str]]]:
    """case → (status, jtis of its verified event log) of everything in ``SENT`` (via the SDK)."""
    result = {}
    with _sender(dev) as sender:
        for case, (submission_id, _) in SENT.items():
            report = sender.status(case, submission_id=submission_id)
            result[case] = (report.status.value, [e.set.jti for e in report.events])
    return result


def test_restart_keeps_everything_and_pending_work_completes(dev: DevProcess) -> None:
    if len(SENT) < 2:  # run alone (or on its own xdist worker): send something first
        for path, expected in (("antrag.json", "accepted"), ("antrag-ungueltig.json", "rejected")):
            result = dev.cli(
                "send", "--env", "local", "--data", f".fitconnect-dev/{path}", "--wait", "--json"
            )
            document = _json(result)
            assert document["status"]["status"] == expected, result.output
            SENT[document["caseId"]] = (document["submissionId"], expected)
    before = _event_logs(dev)
    assert {case: status for case, (status, _) in before.items()} == {
        case: expected for case, (_, expected) in SENT.items()
    }

    # 1. Stop, start without the demo Fachverfahren and send: the submission waits.
    assert dev.stop(signal.SIGTERM) == 0
    dev.start("--no-subscriber")
    send, _, inbox = dev.commands()  # without the Fachverfahren: send without --wait, inbox
    assert send.endswith(" send --env local --data .fitconnect-dev/antrag.json")
    assert inbox.endswith(" inbox --env local")
    result = dev.run_line(send)
    assert result.returncode == 0, result.output
    pending = {
        "submissionId": result.stdout.split("submissionId: ")[1].split()[0],
        "caseId": result.stdout.split("caseId: ")[1].split()[0],
    }
    waiting = dev.run_line(inbox)
    assert pending["submissionId"] in waiting.stdout, waiting.output

    # 2. Stop again and start with the Fachverfahren: it picks the waiting submission up.
    assert dev.stop(signal.SIGINT) == 0
    dev.start()
    with _sender(dev) as sender:
        report = sender.wait(
            pending["caseId"],
            submission_id=pending["submissionId"],
            timeout=float(WAIT),
            poll_interval=0.5,
            max_interval=2,
        )
    assert report.accepted
    assert (_stored(dev, pending["submissionId"]) / "decision.json").is_file()

    # 3. Everything from before the restarts is intact: statuses and complete event logs.
    assert _event_logs(dev) == before
    shown = dev.cli("status", "--env", "local", "--last")
    assert "status: accepted  (all SETs verified, tags match)" in shown.stdout, shown.output


@pytest.fixture(autouse=True)
def _dev_output_on_failure(dev: DevProcess) -> Iterator[None]:
    """The dev process's log appears in pytest's report of a failing test."""
    yield
    print(dev.output()[-20000:])
