"""HTTP core: token handling, retries (only where safe), typed errors from problem JSON."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from tests.unit.test_client_fakes import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeZustelldienst,
    RecordingSleep,
    credentials,
    environment,
)

from fitconnect_kit.client._http import (
    HttpCore,
    RetryPolicy,
    Safety,
    parse_retry_after,
)
from fitconnect_kit.client.errors import (
    ApiError,
    AuthenticationError,
    ConflictError,
    InvalidClientError,
    InvalidRequestError,
    InvalidResponseError,
    InvalidScopeError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    ServerError,
    TokenError,
    TransportError,
)
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.problems import ApiProblems, api_problem

DEST = "/destinations/879ee109-a690-4db8-ab32-424284184d7d"
DEST_PATH = "/v1" + DEST


def make_core(
    zd: FakeZustelldienst,
    *,
    sleep: RecordingSleep | None = None,
    clock: ManualClock | None = None,
    retry: RetryPolicy | None = None,
    rand: Callable[[], float] = lambda: 0.5,
) -> HttpCore:
    return HttpCore(
        environment(),
        credentials(),
        transport=zd.transport(),
        clock=clock or zd.clock,
        sleep=sleep or RecordingSleep(),
        rand=rand,
        retry=retry,
    )


def problem_response(ptype: Any, **headers: str) -> httpx.Response:
    return httpx.Response(
        ptype.status,
        content=api_problem(ptype, "details here").to_bytes(),
        headers={"Content-Type": "application/problem+json", **headers},
    )


# --- tokens --------------------------------------------------------------------------------------


async def test_token_is_fetched_once_and_sent_as_form_body() -> None:
    zd = FakeZustelldienst()
    core = make_core(zd)
    await core.get_json(DEST)
    await core.get_json(DEST)
    assert zd.token_count == 1
    token_request = next(r for r in zd.requests if r.url.path == "/token")
    assert token_request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert "authorization" not in token_request.headers  # credentials in the body, no Basic
    form = parse_qs(zd.token_bodies[0].decode())
    assert form == {
        "grant_type": ["client_credentials"],
        "client_id": [CLIENT_ID],
        "client_secret": [CLIENT_SECRET],
    }
    api_requests = [r for r in zd.requests if r.url.path == DEST_PATH]
    assert all(r.headers["authorization"] == f"Bearer {zd.issued_tokens[0]}" for r in api_requests)
    await core.aclose()


async def test_token_is_refreshed_shortly_before_expiry() -> None:
    zd = FakeZustelldienst()
    clock = zd.clock
    core = make_core(zd, clock=clock)
    await core.get_json(DEST)
    clock.advance(timedelta(seconds=1800 - 61))
    await core.get_json(DEST)
    assert zd.token_count == 1
    clock.advance(timedelta(seconds=2))  # now within the 60 s margin
    await core.get_json(DEST)
    assert zd.token_count == 2
    await core.aclose()


async def test_short_lived_tokens_use_a_proportional_margin() -> None:
    zd = FakeZustelldienst()
    zd.expires_in = 100
    core = make_core(zd)
    await core.get_json(DEST)
    zd.clock.advance(85)
    await core.get_json(DEST)
    assert zd.token_count == 1
    zd.clock.advance(6)  # 91 s > 100 - 10
    await core.get_json(DEST)
    assert zd.token_count == 2


async def test_401_refreshes_the_token_once_and_repeats_the_request() -> None:
    zd = FakeZustelldienst()
    core = make_core(zd)
    await core.get_json(DEST)
    zd.valid_tokens.clear()  # the server forgot/revoked the token
    data = await core.get_json(DEST)
    assert data["destinationId"]
    assert zd.token_count == 2
    # A JSON body is replayed as well.
    zd.valid_tokens.clear()
    response = await core.send(
        "PUT", "/submissions/x", json={"a": 1}, raise_for_status=False, safety=Safety.IDEMPOTENT
    )
    assert zd.token_count == 3
    assert zd.bodies[-1] == b'{"a":1}'
    assert response.status_code == 404


async def test_second_401_is_an_authentication_error() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, problem_response(ApiProblems.UNAUTHORIZED), times=2)
    core = make_core(zd)
    with pytest.raises(AuthenticationError, match="refused the access token") as info:
        await core.get_json(DEST)
    assert info.value.status == 401
    assert zd.token_count == 2
    assert zd.count("GET", DEST_PATH) == 2


async def test_stream_body_that_cannot_be_replayed_is_not_repeated_after_401() -> None:
    zd = FakeZustelldienst()
    zd.inject("PUT", "/v1/x", problem_response(ApiProblems.UNAUTHORIZED))
    calls = 0

    def body() -> bytes:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise RuntimeError("stream consumed")
        return b"data"

    core = make_core(zd)
    with pytest.raises(AuthenticationError):
        await core.send("PUT", "/x", body=body)
    assert zd.count("PUT", "/v1/x") == 1


async def test_invalid_client_and_invalid_scope_messages() -> None:
    zd = FakeZustelldienst()
    zd.credentials = ("other", "other")
    core = make_core(zd)
    with pytest.raises(InvalidClientError) as info:
        await core.get_json(DEST)
    message = str(info.value)
    assert "invalid_client" in message
    assert CLIENT_ID in message
    assert "another environment" in message
    assert CLIENT_SECRET not in message
    assert isinstance(info.value, AuthenticationError)

    zd2 = FakeZustelldienst()
    zd2.inject(
        "POST",
        "/token",
        httpx.Response(400, json={"error": "invalid_scope", "error_description": "no dest"}),
    )
    with pytest.raises(InvalidScopeError) as scope_info:
        await make_core(zd2).get_json(DEST)
    assert (
        "if this is a subscriber client: is a destination assigned to it in the "
        "Self-Service-Portal?" in str(scope_info.value)
    )
    assert scope_info.value.error == "invalid_scope"


async def test_token_endpoint_without_oauth_error() -> None:
    zd = FakeZustelldienst()
    zd.inject("POST", "/token", httpx.Response(404, text="nope"))
    with pytest.raises(TokenError, match="is tokenUrl right"):
        await make_core(zd).get_json(DEST)
    zd.inject("POST", "/token", httpx.Response(200, text="<html>"))
    with pytest.raises(InvalidResponseError, match="unusable token response"):
        await make_core(zd).get_json(DEST)


async def test_token_post_is_retried_on_503() -> None:
    zd = FakeZustelldienst()
    zd.inject("POST", "/token", httpx.Response(503))
    sleep = RecordingSleep()
    await make_core(zd, sleep=sleep).get_json(DEST)
    assert zd.count("POST", "/token") == 2
    assert len(sleep.delays) == 1


# --- retries -------------------------------------------------------------------------------------


async def test_429_honours_retry_after_seconds() -> None:
    zd = FakeZustelldienst()
    zd.inject(
        "GET", DEST_PATH, problem_response(ApiProblems.TOO_MANY_REQUESTS, **{"Retry-After": "7"})
    )
    sleep = RecordingSleep()
    await make_core(zd, sleep=sleep).get_json(DEST)
    assert sleep.delays == [7.0]
    assert zd.count("GET", DEST_PATH) == 2


async def test_429_honours_ratelimit_reset() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.Response(429, headers={"RateLimit-Reset": "3"}))
    sleep = RecordingSleep()
    await make_core(zd, sleep=sleep).get_json(DEST)
    assert sleep.delays == [3.0]


def test_parse_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=42), usegmt=True)
    assert parse_retry_after(httpx.Headers({"Retry-After": later}), now) == 42.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "12"}), now) == 12.0
    assert parse_retry_after(httpx.Headers({"RateLimit-Reset": "5"}), now) == 5.0
    stamp = str(int(now.timestamp()) + 9)
    assert parse_retry_after(httpx.Headers({"X-RateLimit-Reset": stamp}), now) == 9.0
    assert parse_retry_after(httpx.Headers({"Retry-After": "soon"}), now) is None
    assert parse_retry_after(httpx.Headers({}), now) is None


async def test_too_long_retry_after_is_not_waited_for() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.Response(429, headers={"Retry-After": "3600"}))
    sleep = RecordingSleep()
    with pytest.raises(RateLimitedError, match="wait 3600 s") as info:
        await make_core(zd, sleep=sleep).get_json(DEST)
    assert info.value.retry_after == 3600.0
    assert sleep.delays == []


@pytest.mark.parametrize("status", [502, 503, 504])
async def test_gateway_errors_are_retried_with_full_jitter(status: int) -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.Response(status), times=2)
    sleep = RecordingSleep()
    retry = RetryPolicy(base_delay=1.0, max_delay=30.0)
    await make_core(zd, sleep=sleep, retry=retry, rand=lambda: 0.5).get_json(DEST)
    assert sleep.delays == [0.5, 1.0]  # rand · min(30, 1 · 2^n)
    assert zd.count("GET", DEST_PATH) == 3


async def test_retries_stop_after_max_attempts() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, problem_response(ApiProblems.SERVICE_UNAVAILABLE), times=10)
    sleep = RecordingSleep()
    with pytest.raises(ServerError, match="HTTP 503") as info:
        await make_core(zd, sleep=sleep, retry=RetryPolicy(max_attempts=3)).get_json(DEST)
    assert zd.count("GET", DEST_PATH) == 3
    assert len(sleep.delays) == 2
    assert info.value.problem is not None
    assert info.value.problem.type == ApiProblems.SERVICE_UNAVAILABLE.type_uri


async def test_connect_errors_are_retried_for_get() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.ConnectError("refused"))
    zd.inject("GET", DEST_PATH, httpx.ReadTimeout("slow"))
    sleep = RecordingSleep()
    await make_core(zd, sleep=sleep).get_json(DEST)
    assert zd.count("GET", DEST_PATH) == 3
    assert len(sleep.delays) == 2


async def test_announce_is_retried_only_when_provably_unprocessed() -> None:
    # 429 and connect errors: the server did not process the POST → retried.
    zd = FakeZustelldienst()
    zd.inject("POST", "/v1/submissions", httpx.Response(429, headers={"Retry-After": "1"}))
    zd.inject("POST", "/v1/submissions", httpx.ConnectError("refused"))
    zd.inject("POST", "/v1/submissions", httpx.Response(201, json={}))
    core = make_core(zd)
    response = await core.send("POST", "/submissions", json={}, safety=Safety.UNSENT_ONLY)
    assert response.status_code == 201
    assert zd.count("POST", "/v1/submissions") == 3

    # 503 / read timeout: it may have been processed → not retried.
    for fault, error in (
        (httpx.Response(503), ServerError),
        (httpx.ReadTimeout("slow"), TransportError),
        (httpx.Response(502), ServerError),
    ):
        zd = FakeZustelldienst()
        zd.inject("POST", "/v1/submissions", fault)
        with pytest.raises(error):
            await make_core(zd).send("POST", "/submissions", json={}, safety=Safety.UNSENT_ONLY)
        assert zd.count("POST", "/v1/submissions") == 1


async def test_unsafe_post_is_never_retried() -> None:
    zd = FakeZustelldienst()
    zd.inject("POST", "/v1/cases/x/events", httpx.Response(429))
    with pytest.raises(RateLimitedError):
        await make_core(zd).send("POST", "/cases/x/events", content=b"jws")
    assert zd.count("POST", "/v1/cases/x/events") == 1


async def test_transport_error_message_names_host_and_environment() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.ConnectError("Connection refused"), times=10)
    with pytest.raises(TransportError) as info:
        await make_core(zd, retry=RetryPolicy(max_attempts=2)).get_json(DEST)
    message = str(info.value)
    assert "cannot connect to zd.test" in message
    assert "environment 'unit'" in message


# --- typed errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ptype", "error", "exit_code"),
    [
        (ApiProblems.DESTINATION_NOT_FOUND, NotFoundError, 4),
        (ApiProblems.MALFORMED_REQUEST, InvalidRequestError, 1),
        (ApiProblems.INVALID_REQUEST_BODY, InvalidRequestError, 1),
        (ApiProblems.SUBMISSION_TOO_LARGE, InvalidRequestError, 1),
        (ApiProblems.FORBIDDEN, PermissionDeniedError, 1),
        (ApiProblems.SUBMISSION_STATE_INVALID, ConflictError, 1),
        (ApiProblems.INTERNAL_SERVER_ERROR, ServerError, 1),
    ],
)
async def test_problem_json_becomes_a_typed_error(
    ptype: Any, error: type[ApiError], exit_code: int
) -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, problem_response(ptype))
    with pytest.raises(error) as info:
        await make_core(zd, retry=RetryPolicy(max_attempts=1)).get_json(DEST, what="destination X")
    exc = info.value
    assert exc.status == ptype.status
    assert exc.problem is not None
    assert exc.problem_type == ptype.type_uri
    assert exc.problem.detail == "details here"
    assert exc.cli_exit_code == exit_code
    assert "destination X" in str(exc)
    assert ptype.title in str(exc)


async def test_error_without_problem_json() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.Response(404, text="<html>not found</html>"))
    with pytest.raises(NotFoundError) as info:
        await make_core(zd).get_json(DEST)
    assert info.value.problem is None
    assert "check the id and the environment" in str(info.value)


async def test_non_json_success_is_an_invalid_response() -> None:
    zd = FakeZustelldienst()
    zd.inject("GET", DEST_PATH, httpx.Response(200, text="<html>"))
    with pytest.raises(InvalidResponseError, match="not valid JSON"):
        await make_core(zd).get_json(DEST)


async def test_injected_http_client_is_not_closed() -> None:
    zd = FakeZustelldienst()
    client = httpx.AsyncClient(transport=zd.transport())
    core = HttpCore(environment(), credentials(), http_client=client)
    await core.get_json(DEST)
    await core.aclose()
    assert not client.is_closed
    await client.aclose()


async def test_stream_leaves_the_body_to_the_caller() -> None:
    zd = FakeZustelldienst()
    chunk_count = 48

    async def body() -> AsyncIterator[bytes]:
        for _ in range(chunk_count):
            yield b"x" * 65536

    zd.inject("GET", "/v1/blob", httpx.Response(200, content=body()))
    zd.inject("GET", "/v1/blob", problem_response(ApiProblems.ATTACHMENT_NOT_FOUND))
    core = make_core(zd)
    received = 0
    async with core.stream("GET", "/blob") as response:
        assert not response.is_stream_consumed
        async for chunk in response.aiter_bytes():
            received += len(chunk)
    assert received == chunk_count * 65536
    with pytest.raises(NotFoundError, match="Attachment not found"):
        async with core.stream("GET", "/blob"):
            pass
