"""Problem JSON for every error, body limits and rate limiting, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from fitconnect_kit.protocol.problems import SUBMISSION_API_PROBLEM_BASE
from tests.integration.conftest import StartServer
from tests.integration.server_routes import router as extra_routes
from tests.support.live import LiveServer


@pytest.fixture
def http(start_server: StartServer) -> Iterator[httpx.Client]:
    server = start_server(routers=[extra_routes], limits={"max_json_body_size": 4096})
    with server.client() as client:
        yield client


def assert_problem(response: httpx.Response, status: int, name: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, object] = response.json()
    assert body["type"] == SUBMISSION_API_PROBLEM_BASE + name
    assert body["status"] == status
    assert isinstance(body["title"], str)
    assert body["title"]
    assert isinstance(body["detail"], str)
    assert body["detail"]
    assert body["instance"] == response.request.url.path
    return body


def test_unknown_route_and_wrong_method(http: httpx.Client) -> None:
    assert_problem(http.get("/v1/no-such-thing"), 404, "not-found")
    response = http.delete("/v1/info")
    assert_problem(response, 405, "method-not-allowed")
    assert response.headers["allow"] == "GET"


def test_validation_errors(http: httpx.Client) -> None:
    body = assert_problem(
        http.post("/test/body", json={"destinationId": "not-a-uuid", "count": "x"}),
        422,
        "invalid-request-body",
    )
    violations = body["violations"]
    assert isinstance(violations, list)
    assert {v["path"] for v in violations} == {"$.destinationId", "$.count"}
    assert "not-a-uuid" not in str(body)  # inputs are never echoed

    assert_problem(
        http.post(
            "/test/body",
            content=b'{"destinationId": ',
            headers={"Content-Type": "application/json"},
        ),
        400,
        "malformed-request",
    )
    assert_problem(http.get("/test/items/not-a-uuid"), 400, "malformed-request")
    assert http.get("/test/items/ce75a6b8-d72f-4b94-b09e-af6be35bc2ae").status_code == 200


def test_unsupported_media_type(http: httpx.Client) -> None:
    assert_problem(
        http.post("/test/body", content=b"hello", headers={"Content-Type": "text/plain"}),
        415,
        "unsupported-media-type",
    )
    assert_problem(
        http.put("/test/jose", content=b"x.y.z", headers={"Content-Type": "application/json"}),
        415,
        "unsupported-media-type",
    )
    ok = http.put("/test/jose", content=b"x.y.z", headers={"Content-Type": "application/jose"})
    assert ok.json() == {"size": 5}


def test_payload_too_large(http: httpx.Client) -> None:
    # Declared by Content-Length: refused before reading.
    response = http.put(
        "/test/jose", content=b"x" * 5000, headers={"Content-Type": "application/jose"}
    )
    assert_problem(response, 413, "payload-too-large")

    # Streamed without Content-Length (chunked): refused while reading.
    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000

    with httpx.Client(base_url=str(http.base_url), timeout=30) as fresh:
        streamed = fresh.put("/test/stream", content=chunks())
    assert_problem(streamed, 413, "payload-too-large")
    assert http.put("/test/stream", content=b"z" * 4096).json() == {"size": 4096}


def test_unexpected_errors_do_not_leak(http: httpx.Client) -> None:
    response = http.get("/test/boom")
    body = assert_problem(response, 500, "internal-server-error")
    assert "secret internal detail" not in response.text
    assert "RuntimeError" not in str(body)


def test_rate_limit(start_server: StartServer) -> None:
    server = start_server(
        rate_limit={
            "anonymous_burst": 3,
            "anonymous_requests_per_second": 0.01,
            "burst": 2,
            "requests_per_second": 0.01,
        },
    )
    token = server.seed.token(server.seed.sender())  # uses one anonymous request
    with server.client() as http:
        first = http.get("/v1/info")
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "3"
        assert first.headers["ratelimit-remaining"] == "1"
        assert int(first.headers["ratelimit-reset"]) > 0
        assert http.get("/v1/info").headers["ratelimit-remaining"] == "0"
        limited = http.get("/v1/info")
        assert_problem(limited, 429, "too-many-requests")
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["ratelimit-remaining"] == "0"

        # A client with a valid token has its own bucket.
        auth = {"Authorization": f"Bearer {token}"}
        as_client = http.get("/v1/info", headers=auth)
        assert as_client.status_code == 200
        assert as_client.headers["ratelimit-limit"] == "2"
        assert http.get("/v1/info", headers=auth).status_code == 200
        assert http.get("/v1/info", headers=auth).status_code == 429
        # A forged token does not get a bucket of its own: it counts against the IP.
        forged = http.get("/v1/info", headers={"Authorization": "Bearer a.b.c"})
        assert forged.status_code == 429
        assert forged.headers["ratelimit-limit"] == "3"


def test_rate_limit_can_be_disabled(start_server: StartServer) -> None:
    server: LiveServer = start_server(rate_limit={"enabled": False})
    with server.client() as http:
        response = http.get("/v1/info")
    assert "ratelimit-limit" not in response.headers
