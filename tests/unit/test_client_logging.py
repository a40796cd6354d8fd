"""No secrets, tokens or plaintext in logs — at any level, through a full flow with errors."""

from __future__ import annotations

import logging

import httpx
import pytest
from tests.unit.test_client_fakes import (
    CLIENT_SECRET,
    JSON_SCHEMA,
    SERVICE,
    SERVICE_NAME,
    FakeZustelldienst,
    RecordingSleep,
    credentials,
    environment,
)

from fitconnect_kit.client.errors import InvalidClientError
from fitconnect_kit.client.sender import AsyncSender
from fitconnect_kit.client.submission import SubmissionBuilder
from fitconnect_kit.protocol.problems import ApiProblems, api_problem

DATA_MARKER = "Geheimer-Fachdaten-Inhalt-7f3a"
ATTACHMENT_MARKER = b"Vertraulicher-Anhang-Inhalt-91bc"
CALLBACK_SECRET = "callback-secret-5d2e"


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    parts = []
    for record in caplog.records:
        parts.append(record.getMessage())
        if record.exc_text:
            parts.append(record.exc_text)
    return "\n".join(parts)


async def test_full_flow_logs_no_secrets_tokens_or_plaintext(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # root: ours, httpx, everything
    zd = FakeZustelldienst()
    # Make the flow exercise retries and a token refresh as well.
    zd.inject("GET", r"/v1/destinations/[^/]+", httpx.Response(503))
    zd.inject("PUT", r"/v1/submissions/[^/]+/attachments/[^/]+", httpx.Response(429))
    unauthorized = api_problem(ApiProblems.UNAUTHORIZED)
    zd.inject(
        "GET",
        r"/v1/cases/[^/]+/events",
        httpx.Response(
            401,
            content=unauthorized.to_bytes(),
            headers={"Content-Type": "application/problem+json"},
        ),
    )
    submission = (
        SubmissionBuilder(zd.destination_id)
        .service(SERVICE, SERVICE_NAME)
        .json_data({"inhalt": DATA_MARKER}, schema_uri=JSON_SCHEMA)
        .attachment(ATTACHMENT_MARKER * 100, filename="anhang.txt")
        .reply_email("erika@example.org")
        .callback("https://sender.example/cb", CALLBACK_SECRET)
        .build()
    )
    async with AsyncSender(
        environment(),
        credentials(),
        transport=zd.transport(),
        clock=zd.clock,
        sleep=RecordingSleep(),
    ) as sender:
        sent = await sender.send(submission)
        zd.accept(sent.submission_id)
        report = await sender.status(sent)
        assert report.accepted
        assert CLIENT_SECRET not in repr(sender)

    assert zd.token_count == 2  # the 401 forced a refresh
    text = logged_text(caplog)
    assert "announced submission" in text  # we did log at DEBUG/INFO …
    assert "retrying" in text
    forbidden = [CLIENT_SECRET, CALLBACK_SECRET, DATA_MARKER, ATTACHMENT_MARKER.decode()]
    forbidden += zd.issued_tokens
    for secret in forbidden:
        assert secret not in text, secret
    # … and the ciphertexts did not end up in the log either.
    stored = zd.only_submission()
    assert (stored.encrypted_metadata or "")[:200] not in text
    assert not any(record.levelno >= logging.ERROR for record in caplog.records)


async def test_errors_do_not_carry_secrets(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    zd = FakeZustelldienst()
    zd.credentials = ("someone", "else")
    async with AsyncSender(environment(), credentials(), transport=zd.transport()) as sender:
        with pytest.raises(InvalidClientError) as info:
            await sender.get_destination(zd.destination_id)
    assert CLIENT_SECRET not in str(info.value)
    assert CLIENT_SECRET not in repr(info.value.__dict__)
    assert CLIENT_SECRET not in logged_text(caplog)
