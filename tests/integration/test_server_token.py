"""Token endpoint and bearer authentication over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
from urllib.parse import quote_plus

import httpx
import pytest

from fitconnect_kit.protocol.jose.jws import parse_compact
from fitconnect_kit.protocol.jsonutil import loads_object
from fitconnect_kit.server.auth import MANAGE_SCOPE, SUBSCRIBE_SCOPE
from tests.integration.conftest import StartServer
from tests.integration.server_routes import router as extra_routes
from tests.support.live import LiveServer
from tests.support.seed import ClientCredentials


@pytest.fixture
def server(start_server: StartServer) -> LiveServer:
    return start_server(routers=[extra_routes])


def _form(creds: ClientCredentials, **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": creds.client_id,
        "client_secret": creds.client_secret,
        **extra,
    }


def _basic(client_id: str, secret: str) -> str:
    raw = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode()


def _oauth_error(response: httpx.Response, status: int, error: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert isinstance(body["error_description"], str)


def test_sender_token_via_form(server: LiveServer) -> None:
    sender = server.seed.sender()
    with server.client() as http:
        response = http.post("/token", data=_form(sender))
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 1800
    assert body["scope"] == "send:region:DE"
    parsed = parse_compact(body["access_token"])
    assert parsed.header["alg"] == "PS512"
    assert parsed.kid == server.zd.keys.token_signing.kid
    claims = loads_object(parsed.payload)
    assert claims["iss"] == server.base_url
    assert claims["sub"] == sender.client_id
    assert claims["exp"] - claims["iat"] == 1800
    assert claims["scope"] == "send:region:DE"
    assert isinstance(claims["jti"], str)


def test_token_via_basic_auth(server: LiveServer) -> None:
    sender = server.seed.sender()
    with server.client() as http:
        response = http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": _basic(sender.client_id, sender.client_secret)},
        )
        assert response.status_code == 200, response.text
        wrong = http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": _basic(sender.client_id, "wrong-secret-value")},
        )
        both = http.post(
            "/token",
            data=_form(sender),
            headers={"Authorization": _basic(sender.client_id, sender.client_secret)},
        )
        # RFC 6749 §5.2: a failed header authentication is 401 invalid_client with a challenge.
        other_scheme = http.post(
            "/token", data=_form(sender), headers={"Authorization": "Bearer abc"}
        )
        malformed = http.post(
            "/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": "Basic not-base64!"},
        )
    _oauth_error(wrong, 401, "invalid_client")
    assert wrong.headers["www-authenticate"].startswith("Basic")
    _oauth_error(both, 400, "invalid_request")
    for refused in (other_scheme, malformed):
        _oauth_error(refused, 401, "invalid_client")
        assert refused.headers["www-authenticate"] == 'Basic realm="fitconnect-kit"'


def test_oauth_errors(server: LiveServer) -> None:
    sender = server.seed.sender()
    with server.client() as http:
        _oauth_error(
            http.post("/token", data=_form(sender, grant_type="password")),
            400,
            "unsupported_grant_type",
        )
        no_grant = _form(sender)
        del no_grant["grant_type"]
        _oauth_error(http.post("/token", data=no_grant), 400, "invalid_request")
        _oauth_error(http.post("/token", json=_form(sender)), 400, "invalid_request")
        unknown = http.post(
            "/token", data=_form(ClientCredentials("nobody", "secret-secret-1", "sender", ()))
        )
        wrong = http.post("/token", data=_form(sender, client_secret="not-the-secret"))
        missing = http.post("/token", data={"grant_type": "client_credentials"})
        repeated = http.post(
            "/token",
            content=f"grant_type=client_credentials&client_id={sender.client_id}"
            f"&client_id={sender.client_id}&client_secret={sender.client_secret}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    # Unknown client and wrong secret are indistinguishable.
    _oauth_error(unknown, 401, "invalid_client")
    _oauth_error(wrong, 401, "invalid_client")
    assert unknown.json() == wrong.json()
    _oauth_error(missing, 401, "invalid_client")
    _oauth_error(repeated, 400, "invalid_request")


def test_scope_requests(server: LiveServer) -> None:
    sender = server.seed.sender(scopes=["send:region:DE09"])
    with server.client() as http:
        narrowed = http.post("/token", data=_form(sender, scope="send:region:DE0937"))
        assert narrowed.status_code == 200, narrowed.text
        assert narrowed.json()["scope"] == "send:region:DE0937"
        exact = http.post("/token", data=_form(sender, scope="send:region:DE09"))
        assert exact.json()["scope"] == "send:region:DE09"
        _oauth_error(
            http.post("/token", data=_form(sender, scope="send:region:DE")), 400, "invalid_scope"
        )
        _oauth_error(
            http.post("/token", data=_form(sender, scope="send:region:DE10")), 400, "invalid_scope"
        )
        _oauth_error(
            http.post("/token", data=_form(sender, scope=SUBSCRIBE_SCOPE)), 400, "invalid_scope"
        )


def test_subscriber_scopes_and_links(server: LiveServer) -> None:
    destination = server.seed.destination()
    lonely = server.seed.subscriber()
    manager = server.seed.subscriber(destination.destination_id, manage=True)
    with server.client() as http:
        _oauth_error(http.post("/token", data=_form(lonely)), 400, "invalid_scope")
        full = http.post("/token", data=_form(manager))
        assert full.status_code == 200
        assert set(full.json()["scope"].split()) == {SUBSCRIBE_SCOPE, MANAGE_SCOPE}
        only_subscribe = http.post("/token", data=_form(manager, scope=SUBSCRIBE_SCOPE))
        assert only_subscribe.json()["scope"] == SUBSCRIBE_SCOPE

        token = full.json()["access_token"]
        whoami = http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
    assert whoami.status_code == 200
    assert whoami.json()["kind"] == "subscriber"
    assert whoami.json()["linked"] == [destination.destination_id]
    assert whoami.json()["managed"] == [destination.destination_id]


def _unauthorized(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/problems/unauthorized")
    assert body["instance"] == response.request.url.path
    challenge: str = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ")
    return challenge


def test_bearer_verification_and_expiry(server: LiveServer) -> None:
    sender = server.seed.sender()
    token = server.seed.token(sender)
    with server.client() as http:
        ok = http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        assert ok.json()["regions"] == ["DE"]

        challenge = _unauthorized(http.get("/test/whoami"))
        assert "error=" not in challenge
        assert 'error="invalid_token"' in _unauthorized(
            http.get("/test/whoami", headers={"Authorization": "Bearer not.a.token"})
        )
        tampered = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        _unauthorized(http.get("/test/whoami", headers={"Authorization": f"Bearer {tampered}"}))

        # Role checks: 403 with insufficient_scope.
        denied = http.get("/test/subscriber-only", headers={"Authorization": f"Bearer {token}"})
        assert denied.status_code == 403
        assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
        assert (
            http.get("/test/sender-only", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )

        server.manual_clock.advance(1799)
        assert (
            http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"}).status_code
            == 200
        )
        server.manual_clock.advance(1)
        expired = http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
    assert "expired" in expired.json()["detail"]
    _unauthorized(expired)


def test_disabled_client_loses_access(server: LiveServer) -> None:
    from fitconnect_kit.server.admin import set_client_disabled

    sender = server.seed.sender()
    token = server.seed.token(sender)
    server.run(set_client_disabled(server.zd.database, sender.client_id))
    with server.client() as http:
        _unauthorized(http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"}))
        _oauth_error(http.post("/token", data=_form(sender)), 401, "invalid_client")


def test_a_token_in_use_stops_working_when_its_client_is_disabled(server: LiveServer) -> None:
    """Verified tokens are remembered, but the client is looked up on every request."""
    from fitconnect_kit.server.admin import set_client_disabled

    sender = server.seed.sender()
    auth = {"Authorization": f"Bearer {server.seed.token(sender)}"}
    with server.client() as http:
        assert http.get("/test/whoami", headers=auth).status_code == 200
        server.run(set_client_disabled(server.zd.database, sender.client_id))
        _unauthorized(http.get("/test/whoami", headers=auth))
        server.run(set_client_disabled(server.zd.database, sender.client_id, disabled=False))
        assert http.get("/test/whoami", headers=auth).status_code == 200


def test_token_of_another_server_is_refused(server: LiveServer, start_server: StartServer) -> None:
    other = start_server(routers=[extra_routes])
    token = other.seed.token(other.seed.sender())
    with server.client() as http:
        # Same keys (preset) but another issuer URL.
        response = http.get("/test/whoami", headers={"Authorization": f"Bearer {token}"})
    assert "issuer" in response.json()["detail"]
    _unauthorized(response)
