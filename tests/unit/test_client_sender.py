"""Sending end to end against the in-memory Zustelldienst, and verified status."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.unit.test_client_fakes import (
    JSON_SCHEMA,
    SERVICE,
    SERVICE_NAME,
    XML_SCHEMA,
    FakeZustelldienst,
    RecordingSleep,
    credentials,
    environment,
    other_destination_keys,
)

from fitconnect_kit.client.errors import (
    AmbiguousCaseError,
    EventLogVerificationError,
    RateLimitedError,
    ServerError,
    SubmissionError,
    SubmissionLimitError,
    WaitTimeoutError,
)
from fitconnect_kit.client.sender import AsyncSender, Limits, SentSubmission
from fitconnect_kit.client.submission import SubmissionBuilder
from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.events import AuthenticationTags, Event
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.problems import RejectProblems, reject_problem

ATTACHMENT_PATH_CONTENT = b"%PDF-1.7\n" + bytes(range(256)) * 40


def sender_for(zd: FakeZustelldienst, **options: Any) -> AsyncSender:
    options.setdefault("sleep", RecordingSleep(zd.clock))
    options.setdefault("rand", lambda: 0.5)
    return AsyncSender(
        environment(), credentials(), transport=zd.transport(), clock=zd.clock, **options
    )


def builder(zd: FakeZustelldienst) -> SubmissionBuilder:
    return SubmissionBuilder(zd.destination_id).service(SERVICE, SERVICE_NAME)


async def send_simple(zd: FakeZustelldienst, sender: AsyncSender) -> SentSubmission:
    sub = (
        builder(zd)
        .json_data({"antrag": "x"}, schema_uri=JSON_SCHEMA)
        .attachment(b"attachment bytes", filename="a.txt")
        .build()
    )
    return await sender.send(sub)


# --- sending -------------------------------------------------------------------------------------


async def test_send_json_data_and_three_kinds_of_attachments(tmp_path: Path) -> None:
    zd = FakeZustelldienst()
    pdf = tmp_path / "antrag.pdf"
    pdf.write_bytes(ATTACHMENT_PATH_CONTENT)
    stream = io.BytesIO(b"stream attachment " * 1000)
    progress: list[tuple[str, int, int]] = []
    data = {"antragsteller": {"name": "Erika Mustermann"}, "betrag": 12.5}
    submission = (
        builder(zd)
        .json_data(data, schema_uri=JSON_SCHEMA)
        .attachment(b"in memory", filename="notiz.txt")
        .attachment(pdf, purpose="form")
        .attachment(stream, filename="stream.bin", purpose="report")
        .reply_email("erika@example.org")
        .reference(sender_reference="AZ-1")
        .callback("https://sender.example/cb", "cb-secret")
        .build()
    )
    async with sender_for(zd) as sender:
        sent = await sender.send(submission, progress=lambda *a: progress.append(a))

    stored = zd.only_submission()
    assert (sent.submission_id, sent.case_id) == (stored.submission_id, stored.case_id)
    assert sent.destination_id == zd.destination_id
    assert stored.announced == list(sent.attachment_ids)
    assert stored.service_type == {"name": SERVICE_NAME, "identifier": SERVICE}
    assert stored.callback == {"url": "https://sender.example/cb", "secret": "cb-secret"}

    # What the receiver decrypts is what was given, and the metadata hashes match it.
    metadata = json.loads(zd.decrypt(stored.encrypted_metadata or ""))
    assert metadata == sent.metadata
    assert metadata["$schema"].endswith("/1.2.0/metadata.schema.json")
    assert sent.metadata_version == "1.2.0"
    plain_data = zd.decrypt(stored.encrypted_data or "")
    assert plain_data == json.dumps(data, separators=(",", ":")).encode()
    assert metadata["contentStructure"]["data"] == {
        "hash": {"type": "sha512", "content": hashlib.sha512(plain_data).hexdigest()},
        "submissionSchema": {"schemaUri": JSON_SCHEMA, "mimeType": "application/json"},
    }
    expected = {
        sent.attachment_ids[0]: b"in memory",
        sent.attachment_ids[1]: ATTACHMENT_PATH_CONTENT,
        sent.attachment_ids[2]: b"stream attachment " * 1000,
    }
    entries = {a["attachmentId"]: a for a in metadata["contentStructure"]["attachments"]}
    for aid, plaintext in expected.items():
        assert zd.decrypt(stored.attachments[aid]) == plaintext
        assert entries[aid]["hash"]["content"] == hashlib.sha512(plaintext).hexdigest()
        header = jwe.parse(stored.attachments[aid]).header
        assert header["kid"] == zd.keys.encryption_kid
        assert header["cty"] == entries[aid]["mimeType"]
    assert entries[sent.attachment_ids[1]]["purpose"] == "form"
    assert entries[sent.attachment_ids[1]]["filename"] == "antrag.pdf"
    assert entries[sent.attachment_ids[1]]["mimeType"] == "application/pdf"
    assert metadata["replyChannel"] == {"eMail": {"address": "erika@example.org"}}
    assert jwe.parse(stored.encrypted_metadata or "").cty == "application/json"

    # The tags the SDK reports are those of the stored ciphertexts.
    assert sent.authentication_tags == zd.tags_of(stored)
    # Progress ends at the exact Content-Length of every upload.
    finals = {aid: (done, total) for aid, done, total in progress}
    for aid in sent.attachment_ids:
        done, total = finals[aid]
        assert done == total == len(stored.attachments[aid])
    assert sent.to_json()["submissionId"] == sent.submission_id


async def test_send_xml_data() -> None:
    zd = FakeZustelldienst()
    xml = b"<?xml version='1.0'?><antrag><name>Erika</name></antrag>"
    async with sender_for(zd) as sender:
        await sender.send(builder(zd).xml_data(xml, schema_uri=XML_SCHEMA).build())
    stored = zd.only_submission()
    assert zd.decrypt(stored.encrypted_data or "") == xml
    assert jwe.parse(stored.encrypted_data or "").cty == "application/xml"
    assert stored.announced == []


async def test_destination_check_failure_sends_nothing() -> None:
    zd = FakeZustelldienst()
    submission = builder(zd).json_data({}, schema_uri="urn:not-offered").build()
    async with sender_for(zd) as sender:
        with pytest.raises(SubmissionError.__mro__[1]):  # any ClientError
            await sender.send(submission)
    assert zd.count("POST", "/v1/submissions") == 0


async def test_pre_encrypted_data_and_attachment(tmp_path: Path) -> None:
    zd = FakeZustelldienst()
    plaintext = b'{"aus":"dem Browser"}'
    part = jwe.encrypt(plaintext, zd.keys.encryption_public, cty="application/json")
    att = jwe.encrypt(b"attachment from browser", zd.keys.encryption_public, cty="text/plain")
    path = tmp_path / "att.jwe"
    path.write_text(att.token + "\n")
    submission = (
        builder(zd)
        .encrypted_data(part.token, sha512_hex=part.plaintext_sha512, schema_uri=JSON_SCHEMA)
        .encrypted_attachment(
            path, sha512_hex=att.plaintext_sha512, mime_type="text/plain", filename="a.txt"
        )
        .encrypted_attachment(att.token, sha512_hex=att.plaintext_sha512, mime_type="text/plain")
        .build()
    )
    async with sender_for(zd) as sender:
        sent = await sender.send(submission)
    stored = zd.only_submission()
    assert stored.encrypted_data == part.token
    assert stored.attachments[sent.attachment_ids[0]] == att.token.encode()
    metadata = json.loads(zd.decrypt(stored.encrypted_metadata or ""))
    assert metadata["contentStructure"]["data"]["hash"]["content"] == part.plaintext_sha512
    assert sent.authentication_tags.data == part.authentication_tag
    assert sent.authentication_tags.attachments[sent.attachment_ids[0]] == att.authentication_tag
    assert stored.attachments[sent.attachment_ids[1]] == att.token.encode()
    assert sent.authentication_tags == zd.tags_of(stored)


async def test_pre_encrypted_data_for_another_key_is_refused_before_announcing() -> None:
    zd = FakeZustelldienst()
    wrong = jwe.encrypt(b"{}", other_destination_keys().encryption_public, cty="application/json")
    submission = (
        builder(zd)
        .encrypted_data(wrong.token, sha512_hex=wrong.plaintext_sha512, schema_uri=JSON_SCHEMA)
        .build()
    )
    async with sender_for(zd) as sender:
        with pytest.raises(SubmissionError, match="encrypt it again with the current key"):
            await sender.send(submission)
    assert zd.count("POST", "/v1/submissions") == 0


async def test_limits_are_checked_before_announcing(tmp_path: Path) -> None:
    zd = FakeZustelldienst()
    two = builder(zd).attachment(b"a", filename="a").attachment(b"b", filename="b").build()
    async with sender_for(zd, limits=Limits(max_attachments=1)) as sender:
        with pytest.raises(SubmissionLimitError, match="at most 1"):
            await sender.send(two)
    big = builder(zd).attachment(b"x" * 5000, filename="big.bin").build()
    async with sender_for(zd, limits=Limits(max_attachment_bytes=3000)) as sender:
        with pytest.raises(SubmissionLimitError, match=r"big\.bin is \d+ bytes encrypted"):
            await sender.send(big)
    async with sender_for(zd, limits=Limits(max_total_attachment_bytes=1500)) as sender:
        with pytest.raises(SubmissionLimitError, match="per submission"):
            await sender.send(two)
    assert zd.count("POST", "/v1/submissions") == 0


async def test_announce_503_is_not_retried_but_429_is() -> None:
    zd = FakeZustelldienst()
    zd.inject("POST", "/v1/submissions", httpx.Response(503))
    async with sender_for(zd) as sender:
        with pytest.raises(ServerError):
            await send_simple(zd, sender)
    assert zd.count("POST", "/v1/submissions") == 1
    zd.inject("POST", "/v1/submissions", httpx.Response(429, headers={"Retry-After": "2"}))
    async with sender_for(zd) as sender:
        await send_simple(zd, sender)
    assert zd.count("POST", "/v1/submissions") == 3


async def test_failure_after_announce_names_the_incomplete_submission() -> None:
    zd = FakeZustelldienst()
    zd.inject("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+", httpx.Response(429), times=9)
    async with sender_for(zd) as sender:
        with pytest.raises(RateLimitedError) as info:
            await send_simple(zd, sender)
    sid = zd.only_submission().submission_id
    assert any(sid in note and "one day" in note for note in info.value.__notes__)


async def test_attachment_upload_is_retried_with_a_fresh_encryption() -> None:
    zd = FakeZustelldienst()
    zd.inject("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+", httpx.Response(503))
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
    assert zd.count("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+") == 2
    assert sent.authentication_tags == zd.tags_of(zd.only_submission())


async def test_lost_answer_of_a_stored_upload_keeps_the_stored_tag() -> None:
    zd = FakeZustelldienst()

    def store_then_fail(request: httpx.Request) -> httpx.Response:
        # The upload reaches the Zustelldienst, but the answer is lost on the way back.
        import re

        sid, aid = re.findall(r"/v1/submissions/([^/]+)/attachments/([^/]+)", request.url.path)[0]
        zd.submissions[sid].attachments[aid] = request.content
        return httpx.Response(504)

    zd.inject("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+", store_then_fail)
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
    stored = zd.only_submission()
    assert zd.count("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+") == 2  # 504, then 409
    assert sent.authentication_tags == zd.tags_of(stored)
    zd.accept(sent.submission_id)
    async with sender_for(zd) as sender:
        assert (await sender.status(sent)).accepted


async def test_lost_answer_of_a_submit_is_confirmed_from_the_event_log() -> None:
    zd = FakeZustelldienst()

    def submit_then_fail(request: httpx.Request) -> httpx.Response:
        sid = request.url.path.rsplit("/", 1)[1]
        zd.submit(sid, json.loads(request.content))
        return httpx.Response(502)

    zd.inject("PUT", r"/v1/submissions/[0-9a-f-]+", submit_then_fail)
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
    assert zd.count("PUT", r"/v1/submissions/[0-9a-f-]+") == 2
    assert zd.only_submission().status == "submitted"
    assert sent.authentication_tags == zd.tags_of(zd.only_submission())


async def test_non_seekable_stream_is_not_retried() -> None:
    zd = FakeZustelldienst()

    class Pipe(io.RawIOBase):
        def __init__(self) -> None:
            self.data = io.BytesIO(b"pipe data")

        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return self.data.readinto(buffer)

    zd.inject("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+", httpx.Response(503))
    submission = builder(zd).attachment(Pipe(), size=9, filename="p").build()  # type: ignore[arg-type]
    async with sender_for(zd) as sender:
        with pytest.raises(ServerError):
            await sender.send(submission)
    assert zd.count("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+") == 1


async def test_a_stream_shorter_than_its_size_fails() -> None:
    zd = FakeZustelldienst()

    class Short(io.RawIOBase):
        def readable(self) -> bool:
            return True

        def readinto(self, buffer: Any) -> int:
            return 0

    submission = builder(zd).attachment(Short(), size=10, filename="s").build()  # type: ignore[arg-type]
    async with sender_for(zd) as sender:
        with pytest.raises(SubmissionError, match="ended 10 bytes early"):
            await sender.send(submission)


# --- status --------------------------------------------------------------------------------------


async def test_status_follows_the_verified_event_log() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        report = await sender.status(sent)
        assert report.status is SubmissionStatus.SUBMITTED
        assert [e.name for e in report.events] == ["create-submission", "submit-submission"]
        assert all(e.signer == "zustelldienst" for e in report.events)
        assert report.authentication_tags == sent.authentication_tags
        assert not report.is_final

        zd.zd_event(Event.NOTIFY_SUBMISSION, sent.submission_id, {"notifyType": "polling"})
        assert (await sender.status(sent)).status is SubmissionStatus.NOTIFIED

        zd.accept(sent.submission_id)
        report = await sender.status(sent)
        assert report.status is SubmissionStatus.ACCEPTED
        assert report.accepted
        assert report.is_final
        assert report.tags_checked
        assert report.events[-1].signer == "destination"
        assert report.to_json()["status"] == "accepted"

        # By submission id alone: the submission's own event log.
        by_submission = await sender.status(submission_id=sent.submission_id)
        assert by_submission.case_id == sent.case_id
        assert by_submission.status is SubmissionStatus.ACCEPTED
        assert zd.count("GET", r"/v1/submissions/[^/]+/events") == 1

        # By case id alone (as the CLI does): the single submission is found.
        by_case = await sender.status(sent.case_id)
        assert by_case.submission_id == sent.submission_id
        assert by_case.destination_id == zd.destination_id
        assert by_case.status is SubmissionStatus.ACCEPTED


async def test_rejection_carries_the_problems() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        problem = reject_problem(RejectProblems.SCHEMA_VIOLATION, "data", "Feld fehlt")
        zd.reject(sent.submission_id, [problem.to_json()])
        report = await sender.status(sent)
    assert report.rejected
    assert [p.type for p in report.problems] == [RejectProblems.SCHEMA_VIOLATION.type_uri]
    assert report.problems[0].detail == "Feld fehlt"


async def test_receiver_tags_that_differ_are_an_error() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        real = zd.tags_of(zd.only_submission())
        fake_tag = "A" * 22
        zd.accept(
            sent.submission_id,
            AuthenticationTags(metadata=real.metadata, data=fake_tag, attachments=real.attachments),
        )
        with pytest.raises(EventLogVerificationError, match="other authentication tags") as info:
            await sender.status(sent)
    assert "data" in str(info.value)
    assert info.value.cli_exit_code == 3


async def test_tags_recorded_by_the_zd_must_match_what_was_sent() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        other = AuthenticationTags(metadata="B" * 22)
        with pytest.raises(EventLogVerificationError, match="Zustelldienst recorded other"):
            await sender.status(sent.case_id, sent_tags=other)


async def test_accept_without_tags_is_an_error() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.receiver_event(
            Event.ACCEPT_SUBMISSION,
            sent.submission_id,
            {"authenticationTags": sent.authentication_tags},
            tamper=lambda claims: claims["events"][Event.ACCEPT_SUBMISSION.value].clear(),
        )
        with pytest.raises(EventLogVerificationError, match="carries no authenticationTags"):
            await sender.status(sent)


async def test_set_with_a_broken_signature_is_an_error() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        token = zd.accept(sent.submission_id)
        log = zd.case_events[sent.case_id]
        head, payload, signature = token.split(".")
        log[-1] = f"{head}.{payload}.{signature[:-4]}AAAA"
        with pytest.raises(EventLogVerificationError, match="does not verify"):
            await sender.status(sent)


async def test_set_signed_by_another_destination_is_an_error() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        # Signed with a key the destination does not have.
        zd.receiver_event(
            Event.ACCEPT_SUBMISSION,
            sent.submission_id,
            {"authenticationTags": zd.tags_of(zd.only_submission())},
            key_set=other_destination_keys(),
        )
        with pytest.raises(EventLogVerificationError, match="verification key not found"):
            await sender.status(sent)
    zd2 = FakeZustelldienst()
    async with sender_for(zd2) as sender:
        sent = await send_simple(zd2, sender)
        zd2.receiver_event(
            Event.ACCEPT_SUBMISSION,
            sent.submission_id,
            {"authenticationTags": zd2.tags_of(zd2.only_submission())},
            issuer="0b799252-deb9-42b0-98d3-c50d24bbafe0",
        )
        with pytest.raises(EventLogVerificationError, match="sent to destination"):
            await sender.status(sent)


async def test_zd_set_with_unknown_key_is_an_error() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.zd_jwk = dict(zd.zd_jwk, kid="rotated-away")
        with pytest.raises(EventLogVerificationError, match="no key with kid"):
            await sender.status(sent)


async def test_real_test_environment_set_verifies(load_vector: Any) -> None:
    vector = load_vector("zustelldienst-set.json")
    zd = FakeZustelldienst()
    zd.zd_jwk = vector["jwks"]["keys"][0]
    case_id = vector["expected_payload"]["txn"].split(":", 1)[1]
    zd.case_events[case_id] = [vector["set_valid"]]
    async with sender_for(zd) as sender:
        events = await sender.event_log(case_id)
        assert [e.name for e in events] == ["create-submission"]
        assert events[0].issuer == "https://submission-api-testing.fit-connect.fitko.dev"
        zd.case_events[case_id] = [vector["set_signed_by_other_key"]]
        with pytest.raises(EventLogVerificationError):
            await sender.event_log(case_id)


async def test_event_log_is_read_page_by_page() -> None:
    zd = FakeZustelldienst()
    zd.event_page_size = 1
    async with sender_for(zd) as sender:
        sent = await send_simple(zd, sender)
        zd.accept(sent.submission_id)
        report = await sender.status(sent)
    assert len(report.events) == 3
    pages = [r for r in zd.requests if r.url.path.endswith("/events")]
    assert [r.url.params["offset"] for r in pages] == ["0", "1", "2"]
    assert {r.url.params["limit"] for r in pages} == {"500"}


async def test_case_with_several_submissions_needs_a_submission_id() -> None:
    zd = FakeZustelldienst()
    async with sender_for(zd) as sender:
        first = await send_simple(zd, sender)
        second = await sender.send(
            builder(zd).case(first.case_id).attachment(b"more", filename="m.txt").build()
        )
        assert second.case_id == first.case_id
        with pytest.raises(AmbiguousCaseError, match="holds 2 submissions"):
            await sender.status(first.case_id)
        report = await sender.status(first.case_id, submission_id=second.submission_id)
        assert report.submission_id == second.submission_id


async def test_wait_polls_until_final() -> None:
    zd = FakeZustelldienst()
    sleep = RecordingSleep(zd.clock)
    async with sender_for(zd, sleep=sleep) as sender:
        sent = await send_simple(zd, sender)
        polls = 0
        original = sender.status

        async def status(*args: Any, **kwargs: Any) -> Any:
            nonlocal polls
            polls += 1
            if polls == 3:
                zd.accept(sent.submission_id)
            return await original(*args, **kwargs)

        sender.status = status  # type: ignore[method-assign]
        report = await sender.wait(sent, poll_interval=2, max_interval=3)
    assert report.accepted
    assert polls == 3
    assert sleep.delays == [2, 3, 3]  # just sent: the first poll comes after a pause


async def test_wait_polls_an_older_submission_at_once() -> None:
    zd = FakeZustelldienst()
    sleep = RecordingSleep(zd.clock)
    async with sender_for(zd, sleep=sleep) as sender:
        sent = await send_simple(zd, sender)
        zd.accept(sent.submission_id)
        zd.clock.advance(60)
        report = await sender.wait(sent, poll_interval=2)
    assert report.accepted
    assert sleep.delays == []


async def test_wait_times_out() -> None:
    zd = FakeZustelldienst()
    sleep = RecordingSleep(zd.clock)
    async with sender_for(zd, sleep=sleep) as sender:
        sent = await send_simple(zd, sender)
        with pytest.raises(WaitTimeoutError, match="still 'submitted'") as info:
            await sender.wait(sent, timeout=10, poll_interval=4, max_interval=4)
    assert info.value.last_report.status is SubmissionStatus.SUBMITTED
    assert sum(sleep.delays) == pytest.approx(10)
