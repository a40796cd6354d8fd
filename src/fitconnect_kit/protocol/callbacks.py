"""Callbacks (webhooks) of the Zustelldienst, authenticated with HMAC-SHA512 (reference §9).

The ZD sends ``POST <callback url>`` with a JSON body and two headers:

* ``callback-timestamp`` — Unix seconds;
* ``callback-authentication`` — lowercase hex HMAC-SHA512, keyed with the callback secret, over
  ``<callback-timestamp> + "." + <raw body bytes>``.

A receiver MUST verify the HMAC over the **raw body bytes exactly as received** (never a
re-serialized body), refuse timestamps older than 5 minutes, compare in constant time, and ignore
invalid callbacks. Everything time-dependent takes a :class:`Clock`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from datetime import timedelta
from enum import StrEnum
from typing import Any, Final

from pydantic import SecretStr, ValidationError

from fitconnect_kit.protocol.api import (
    CallbackPayload,
    NewEventsCallback,
    NewSubmissionsCallback,
    SubmissionSummary,
    describe_validation_error,
    summaries,
)
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock, unix_time
from fitconnect_kit.protocol.errors import CallbackVerificationError, FormatError
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object

HEADER_AUTHENTICATION: Final = "callback-authentication"
HEADER_TIMESTAMP: Final = "callback-timestamp"
CALLBACKS_BASE: Final = "https://schema.fitko.de/fit-connect/submission-api/callbacks/"
MAX_AGE: Final = timedelta(minutes=5)  # [C]


class CallbackType(StrEnum):
    """Callback ``type`` URIs: NEW_SUBMISSIONS [C]; NEW_EVENTS and NEW_REPLIES URIs are [U]."""

    NEW_SUBMISSIONS = CALLBACKS_BASE + "new-submissions"
    NEW_EVENTS = CALLBACKS_BASE + "new-events"
    NEW_REPLIES = CALLBACKS_BASE + "new-replies"


# =================================================================================================
# [U] UNCONFIRMED CHOICES — the one table of this module (reference §9).
# =================================================================================================
MAX_FUTURE_SKEW: Final = timedelta(seconds=60)
"""[U] Timestamps more than this far in the future are refused ("reject if too far ahead" is
all the docs say). One minute covers ordinary clock drift between NTP-synced hosts."""
ACCEPT_UPPERCASE_HEX: Final = False
"""[U] The documented signature is lowercase hex (the official example). Uppercase hex is refused
as ``malformed-signature``: a ZD never sends it, and a strict check keeps us identical to a
verifier that compares the hex strings."""
CONFIDENCE: Final[Mapping[str, str]] = {
    "CallbackType.NEW_SUBMISSIONS": "C",
    "CallbackType.NEW_EVENTS": "U (URI by analogy)",
    "CallbackType.NEW_REPLIES": "U (URI by analogy)",
    "new_events_body": "U (shape {type, submissions[]} assumed)",
    "MAX_FUTURE_SKEW": "U (60 s)",
    "ACCEPT_UPPERCASE_HEX": "U (refused)",
    "timestamp format": "U (1-15 ASCII digits, surrounding whitespace trimmed as HTTP does)",
}

_TIMESTAMP_RE: Final = re.compile(r"^[0-9]{1,15}$")
_SIGNATURE_RE: Final = re.compile(r"^[0-9a-f]{128}$")
_SIGNATURE_ANY_CASE_RE: Final = re.compile(r"^[0-9a-fA-F]{128}$")


class CallbackFailure(StrEnum):
    """Why a callback was refused."""

    MISSING_TIMESTAMP = "missing-timestamp"
    MISSING_SIGNATURE = "missing-signature"
    MALFORMED_TIMESTAMP = "malformed-timestamp"
    MALFORMED_SIGNATURE = "malformed-signature"
    MISMATCH = "mismatch"
    STALE = "stale"
    FUTURE_DATED = "future-dated"


class CallbackRejectedError(CallbackVerificationError):
    """A callback failed verification; :attr:`reason` says why. The callback must be ignored."""

    def __init__(self, reason: CallbackFailure, message: str) -> None:
        super().__init__(f"callback refused ({reason.value}): {message}")
        self.reason = reason


def _secret_bytes(secret: str | SecretStr) -> bytes:
    value = secret.get_secret_value() if isinstance(secret, SecretStr) else secret
    if not isinstance(value, str) or not value:
        raise FormatError("the callback secret must be a non-empty string", field="secret")
    return value.encode("utf-8")


def _timestamp_text(timestamp: int | str) -> str:
    if isinstance(timestamp, bool):
        raise FormatError("callback timestamp must be Unix seconds", field="timestamp")
    text = str(timestamp) if isinstance(timestamp, int) else timestamp.strip()
    if not _TIMESTAMP_RE.match(text):
        raise FormatError(
            f"callback timestamp must be Unix seconds (digits only), got {timestamp!r}",
            field="timestamp",
        )
    return text


def compute_signature(body: bytes, secret: str | SecretStr, timestamp: int | str) -> str:
    """Lowercase hex HMAC-SHA512 of ``f"{timestamp}."`` + the raw ``body`` bytes."""
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError("the callback body must be the raw bytes")
    message = _timestamp_text(timestamp).encode("ascii") + b"." + bytes(body)
    return hmac.new(_secret_bytes(secret), message, hashlib.sha512).hexdigest()


def sign_callback(
    body: bytes, secret: str | SecretStr, *, clock: Clock = SYSTEM_CLOCK
) -> dict[str, str]:
    """The two headers for sending ``body`` now: authentication and timestamp."""
    timestamp = str(unix_time(clock))
    return {
        HEADER_AUTHENTICATION: compute_signature(body, secret, timestamp),
        HEADER_TIMESTAMP: timestamp,
    }


def verify_callback(
    body: bytes,
    *,
    secret: str | SecretStr,
    timestamp: str | None,
    signature: str | None,
    clock: Clock = SYSTEM_CLOCK,
    max_age: timedelta = MAX_AGE,
) -> int:
    """Verify one callback; return its timestamp (Unix seconds).

    Checks in this order: both headers present, timestamp digits only, signature 128 lowercase
    hex digits, HMAC equal (constant time), timestamp not older than ``max_age`` and not more
    than :data:`MAX_FUTURE_SKEW` ahead. Raises :class:`CallbackRejectedError` with the reason.
    """
    key = _secret_bytes(secret)  # a missing secret is a configuration error, not a bad request
    if timestamp is None or not timestamp.strip():
        raise CallbackRejectedError(
            CallbackFailure.MISSING_TIMESTAMP, f"header {HEADER_TIMESTAMP!r} is missing"
        )
    if signature is None or not signature.strip():
        raise CallbackRejectedError(
            CallbackFailure.MISSING_SIGNATURE, f"header {HEADER_AUTHENTICATION!r} is missing"
        )
    try:
        ts_text = _timestamp_text(timestamp)
    except FormatError:
        raise CallbackRejectedError(
            CallbackFailure.MALFORMED_TIMESTAMP,
            f"header {HEADER_TIMESTAMP!r} must be Unix seconds (1-15 digits)",
        ) from None
    given = signature.strip()
    pattern = _SIGNATURE_ANY_CASE_RE if ACCEPT_UPPERCASE_HEX else _SIGNATURE_RE
    if not pattern.match(given):
        raise CallbackRejectedError(
            CallbackFailure.MALFORMED_SIGNATURE,
            f"header {HEADER_AUTHENTICATION!r} must be 128 lowercase hex digits (HMAC-SHA512)",
        )
    expected = hmac.new(
        key, ts_text.encode("ascii") + b"." + bytes(body), hashlib.sha512
    ).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), given.lower().encode("ascii")):
        raise CallbackRejectedError(
            CallbackFailure.MISMATCH,
            "HMAC does not match the raw body, timestamp and secret",
        )
    ts = int(ts_text)
    now = unix_time(clock)
    if now - ts > max_age.total_seconds():
        raise CallbackRejectedError(
            CallbackFailure.STALE,
            f"timestamp {ts} is {now - ts} s old; the limit is {int(max_age.total_seconds())} s",
        )
    if ts - now > MAX_FUTURE_SKEW.total_seconds():
        raise CallbackRejectedError(
            CallbackFailure.FUTURE_DATED,
            f"timestamp {ts} is {ts - now} s in the future; the limit is "
            f"{int(MAX_FUTURE_SKEW.total_seconds())} s",
        )
    return ts


def verify_callback_request(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret: str | SecretStr,
    clock: Clock = SYSTEM_CLOCK,
    max_age: timedelta = MAX_AGE,
) -> int:
    """:func:`verify_callback` with the two headers looked up case-insensitively."""
    lowered = {name.lower(): value for name, value in headers.items()}
    return verify_callback(
        body,
        secret=secret,
        timestamp=lowered.get(HEADER_TIMESTAMP),
        signature=lowered.get(HEADER_AUTHENTICATION),
        clock=clock,
        max_age=max_age,
    )


# --- bodies -------------------------------------------------------------------------------------


def new_submissions_body(submissions: Sequence[SubmissionSummary | Mapping[str, Any]]) -> bytes:
    """Compact JSON body of a NEW_SUBMISSIONS callback (with the deprecated ``submissionIds``)."""
    items = summaries(submissions)
    payload = NewSubmissionsCallback(
        type=CallbackType.NEW_SUBMISSIONS.value,
        submission_ids=[s.submission_id for s in items],
        submissions=items,
    )
    return dumps_compact(payload.to_json())


def new_events_body(submissions: Sequence[SubmissionSummary | Mapping[str, Any]]) -> bytes:
    """Compact JSON body of a NEW_EVENTS callback ([U] shape: ``{type, submissions}``)."""
    payload = NewEventsCallback(
        type=CallbackType.NEW_EVENTS.value, submissions=summaries(submissions)
    )
    return dumps_compact(payload.to_json())


def parse_callback_body(
    body: bytes,
) -> NewSubmissionsCallback | NewEventsCallback | CallbackPayload:
    """Parse a (verified) callback body by its ``type``.

    NEW_SUBMISSIONS and NEW_EVENTS give their models; other types (NEW_REPLIES, future ones) a
    :class:`CallbackPayload` that keeps every member. Raises :class:`FormatError`.
    """
    obj = loads_object(body, what="callback body")
    model: type[NewSubmissionsCallback | NewEventsCallback | CallbackPayload]
    kind = obj.get("type")
    if kind == CallbackType.NEW_SUBMISSIONS:
        model = NewSubmissionsCallback
    elif kind == CallbackType.NEW_EVENTS:
        model = NewEventsCallback
    else:
        model = CallbackPayload
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        raise FormatError(f"callback body is invalid: {describe_validation_error(exc)}") from None
