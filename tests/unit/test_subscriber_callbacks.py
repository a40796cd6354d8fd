"""Callback receivers: the ASGI endpoint and the WSGI helpers (HMAC over the raw body)."""

from __future__ import annotations

import io
import json
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fitconnect_kit.client.callbacks import (
    CallbackApp,
    CallbackBodyError,
    CallbackWsgiApp,
    verify_callback,
    verify_wsgi_environ,
)
from fitconnect_kit.protocol.api import NewEventsCallback, NewSubmissionsCallback
from fitconnect_kit.protocol.callbacks import (
    CallbackFailure,
    CallbackRejectedError,
    new_events_body,
    sign_callback,
)
from fitconnect_kit.protocol.clock import ManualClock

SECRET = "callback-secret-for-tests-only"
SUMMARY = {
    "destinationId": "879ee109-a690-4db8-ab32-424284184d7d",
    "submissionId": "f39ab143-d91a-474a-b69f-b00f1a1873c2",
    "caseId": "9eec7d3e-dc66-4f82-9f52-1520bf96a32e",
}
NEW_SUBMISSIONS = (
    b'{"type":"https://schema.fitko.de/fit-connect/submission-api/callbacks/new-submissions",'
    b'"submissions":[{"destinationId":"879ee109-a690-4db8-ab32-424284184d7d",'
    b'"submissionId":"f39ab143-d91a-474a-b69f-b00f1a1873c2",'
    b'"caseId":"9eec7d3e-dc66-4f82-9f52-1520bf96a32e"}]}'
)


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    async def async_handler(self, payload: Any) -> None:
        self.calls.append((payload, threading.current_thread().name))

    def sync_handler(self, payload: Any) -> None:
        self.calls.append((payload, threading.current_thread().name))


async def post(
    app: CallbackApp, body: bytes, headers: dict[str, str], path: str = "/callbacks"
) -> httpx.Response:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://fachverfahren.test"
    ) as client:
        response = await client.post(path, content=body, headers=headers)
    await app.drain()
    return response


def signed(body: bytes, clock: ManualClock, secret: str = SECRET) -> dict[str, str]:
    return {**sign_callback(body, secret, clock=clock), "Content-Type": "application/json"}


async def test_valid_callback_calls_the_async_handler() -> None:
    clock = ManualClock()
    recorder = Recorder()
    app = CallbackApp(SECRET, on_new_submissions=recorder.async_handler, clock=clock)
    response = await post(app, NEW_SUBMISSIONS, signed(NEW_SUBMISSIONS, clock))
    assert response.status_code == 202
    ((payload, _thread),) = recorder.calls
    assert isinstance(payload, NewSubmissionsCallback)
    assert payload.all_submission_ids() == [SUMMARY["submissionId"]]


async def test_the_documented_vector_verifies(load_vector: Any) -> None:
    vector = load_vector("callback-hmac.json")
    case = vector["cases"][0]
    clock = ManualClock(datetime.fromtimestamp(int(case["callback_timestamp"]), UTC))
    recorder = Recorder()
    app = CallbackApp(vector["secret"], on_new_submissions=recorder.sync_handler, clock=clock)
    headers = {
        "callback-authentication": case["callback_authentication"],
        "callback-timestamp": case["callback_timestamp"],
    }
    body = case["body"].encode()
    assert (await post(app, body, headers)).status_code == 202
    # The same JSON re-serialized (other bytes) must not verify.
    pretty = json.dumps(json.loads(body), indent=2).encode()
    assert (await post(app, pretty, headers)).status_code == 401
    assert len(recorder.calls) == 1


async def test_sync_handlers_run_in_a_thread_and_events_are_dispatched() -> None:
    clock = ManualClock()
    subs, events = Recorder(), Recorder()
    app = CallbackApp(
        SECRET, on_new_submissions=subs.sync_handler, on_new_events=events.sync_handler, clock=clock
    )
    body = new_events_body([SUMMARY])
    assert (await post(app, body, signed(body, clock))).status_code == 202
    assert subs.calls == []
    ((payload, thread),) = events.calls
    assert isinstance(payload, NewEventsCallback)
    assert thread != threading.current_thread().name


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("bad-hmac", CallbackFailure.MISMATCH),
        ("other-secret", CallbackFailure.MISMATCH),
        ("stale", CallbackFailure.STALE),
        ("future", CallbackFailure.FUTURE_DATED),
        ("no-timestamp", CallbackFailure.MISSING_TIMESTAMP),
        ("no-signature", CallbackFailure.MISSING_SIGNATURE),
        ("tampered-body", CallbackFailure.MISMATCH),
    ],
)
async def test_invalid_callbacks_get_401_and_are_ignored(
    case: str, reason: CallbackFailure, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    recorder = Recorder()
    app = CallbackApp(SECRET, on_new_submissions=recorder.async_handler, clock=clock)
    body = NEW_SUBMISSIONS
    headers = signed(body, clock)
    if case == "bad-hmac":
        headers["callback-authentication"] = "0" * 128
    elif case == "other-secret":
        headers = signed(body, clock, secret="another-secret")
    elif case == "stale":
        headers = signed(body, ManualClock(clock.now() - timedelta(minutes=5, seconds=1)))
    elif case == "future":
        headers = signed(body, ManualClock(clock.now() + timedelta(minutes=5)))
    elif case == "no-timestamp":
        del headers["callback-timestamp"]
    elif case == "no-signature":
        del headers["callback-authentication"]
    elif case == "tampered-body":
        body = body.replace(b"f39ab143", b"f39ab144")
    caplog.set_level("INFO", logger="fitconnect_kit.client.callbacks")
    response = await post(app, body, headers)
    assert response.status_code == 401
    assert recorder.calls == []
    assert app.refused == 1
    assert app.accepted == 0
    assert reason.value in caplog.text
    assert SECRET not in caplog.text


async def test_other_requests() -> None:
    clock = ManualClock()
    recorder = Recorder()
    app = CallbackApp(
        SECRET, on_new_submissions=recorder.async_handler, clock=clock, path="/cb", max_body=512
    )
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://x.test"
    ) as client:
        assert (await client.get("/cb")).status_code == 405
        assert (await client.post("/elsewhere", content=b"{}")).status_code == 404
        big = b"{" + b" " * 1000 + b"}"
        assert (
            await client.post("/cb", content=big, headers=signed(big, clock))
        ).status_code == 413
        junk = b'{"no":"type"}'
        assert (
            await client.post("/cb", content=junk, headers=signed(junk, clock))
        ).status_code == 400
    assert recorder.calls == []


async def test_a_failing_handler_does_not_change_the_answer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()

    async def boom(payload: Any) -> None:
        raise RuntimeError("handler broke")

    app = CallbackApp(SECRET, on_new_submissions=boom, clock=clock)
    assert (await post(app, NEW_SUBMISSIONS, signed(NEW_SUBMISSIONS, clock))).status_code == 202
    assert "callback handler" in caplog.text


async def test_lifespan_is_answered() -> None:
    app = CallbackApp(SECRET)
    messages = iter([{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}])
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return next(messages)

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan"}, receive, send)
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]


def test_verify_callback_for_framework_views() -> None:
    clock = ManualClock()
    headers = sign_callback(NEW_SUBMISSIONS, SECRET, clock=clock)
    upper = {k.upper(): v for k, v in headers.items()}  # header names are case-insensitive
    payload = verify_callback(upper, NEW_SUBMISSIONS, SECRET, clock=clock)
    assert isinstance(payload, NewSubmissionsCallback)
    with pytest.raises(CallbackRejectedError):
        verify_callback(headers, NEW_SUBMISSIONS + b" ", SECRET, clock=clock)
    junk = b"[]"
    with pytest.raises(CallbackBodyError):
        verify_callback(sign_callback(junk, SECRET, clock=clock), junk, SECRET, clock=clock)


def _environ(
    body: bytes, headers: dict[str, str], path: str = "/cb", method: str = "POST"
) -> dict[str, Any]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": "application/json",
        "wsgi.input": io.BytesIO(body),
    }
    for name, value in headers.items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ


def test_verify_wsgi_environ() -> None:
    clock = ManualClock()
    environ = _environ(NEW_SUBMISSIONS, sign_callback(NEW_SUBMISSIONS, SECRET, clock=clock))
    payload = verify_wsgi_environ(environ, SECRET, clock=clock)
    assert isinstance(payload, NewSubmissionsCallback)
    bad = _environ(NEW_SUBMISSIONS, {"callback-timestamp": "1", "callback-authentication": "x"})
    with pytest.raises(CallbackRejectedError):
        verify_wsgi_environ(bad, SECRET, clock=clock)


def test_wsgi_app_and_middleware() -> None:
    clock = ManualClock()
    recorder = Recorder()
    inner_calls: list[str] = []

    def inner(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        inner_calls.append(environ["PATH_INFO"])
        start_response("200 OK", [])
        return [b"inner"]

    app = CallbackWsgiApp(
        SECRET, on_new_submissions=recorder.sync_handler, path="/cb", app=inner, clock=clock
    )
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        statuses.append(status)

    good = _environ(NEW_SUBMISSIONS, sign_callback(NEW_SUBMISSIONS, SECRET, clock=clock))
    assert app(good, start_response) == [b""]
    app.drain(timeout=10)
    assert statuses[-1] == "202 Accepted"
    assert len(recorder.calls) == 1
    forged = _environ(NEW_SUBMISSIONS, sign_callback(NEW_SUBMISSIONS, "wrong", clock=clock))
    app(forged, start_response)
    assert statuses[-1] == "401 Unauthorized"
    assert len(recorder.calls) == 1
    assert app(_environ(b"", {}, path="/other", method="GET"), start_response) == [b"inner"]
    assert inner_calls == ["/other"]
    app(_environ(b"", {}, method="GET"), start_response)
    assert statuses[-1] == "405 Method Not Allowed"
    app.close()
