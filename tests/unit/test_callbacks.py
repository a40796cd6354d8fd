"""Callback HMAC-SHA512 (protocol/callbacks.py) against the documented vectors."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from fitconnect_kit.protocol.api import NewEventsCallback, NewSubmissionsCallback, SubmissionSummary
from fitconnect_kit.protocol.callbacks import (
    CALLBACKS_BASE,
    HEADER_AUTHENTICATION,
    HEADER_TIMESTAMP,
    MAX_AGE,
    MAX_FUTURE_SKEW,
    CallbackFailure,
    CallbackPayload,
    CallbackRejectedError,
    CallbackType,
    compute_signature,
    new_events_body,
    new_submissions_body,
    parse_callback_body,
    sign_callback,
    verify_callback,
    verify_callback_request,
)
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.errors import CallbackVerificationError, FormatError

SECRET = "a-test-secret-for-callbacks"


@pytest.fixture
def vector(load_vector: Callable[[str], Any]) -> dict[str, Any]:
    data: dict[str, Any] = load_vector("callback-hmac.json")
    return data


def clock_at(timestamp: int | str) -> ManualClock:
    return ManualClock(datetime.fromtimestamp(int(timestamp), UTC))


def refused(reason: CallbackFailure, **kwargs: Any) -> CallbackRejectedError:
    with pytest.raises(CallbackRejectedError) as info:
        verify_callback(**kwargs)
    assert info.value.reason is reason
    assert str(info.value).startswith(f"callback refused ({reason.value}): ")
    assert isinstance(info.value, CallbackVerificationError)
    return info.value


def test_documented_vectors_verify(vector: dict[str, Any]) -> None:
    assert len(vector["cases"]) == 2
    for case in vector["cases"]:
        body = case["body"].encode("utf-8")
        ts = case["callback_timestamp"]
        assert compute_signature(body, vector["secret"], ts) == case["callback_authentication"]
        assert compute_signature(body, vector["secret"], int(ts)) == case["callback_authentication"]
        result = verify_callback(
            body,
            secret=vector["secret"],
            timestamp=ts,
            signature=case["callback_authentication"],
            clock=clock_at(ts),
        )
        assert result == int(ts)


def test_reserialized_body_does_not_verify(vector: dict[str, Any]) -> None:
    for case in vector["cases"]:
        pretty = json.dumps(json.loads(case["body"]), indent=2).encode("utf-8")
        refused(
            CallbackFailure.MISMATCH,
            body=pretty,
            secret=vector["secret"],
            timestamp=case["callback_timestamp"],
            signature=case["callback_authentication"],
            clock=clock_at(case["callback_timestamp"]),
        )


def _vector_kwargs(vector: dict[str, Any], index: int = 1, **overrides: Any) -> dict[str, Any]:
    case = vector["cases"][index]
    kwargs: dict[str, Any] = {
        "body": case["body"].encode("utf-8"),
        "secret": vector["secret"],
        "timestamp": case["callback_timestamp"],
        "signature": case["callback_authentication"],
        "clock": clock_at(case["callback_timestamp"]),
    }
    kwargs.update(overrides)
    return kwargs


def test_window_edges(vector: dict[str, Any]) -> None:
    ts = int(vector["cases"][1]["callback_timestamp"])
    # Exactly 5 minutes old is still fine, one second more is stale.
    verify_callback(**_vector_kwargs(vector, clock=clock_at(ts + 300)))
    error = refused(CallbackFailure.STALE, **_vector_kwargs(vector, clock=clock_at(ts + 301)))
    assert "301 s old" in str(error)
    # Without an explicit clock the 2023 vector is long stale.
    refused(CallbackFailure.STALE, **{**_vector_kwargs(vector), "clock": ManualClock()})
    # Slightly in the future is tolerated (clock drift); beyond the skew it is refused.
    skew = int(MAX_FUTURE_SKEW.total_seconds())
    verify_callback(**_vector_kwargs(vector, clock=clock_at(ts - skew)))
    refused(CallbackFailure.FUTURE_DATED, **_vector_kwargs(vector, clock=clock_at(ts - skew - 1)))
    # A custom max_age.
    verify_callback(**_vector_kwargs(vector, clock=clock_at(ts + 3600)), max_age=timedelta(hours=1))
    assert timedelta(minutes=5) == MAX_AGE


def test_wrong_secret_and_changed_body(vector: dict[str, Any]) -> None:
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, secret=vector["secret"] + "x"))
    body = vector["cases"][1]["body"].encode("utf-8")
    crlf = body + b"\r\n"
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, body=crlf))
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, body=body.replace(b",", b",\r\n")))
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, body=b""))
    # The signature of the other vector case (other body) does not fit this body.
    other = vector["cases"][0]["callback_authentication"]
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, signature=other))
    # A different timestamp is part of the MAC.
    ts = int(vector["cases"][1]["callback_timestamp"]) + 1
    refused(CallbackFailure.MISMATCH, **_vector_kwargs(vector, timestamp=str(ts)))


def test_signature_format(vector: dict[str, Any]) -> None:
    good = vector["cases"][1]["callback_authentication"]
    # Documented decision: uppercase hex is refused as malformed (the ZD sends lowercase).
    refused(CallbackFailure.MALFORMED_SIGNATURE, **_vector_kwargs(vector, signature=good.upper()))
    for bad in (good[:-1], good + "0", "sha512=" + good, good[:64], "zz" * 64):
        refused(CallbackFailure.MALFORMED_SIGNATURE, **_vector_kwargs(vector, signature=bad))
    # Surrounding whitespace of a header value is not part of it (HTTP).
    verify_callback(**_vector_kwargs(vector, signature=f" {good} "))


@pytest.mark.parametrize("bad", ["16725275.99", "-1672527599", "1672527599s", "0x10", "1e9", "١٢٣"])
def test_malformed_timestamp(vector: dict[str, Any], bad: str) -> None:
    refused(CallbackFailure.MALFORMED_TIMESTAMP, **_vector_kwargs(vector, timestamp=bad))


def test_missing_headers(vector: dict[str, Any]) -> None:
    refused(CallbackFailure.MISSING_TIMESTAMP, **_vector_kwargs(vector, timestamp=None))
    refused(CallbackFailure.MISSING_TIMESTAMP, **_vector_kwargs(vector, timestamp=" "))
    refused(CallbackFailure.MISSING_SIGNATURE, **_vector_kwargs(vector, signature=None))
    refused(CallbackFailure.MISSING_SIGNATURE, **_vector_kwargs(vector, signature=""))


def test_verify_request_looks_up_headers_case_insensitively(vector: dict[str, Any]) -> None:
    case = vector["cases"][0]
    headers = {
        "Callback-Authentication": case["callback_authentication"],
        "CALLBACK-TIMESTAMP": case["callback_timestamp"],
        "Content-Type": "application/json",
    }
    body = case["body"].encode("utf-8")
    clock = clock_at(case["callback_timestamp"])
    assert verify_callback_request(headers, body, secret=vector["secret"], clock=clock) == int(
        case["callback_timestamp"]
    )
    with pytest.raises(CallbackRejectedError) as info:
        verify_callback_request(
            {"callback-timestamp": case["callback_timestamp"]},
            body,
            secret=vector["secret"],
            clock=clock,
        )
    assert info.value.reason is CallbackFailure.MISSING_SIGNATURE


def test_sign_and_verify_round_trip() -> None:
    clock = ManualClock(datetime(2026, 11, 26, 12, 0, tzinfo=UTC))
    body = b'{"type":"x"}'
    headers = sign_callback(body, SECRET, clock=clock)
    assert set(headers) == {HEADER_AUTHENTICATION, HEADER_TIMESTAMP}
    assert headers[HEADER_TIMESTAMP] == str(int(clock.now().timestamp()))
    assert len(headers[HEADER_AUTHENTICATION]) == 128
    clock.advance(timedelta(seconds=299))
    assert verify_callback_request(headers, body, secret=SecretStr(SECRET), clock=clock) == int(
        headers[HEADER_TIMESTAMP]
    )


def test_secret_must_not_be_empty_and_is_not_leaked(vector: dict[str, Any]) -> None:
    with pytest.raises(FormatError, match="secret"):
        compute_signature(b"{}", "", 1)
    with pytest.raises(FormatError, match="secret"):
        verify_callback(**_vector_kwargs(vector, secret=""))
    with pytest.raises(FormatError):
        compute_signature(b"{}", SECRET, "12a")
    with pytest.raises(TypeError):
        compute_signature("{}", SECRET, 1)  # type: ignore[arg-type]
    for reason_kwargs in (
        {"secret": vector["secret"] + "x"},
        {"signature": "A" * 128},
        {"clock": ManualClock()},
    ):
        with pytest.raises(CallbackRejectedError) as info:
            verify_callback(**_vector_kwargs(vector, **reason_kwargs))
        assert vector["secret"] not in str(info.value)


SUMMARY = SubmissionSummary(
    destination_id="d12caea8-f372-4eb1-b102-b0a228253a11",
    submission_id="f39ab143-d91a-474a-b69f-b00f1a1873c2",
    case_id="9eec7d3e-dc66-4f82-9f52-1520bf96a32e",
)


def test_new_submissions_body_is_the_documented_body(vector: dict[str, Any]) -> None:
    body = new_submissions_body([SUMMARY])
    assert body == vector["cases"][1]["body"].encode("utf-8")
    assert new_submissions_body([SUMMARY.to_json()]) == body
    # So it verifies with the documented signature.
    verify_callback(**_vector_kwargs(vector, body=body))


def test_new_events_body_and_parsing() -> None:
    body = new_events_body([SUMMARY])
    assert json.loads(body) == {
        "type": CALLBACKS_BASE + "new-events",
        "submissions": [SUMMARY.to_json()],
    }
    parsed = parse_callback_body(body)
    assert isinstance(parsed, NewEventsCallback)
    assert parsed.submissions == [SUMMARY]
    parsed_new = parse_callback_body(new_submissions_body([SUMMARY]))
    assert isinstance(parsed_new, NewSubmissionsCallback)
    assert parsed_new.all_submission_ids() == [SUMMARY.submission_id]
    replies = parse_callback_body(b'{"type":"' + CallbackType.NEW_REPLIES.encode() + b'","x":1}')
    assert isinstance(replies, CallbackPayload)
    assert replies.to_json() == {"type": CallbackType.NEW_REPLIES.value, "x": 1}
    with pytest.raises(FormatError):
        parse_callback_body(b'{"type":"' + CallbackType.NEW_EVENTS.encode() + b'","submissions":1}')
    with pytest.raises(FormatError):
        parse_callback_body(b"[]")


def test_callback_types() -> None:
    assert CallbackType.NEW_SUBMISSIONS.value == (
        "https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions"
    )
    assert {t.value.rsplit("/", 1)[1] for t in CallbackType} == {
        "new-submissions",
        "new-events",
        "new-replies",
    }
