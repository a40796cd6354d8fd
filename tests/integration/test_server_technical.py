"""Technical endpoints: /v1/info, /.well-known/jwks.json, OpenAPI."""

from __future__ import annotations

import pytest

from fitconnect_kit.protocol import events
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jose.jwk import public_key_from_jwk
from fitconnect_kit.protocol.keys import check_key_rules
from fitconnect_kit.server.server_keys import kid_for
from tests.support.live import LiveServer


def test_info(live_server: LiveServer) -> None:
    with live_server.client() as http:
        response = http.get("/v1/info")
    assert response.status_code == 200
    body = response.json()
    assert body["version"]["major"] == 1
    assert isinstance(body["version"]["minor"], int)
    assert isinstance(body["version"]["patch"], int)


def test_jwks_verifies_sets_signed_by_the_zd(live_server: LiveServer) -> None:
    with live_server.client() as http:
        response = http.get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert "max-age" in response.headers["cache-control"]
    jwks = response.json()
    assert len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert set(jwk) == {"kty", "kid", "alg", "key_ops", "use", "n", "e"}  # no private members
    assert jwk["alg"] == "PS512"
    assert jwk["key_ops"] == ["verify"]
    public = public_key_from_jwk(jwk)
    assert public.key_size == 4096
    assert jwk["kid"] == kid_for(public)
    # The signature rules of destination keys hold too (x5c aside).
    check_key_rules(jwk, None, require_x5c=False)

    key = live_server.zd.keys.set_signing
    submission_id, case_id = new_id(), new_id()
    claims = events.build_set_claims(
        events.Event.CREATE_SUBMISSION,
        issuer=live_server.base_url,
        subject=events.submission_subject(submission_id),
        case_id=case_id,
        clock=live_server.clock,
    )
    token = key.sign_set(claims)
    verified = events.verify_set_with_jwks(
        token,
        jwks,
        expected_subject=events.submission_subject(submission_id),
        expected_case_id=case_id,
        expected_issuer=live_server.base_url,
    )
    assert verified.kid == jwk["kid"]


def test_token_key_is_not_published(live_server: LiveServer) -> None:
    with live_server.client() as http:
        kids = {k["kid"] for k in http.get("/.well-known/jwks.json").json()["keys"]}
    assert live_server.zd.keys.token_signing.kid not in kids


def test_openapi_document(live_server: LiveServer) -> None:
    with live_server.client() as http:
        spec = http.get("/openapi.json").json()
        docs = http.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["version"].startswith("1.")
    assert spec["servers"] == [{"url": live_server.base_url}]
    tags = [t["name"] for t in spec["tags"]]
    assert tags == [
        "Zustellpunktverwaltung",
        "Einreichungsübermittlung",
        "Einreichungsempfang",
        "Technisch",
    ]
    assert {"/token", "/v1/info", "/.well-known/jwks.json"} <= set(spec["paths"])
    assert spec["paths"]["/v1/info"]["get"]["tags"] == ["Technisch"]
    form = spec["paths"]["/token"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in form

    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    definitions.OPENAPI_31_VALIDATOR.validate(spec)
