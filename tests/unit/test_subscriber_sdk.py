"""The subscriber SDK against the in-memory Zustelldienst: listing, streaming downloads,
decisions, the event log, configuration and the sync facade."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.support.evil_sender import EvilAttachment, build
from tests.unit.test_client_fakes import API, BASE, CLIENT_ID, CLIENT_SECRET, environment
from tests.unit.test_client_fakes import credentials as sender_credentials
from tests.unit.test_subscriber_fakes import (
    SubscriberZD,
    base_plan,
    converted_keys,
    demo_schemas,
    make_subscriber,
    send_built,
    send_plan,
)

from fitconnect_kit.client._http import RetryPolicy
from fitconnect_kit.client.errors import ConfigurationError, NotFoundError
from fitconnect_kit.client.sender import AsyncSender
from fitconnect_kit.client.subscriber import (
    AsyncSubscriber,
    SubmissionInvalidError,
    Subscriber,
    parse_problem,
    safe_filename,
)
from fitconnect_kit.client.verification import Verdict
from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.errors import DecryptionError, FormatError
from fitconnect_kit.protocol.events import Event
from fitconnect_kit.protocol.problems import RejectProblems


async def no_sleep(_delay: float) -> None:
    return None


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


# --- listing --------------------------------------------------------------------------------------


async def test_list_one_page_and_iterate_all_pages() -> None:
    zd = SubscriberZD()
    ids = [(await send_plan(zd, base_plan(zd, attachments=()))).submission_id for _ in range(5)]
    zd.list_page_size = 2
    async with make_subscriber(zd) as subscriber:
        page = await subscriber.list_submissions(limit=2)
        assert (page.count, page.offset, page.total_count) == (2, 0, 5)
        all_items = [item.submission_id async for item in subscriber.iter_submissions()]
        assert all_items == ids
        assert [s.submission_id for s in await subscriber.pending()] == ids
    assert zd.count("GET", "/v1/submissions") == 1 + 3 + 3


async def test_listing_needs_a_destination() -> None:
    zd = SubscriberZD()
    async with make_subscriber(zd, destination_id=None) as subscriber:
        subscriber.destination_id = None
        with pytest.raises(ConfigurationError, match="destination"):
            await subscriber.list_submissions()
        page = await subscriber.list_submissions(zd.destination_id)
        assert page.total_count == 0


async def test_get_submission_not_found() -> None:
    zd = SubscriberZD()
    async with make_subscriber(zd) as subscriber:
        with pytest.raises(NotFoundError):
            await subscriber.get_submission("11111111-2222-4333-8444-555555555555")


# --- streamed attachments -------------------------------------------------------------------------


async def test_large_attachment_is_streamed_to_a_file(tmp_path: Path) -> None:
    content = os.urandom(3 * 1024 * 1024 + 17)
    zd = SubscriberZD()
    built = await send_plan(
        zd, base_plan(zd, attachments=(EvilAttachment(content, "gross.bin", "application/zip"),))
    )
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        assert received.valid
        (attachment,) = received.attachments
        assert attachment.path == tmp_path / "in" / "gross.bin"
        assert attachment.path.read_bytes() == content
        assert attachment.size == len(content)
        import hashlib

        assert attachment.sha512 == hashlib.sha512(content).hexdigest()
        # The low-level download does the same for a single attachment.
        target = tmp_path / "single.bin"
        result = await subscriber.download_attachment(
            built.submission_id or "", built.attachment_ids[0], target
        )
        assert target.read_bytes() == content
        assert result.plaintext_sha512 == attachment.sha512
    assert oct((tmp_path / "in" / "gross.bin").stat().st_mode & 0o777) == "0o600"


async def test_undecryptable_attachment_leaves_no_file(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd, undecryptable="attachment"))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        assert received.attachments[0].path is None
        assert received.attachments[0].authentication_tag is not None  # read from the stream
        with pytest.raises(DecryptionError):
            await subscriber.download_attachment(
                built.submission_id or "", built.attachment_ids[0], tmp_path / "x.pdf"
            )
    assert listing(tmp_path / "in") == ["data.json", "metadata.json"]
    assert listing(tmp_path) == ["in"]  # no x.pdf, no leftover temporary files


class _BrokenStream(httpx.AsyncByteStream):
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield self.data[: len(self.data) // 2]
        raise httpx.ReadError("connection reset")


async def test_a_download_that_breaks_off_is_retried(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    token = built.attachment_tokens[built.attachment_ids[0]].encode()
    zd.inject(
        "GET",
        r"/v1/submissions/.*/attachments/.*",
        lambda request: httpx.Response(200, stream=_BrokenStream(token)),
    )
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
    assert received.valid
    assert zd.count("GET", r"/v1/submissions/.*/attachments/.*") == 2


async def test_a_download_that_keeps_breaking_fails(tmp_path: Path) -> None:
    from fitconnect_kit.client.errors import TransportError

    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    token = built.attachment_tokens[built.attachment_ids[0]].encode()
    zd.inject(
        "GET",
        r"/v1/submissions/.*/attachments/.*",
        lambda request: httpx.Response(200, stream=_BrokenStream(token)),
        times=5,
    )
    async with make_subscriber(zd, retry=RetryPolicy(max_attempts=2)) as subscriber:
        with pytest.raises(TransportError):
            await subscriber.receive(built.submission_id or "", tmp_path / "in")
    assert not (tmp_path / "in" / "antrag.pdf").exists()


# --- files ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("antrag.pdf", "antrag.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\win.ini", "win.ini"),
        ("/abs/path/x.txt", "x.txt"),
        ("..", "fallback.bin"),
        (".hidden", "hidden"),
        ("a\x00b\nc.txt", "abc.txt"),
        ("CON.txt", "_CON.txt"),
        ("nul", "_nul"),
        ('bad<>:"|?*name.pdf', "badname.pdf"),
        ("", "fallback.bin"),
        (None, "fallback.bin"),
        ("x" * 300 + ".pdf", "x" * 196 + ".pdf"),
    ],
)
def test_safe_filename(name: Any, expected: str) -> None:
    assert safe_filename(name, "fallback.bin") == expected


async def test_attachment_names_are_unique_and_never_escape(tmp_path: Path) -> None:
    zd = SubscriberZD()
    attachments = (
        EvilAttachment(b"eins", "../metadata.json", "application/json"),
        EvilAttachment(b"zwei", "Antrag.PDF", "application/pdf"),
        EvilAttachment(b"drei", "antrag.pdf", "application/pdf"),
        EvilAttachment(b"vier", "", "image/png"),
    )
    built = await send_plan(zd, base_plan(zd, attachments=attachments))
    out = tmp_path / "in"
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", out)
    names = [a.path.name for a in received.attachments if a.path is not None]
    assert names == [
        "metadata (2).json",
        "Antrag.PDF",
        "antrag (2).pdf",
        f"attachment-{built.attachment_ids[3]}.png",
    ]
    assert all(a.path is not None and a.path.parent == out for a in received.attachments)
    assert json.loads((out / "metadata.json").read_bytes())["contentStructure"]
    assert [a.filename for a in received.attachments][:3] == [
        "../metadata.json",
        "Antrag.PDF",
        "antrag.pdf",
    ]


async def test_an_output_directory_is_not_reused_by_accident(tmp_path: Path) -> None:
    zd = SubscriberZD()
    first = await send_plan(zd, base_plan(zd))
    second = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd) as subscriber:
        await subscriber.receive(first.submission_id or "", tmp_path)
        with pytest.raises(ConfigurationError, match="already holds"):
            await subscriber.receive(second.submission_id or "", tmp_path)
        again = await subscriber.receive(first.submission_id or "", tmp_path, overwrite=True)
    assert again.attachments[0].path == tmp_path / "antrag.pdf"


# --- decisions ------------------------------------------------------------------------------------


async def _sender_status(zd: SubscriberZD, case_id: str, sid: str) -> Any:
    async with AsyncSender(
        environment(), sender_credentials(), transport=zd.transport(), clock=zd.clock
    ) as sender:
        return await sender.status(case_id, submission_id=sid, destination_id=zd.destination_id)


async def test_process_accepts_and_the_sender_verifies_the_tags(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.process(built.submission_id or "", tmp_path / "in")
        assert received.decision is not None
        assert received.decision.event is Event.ACCEPT_SUBMISSION
        log = await subscriber.event_log(built.case_id or "")
    assert log.status(built.submission_id) is SubmissionStatus.ACCEPTED
    assert [e.name for e in log.events] == [
        "create-submission",
        "submit-submission",
        "notify-submission",
        "accept-submission",
    ]
    accept = log.events[-1]
    assert accept.issuer == zd.destination_id
    assert accept.signer == "destination"
    assert accept.set.schema == (
        "https://schema.fitko.de/fit-connect/set-payload/1.2.2/set-payload.schema.json"
    )
    assert accept.set.subject == f"submission:{built.submission_id}"
    assert accept.set.txn == f"case:{built.case_id}"
    assert accept.set.kid == zd.keys.signing_kid
    report = await _sender_status(zd, built.case_id or "", built.submission_id or "")
    assert report.status is SubmissionStatus.ACCEPTED
    assert report.tags_checked


async def test_low_level_reject_with_chosen_problems(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        assert received.valid
        posted = await subscriber.reject(
            received,
            [
                "technical-error",
                (RejectProblems.SCHEMA_VIOLATION, "data"),
                parse_problem("hash-mismatch:data", detail="Prüfsumme stimmt nicht"),
            ],
        )
    assert [(p.type.rsplit("/", 1)[-1], p.instance) for p in posted.problems] == [
        ("technical-error", None),
        ("schema-violation", "data"),
        ("hash-mismatch", "data"),
    ]
    assert posted.authentication_tags == received.authentication_tags
    report = await _sender_status(zd, built.case_id or "", built.submission_id or "")
    assert report.status is SubmissionStatus.REJECTED
    assert report.tags_checked


async def test_accepting_an_invalid_submission_is_refused(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd, wrong_data_hash=True))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        with pytest.raises(SubmissionInvalidError, match="cannot be accepted"):
            await subscriber.accept(received)
        assert zd.posted_events == []
        forced = await subscriber.accept(received, force=True)
    assert forced.event is Event.ACCEPT_SUBMISSION


async def test_forward_then_accept(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        await subscriber.forward(received)
        assert (await subscriber.event_log(built.case_id or "")).status(
            built.submission_id
        ) is SubmissionStatus.FORWARDED
        await subscriber.accept(received)
    report = await _sender_status(zd, built.case_id or "", built.submission_id or "")
    assert report.status is SubmissionStatus.ACCEPTED


async def test_posting_the_same_set_again_counts_as_posted(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd) as subscriber:
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        token = subscriber.decision_token(received, Event.ACCEPT_SUBMISSION)
        first = await subscriber.post_event_token(token)
        second = await subscriber.post_event_token(token)  # refused as duplicate: in the log
        assert first.jti == second.jti
        other = subscriber.decision_token(received, Event.REJECT_SUBMISSION, ["technical-error"])
        from fitconnect_kit.client.errors import ConflictError

        with pytest.raises(ConflictError):  # decided already, and not by this token
            await subscriber.post_event_token(other)
    assert len(zd.posted_events) == 1


async def test_post_is_retried_on_503(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    zd.post_faults.append(httpx.Response(503))
    async with make_subscriber(zd, sleep=no_sleep) as subscriber:
        received = await subscriber.process(built.submission_id or "", tmp_path / "in")
    assert received.decision is not None
    assert len(zd.posted_events) == 1


async def test_decisions_need_a_signing_key(tmp_path: Path) -> None:
    zd = SubscriberZD()
    built = await send_plan(zd, base_plan(zd))
    async with make_subscriber(zd, signing_key=None) as subscriber:
        subscriber.signing_key = None
        received = await subscriber.receive(built.submission_id or "", tmp_path / "in")
        with pytest.raises(ConfigurationError, match="signing key"):
            await subscriber.accept(received)


async def test_receiving_needs_decryption_keys(tmp_path: Path) -> None:
    zd = SubscriberZD()
    subscriber = AsyncSubscriber(environment(), sender_credentials(), transport=zd.transport())
    async with subscriber:
        with pytest.raises(ConfigurationError, match="decryption keys"):
            await subscriber.receive("11111111-2222-4333-8444-555555555555", tmp_path)


def test_parse_problem() -> None:
    problem = parse_problem("hash-mismatch:attachment:879EE109-A690-4DB8-AB32-424284184D7D")
    assert problem.instance == "attachment:879ee109-a690-4db8-ab32-424284184d7d"
    assert parse_problem("technical-error").instance is None
    with pytest.raises(FormatError, match="unknown reject problem"):
        parse_problem("no-such-problem:data")
    with pytest.raises(FormatError):
        parse_problem("missing-data:metadata")  # not an allowed instance


# --- configuration and the sync facade ------------------------------------------------------------


def _profile(tmp_path: Path, zd: SubscriberZD) -> Path:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "enc.jwk.json").write_text(json.dumps(zd.keys.encryption_private))
    (keys / "sig.jwk.json").write_text(json.dumps(zd.keys.signing_private))
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
                    "encryptionPrivate": "keys/enc.jwk.json",
                    "signingPrivate": "keys/sig.jwk.json",
                },
            }
        )
    )
    return path


def test_sync_subscriber_from_profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("FITCONNECT_ENV", "FITCONNECT_CLIENT_ID", "FITCONNECT_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    zd = SubscriberZD()
    import asyncio

    built = asyncio.run(send_plan(zd, base_plan(zd)))
    with Subscriber.from_config(
        profile=_profile(tmp_path, zd), transport=zd.transport(), schemas=demo_schemas()
    ) as subscriber:
        inner = subscriber.async_subscriber
        assert inner.destination_id == zd.destination_id
        assert inner.decryption_keys.kids == (zd.keys.encryption_kid,)
        assert inner.signing_key is not None
        assert inner.signing_key.kid == zd.keys.signing_kid
        assert [s.submission_id for s in subscriber.iter_submissions()] == [built.submission_id]
        received = subscriber.process(built.submission_id or "", tmp_path / "in")
        assert received.verdict is Verdict.VALID
        assert received.decision is not None
        assert subscriber.pending() == []
        log = subscriber.event_log(built.case_id or "")
        assert log.status() is SubmissionStatus.ACCEPTED
        assert "accept-submission" in json.dumps(log.to_json())


def test_to_json_is_serializable(tmp_path: Path) -> None:
    zd = SubscriberZD()
    import asyncio

    async def run() -> dict[str, Any]:
        built = build(base_plan(zd, wrong_data_hash=True))
        await send_built(zd, built)
        async with make_subscriber(zd) as subscriber:
            received = await subscriber.process(built.submission_id or "", tmp_path / "in")
        return received.to_json()

    data = asyncio.run(run())
    text = json.dumps(data)
    assert data["verdict"] == "invalid"
    assert data["decision"]["event"] == "reject-submission"
    assert "hash-mismatch" in text


def test_converted_keys_are_cached() -> None:
    zd = SubscriberZD()
    assert converted_keys(zd.keys.encryption_kid) is converted_keys(zd.keys.encryption_kid)
