"""Submission API v1, destinations: public view and keys, owner view, management (create,
PUT/PATCH with the status rules, keys, delete)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization

from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key
from fitconnect_kit.protocol.keygen import generate_key_set
from fitconnect_kit.server.auth import MANAGE_SCOPE, SUBSCRIBE_SCOPE
from fitconnect_kit.server.storage.models import Destination
from tests.integration.conftest import StartServer
from tests.keycache import rsa_key
from tests.support.live import LiveServer
from tests.support.seed import (
    announce_body,
    assert_problem,
    destination_key_set,
    send_submission,
    service,
)


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with live.client() as client:
        yield client


def _manager(live: LiveServer, *destination_ids: str) -> dict[str, str]:
    return live.seed.auth(live.seed.subscriber(*destination_ids, manage=True))


def _new_keys(live: LiveServer) -> Any:
    """A second key set (other kids) with a self-signed CA chain."""
    return destination_key_set(live, (120, 121, 122))


def _create_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "services": [service()],
        "metadataVersions": ["1.0.0"],
        "name": "Bauamt",
    }
    body.update(extra)
    return body


# --- public view and keys ------------------------------------------------------------------------


def test_public_view_and_keys(live: LiveServer, http: httpx.Client) -> None:
    dest = live.seed.destination(
        services=[
            service(reply_channels={"eMail": {"usePgp": True}, "fitConnect": {}}),
            service(
                "99123456760611",
                regions=["DE01", "DE02"],
                reply_channels={"eMail": {"usePgp": True}},
            ),
        ],
        metadata_versions=["1.0.0", "1.1.0"],
        callback_url="https://fachverfahren.example/cb",
        callback_secret="destination-secret-1",
    )
    sender = live.seed.auth(live.seed.sender())
    response = http.get(f"/v1/destinations/{dest.destination_id}", headers=sender)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "destinationId": dest.destination_id,
        "status": "active",
        "services": [
            {
                **service(),
                "replyChannels": {"eMail": {"usePgp": True}, "fitConnect": {}},
            },
            {
                **service("99123456760611", regions=["DE01", "DE02"]),
                "replyChannels": {"eMail": {"usePgp": True}},
            },
        ],
        "encryptionKid": dest.encryption_kid,
        "metadataVersions": ["1.0.0", "1.1.0"],
        "replyChannels": {"eMail": {"usePgp": True}},  # common to all services
    }
    # Any valid token sees the public view; a subscriber of the destination too.
    reader = live.seed.auth(live.seed.subscriber(dest.destination_id))
    assert http.get(f"/v1/destinations/{dest.destination_id}", headers=reader).json() == (
        response.json()
    )
    # Keys need no token at all.
    for kid, public in (
        (dest.encryption_kid, dest.keys.encryption_public),
        (dest.signing_kid, dest.keys.signing_public),
    ):
        key = http.get(f"/v1/destinations/{dest.destination_id}/keys/{kid}")
        assert key.status_code == 200, key.text
        assert key.json() == public
        assert "d" not in key.json()
    assert_problem(
        http.get(f"/v1/destinations/{dest.destination_id}/keys/no-such-key"), 404, "key-not-found"
    )
    assert_problem(
        http.get(f"/v1/destinations/{new_id()}/keys/{dest.encryption_kid}"),
        404,
        "destination-not-found",
    )
    assert_problem(
        http.get(f"/v1/destinations/{new_id()}", headers=sender), 404, "destination-not-found"
    )
    assert_problem(http.get("/v1/destinations/nope", headers=sender), 400, "malformed-request")


def test_owner_view_shows_callback_url_but_never_the_secret(
    live: LiveServer, http: httpx.Client
) -> None:
    dest = live.seed.destination(
        callback_url="https://fachverfahren.example/cb", callback_secret="destination-secret-2"
    )
    owner = _manager(live, dest.destination_id)
    view = http.get(f"/v1/destinations/{dest.destination_id}", headers=owner)
    assert view.status_code == 200
    body = view.json()
    assert body["callback"] == {"url": "https://fachverfahren.example/cb"}
    assert body["name"] == "Test-Zustellpunkt"
    assert "destination-secret-2" not in view.text
    listed = http.get("/v1/destinations", headers=owner).json()
    assert listed["totalCount"] == listed["count"] == 1
    assert listed["destinations"] == [body]
    # Linked without can_manage (or without the manage scope): the public view.
    plain = live.seed.auth(live.seed.subscriber(dest.destination_id))
    assert (
        "callback" not in http.get(f"/v1/destinations/{dest.destination_id}", headers=plain).json()
    )
    assert_problem(http.get("/v1/destinations", headers=plain), 403, "forbidden")


# --- management ------------------------------------------------------------------------------


def test_create_destination_then_activate_it(live: LiveServer, http: httpx.Client) -> None:
    anchor = live.seed.destination()  # the manager needs some link to get a token at all
    manager_client = live.seed.subscriber(anchor.destination_id, manage=True)
    manager = live.seed.auth(manager_client)
    keys = _new_keys(live)
    created = http.post(
        "/v1/destinations",
        json=_create_body(
            publicKeys={"keys": [keys.encryption_public, keys.signing_public]},
            callback={"url": "https://fachverfahren.example/new", "secret": "new-cb-secret-1"},
            contactInformation={"legalName": "Stadt Beispiel", "email": "it@example.org"},
            replyChannels={"eMail": {}},
        ),
        headers=manager,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    dest_id = body["destinationId"]
    assert created.headers["location"] == f"{live.base_url}/v1/destinations/{dest_id}"
    assert body["status"] == "created"
    assert body["encryptionKid"] == keys.encryption_kid  # the only encryption key
    assert body["callback"] == {"url": "https://fachverfahren.example/new"}
    assert body["contactInformation"] == {"legalName": "Stadt Beispiel", "email": "it@example.org"}
    assert "new-cb-secret-1" not in created.text
    # The creator manages it now (a fresh token is not even needed: links are read per request).
    assert http.get(f"/v1/destinations/{dest_id}", headers=manager).json() == body
    mine = http.get("/v1/destinations", headers=manager).json()
    assert {d["destinationId"] for d in mine["destinations"]} == {anchor.destination_id, dest_id}

    sender = live.seed.auth(live.seed.sender())
    assert_problem(
        http.post("/v1/submissions", json=announce_body(dest_id), headers=sender),
        422,
        "destination-state-invalid",
    )
    activated = http.patch(
        f"/v1/destinations/{dest_id}", json={"status": "active"}, headers=manager
    )
    assert activated.status_code == 200, activated.text
    assert activated.json()["status"] == "active"
    assert (
        http.post("/v1/submissions", json=announce_body(dest_id), headers=sender).status_code == 201
    )


def test_create_destination_refusals(live: LiveServer, http: httpx.Client) -> None:
    anchor = live.seed.destination()
    manager = _manager(live, anchor.destination_id)
    keys = _new_keys(live)

    def create(body: dict[str, Any], auth: dict[str, str] = manager) -> httpx.Response:
        return http.post("/v1/destinations", json=body, headers=auth)

    problem = assert_problem(
        create(_create_body(services=[service(regions=["DE1x"])])), 422, "invalid-request-body"
    )
    assert problem["violations"][0]["path"] == "$.services[0].regions[0]"
    problem = assert_problem(
        create(_create_body(services=[service(mime_type="text/plain")])),
        422,
        "invalid-request-body",
    )
    assert problem["violations"][0]["path"] == "$.services[0].submissionSchemas[0].mimeType"
    assert_problem(
        create(_create_body(services=[service(), service()])), 422, "invalid-request-body"
    )
    assert_problem(create(_create_body(services=[])), 422, "invalid-request-body")
    assert_problem(
        create(_create_body(services=[{"identifier": "no urn", "regions": []}])),
        422,
        "invalid-request-body",
    )
    assert_problem(create(_create_body(metadataVersions=["one"])), 422, "invalid-request-body")
    problem = assert_problem(
        create(_create_body(publicKeys={"keys": [keys.encryption_private]})), 422, "invalid-key"
    )
    assert "private" in problem["detail"]
    assert keys.encryption_private["d"] not in str(problem)
    problem = assert_problem(
        create(_create_body(publicKeys={"keys": [{**keys.signing_public, "alg": "RS256"}]})),
        422,
        "invalid-key",
    )
    assert any(v["path"] == "$.publicKeys.keys[0].alg" for v in problem["violations"])
    problem = assert_problem(
        create(
            _create_body(publicKeys={"keys": [keys.signing_public]}, encryptionKid=keys.signing_kid)
        ),
        422,
        "invalid-request-body",
    )
    assert problem["violations"][0]["path"] == "$.encryptionKid"
    assert_problem(
        create(_create_body(callback={"url": "http://fachverfahren.example/cb", "secret": "x"})),
        422,
        "invalid-callback",
    )
    # Without the manage scope (a plain subscriber, a sender).
    plain = live.seed.auth(live.seed.subscriber(anchor.destination_id))
    assert_problem(create(_create_body(), plain), 403, "forbidden")
    assert_problem(create(_create_body(), live.seed.auth(live.seed.sender())), 403, "forbidden")


def test_status_transitions(live: LiveServer, http: httpx.Client) -> None:
    dest = live.seed.destination()
    manager = _manager(live, dest.destination_id)
    url = f"/v1/destinations/{dest.destination_id}"

    def patch(body: dict[str, Any]) -> httpx.Response:
        return http.patch(url, json=body, headers=manager)

    problem = assert_problem(patch({"status": "created"}), 422, "destination-state-invalid")
    assert "created" in problem["detail"]
    problem = assert_problem(patch({"status": "decommissioned"}), 422, "destination-state-invalid")
    assert "inactive" in problem["detail"]
    assert patch({"status": "inactive"}).json()["status"] == "inactive"
    # Inactive: no new submissions, everything else keeps working.
    sender_client = live.seed.sender()
    sender = live.seed.auth(sender_client)
    assert_problem(
        http.post("/v1/submissions", json=announce_body(dest.destination_id), headers=sender),
        422,
        "destination-state-invalid",
    )
    assert patch({"status": "active"}).json()["status"] == "active"
    sent = send_submission(http, sender, dest, attachments=0)
    assert patch({"status": "inactive"}).status_code == 200
    reader = live.seed.auth(live.seed.subscriber(dest.destination_id))
    assert http.get(f"/v1/submissions/{sent.submission_id}", headers=reader).status_code == 200

    live.manual_clock.advance(timedelta(days=29))
    manager = _manager(live, dest.destination_id)  # tokens expired meanwhile
    problem = assert_problem(patch({"status": "decommissioned"}), 422, "destination-state-invalid")
    assert "30 days" in problem["detail"]
    live.manual_clock.advance(timedelta(days=1, seconds=1))
    manager = _manager(live, dest.destination_id)
    assert patch({"status": "decommissioned"}).json()["status"] == "decommissioned"
    problem = assert_problem(patch({"status": "inactive"}), 422, "destination-state-invalid")
    assert "decommissioned" in problem["detail"]
    assert_problem(patch({"name": "anders"}), 422, "destination-state-invalid")


def test_put_and_patch(live: LiveServer, http: httpx.Client) -> None:
    dest = live.seed.destination()
    manager = _manager(live, dest.destination_id)
    url = f"/v1/destinations/{dest.destination_id}"
    full = {
        "status": "active",
        "services": [service("99123456760611", regions=["DE09"])],
        "encryptionKid": dest.encryption_kid,
        "metadataVersions": ["1.0.0", "1.2.0"],
        "callback": {"url": "https://fachverfahren.example/put", "secret": "put-secret-123"},
        "contactInformation": {"email": "it@example.org"},
        "name": "Neu",
    }
    replaced = http.put(url, json=full, headers=manager)
    assert replaced.status_code == 200, replaced.text
    body = replaced.json()
    assert body["services"] == [service("99123456760611", regions=["DE09"])]
    assert body["metadataVersions"] == ["1.0.0", "1.2.0"]
    assert body["callback"] == {"url": "https://fachverfahren.example/put"}
    assert body["name"] == "Neu"
    assert "put-secret-123" not in replaced.text
    # PUT replaces everything: without callback/contact/name they are gone.
    minimal = {k: full[k] for k in ("status", "services", "encryptionKid", "metadataVersions")}
    body = http.put(url, json=minimal, headers=manager).json()
    assert "callback" not in body
    assert "name" not in body
    assert_problem(
        http.put(url, json={k: v for k, v in minimal.items() if k != "status"}, headers=manager),
        422,
        "invalid-request-body",
    )
    assert_problem(
        http.put(url, json={**minimal, "status": "created"}, headers=manager),
        422,
        "destination-state-invalid",
    )
    # PATCH changes only what is sent.
    patched = http.patch(url, json={"name": "Gepatcht"}, headers=manager).json()
    assert patched["name"] == "Gepatcht"
    assert patched["services"] == body["services"]
    assert_problem(
        http.patch(url, json={"encryptionKid": dest.signing_kid}, headers=manager),
        422,
        "invalid-request-body",
    )
    assert_problem(
        http.patch(
            url,
            json={"callback": {"url": "http://example.org/cb", "secret": "s3cr3t-value"}},
            headers=manager,
        ),
        422,
        "invalid-callback",
    )
    assert_problem(
        http.patch(url, json={"callback": {"url": "https://example.org/cb"}}, headers=manager),
        422,
        "invalid-request-body",
    )
    loopback = http.patch(
        url,
        json={"callback": {"url": "http://127.0.0.1:8999/cb", "secret": "s3cr3t-value"}},
        headers=manager,
    )
    assert loopback.json()["callback"] == {"url": "http://127.0.0.1:8999/cb"}
    # Key rotation: register a new encryption key, then switch encryptionKid to it.
    keys = _new_keys(live)
    added = http.post(f"{url}/keys", json=keys.encryption_public, headers=manager)
    assert added.status_code == 201, added.text
    assert added.json() == keys.encryption_public
    assert added.headers["location"].endswith(f"{url}/keys/{keys.encryption_kid}")
    rotated = http.patch(url, json={"encryptionKid": keys.encryption_kid}, headers=manager)
    assert rotated.json()["encryptionKid"] == keys.encryption_kid
    sender = live.seed.auth(live.seed.sender())
    assert http.get(url, headers=sender).json()["encryptionKid"] == keys.encryption_kid

    # Not a manager of this destination / unknown destination.
    other = _manager(live, live.seed.destination().destination_id)
    assert_problem(http.patch(url, json={"name": "x"}, headers=other), 403, "forbidden")
    assert_problem(http.put(url, json=minimal, headers=other), 403, "forbidden")
    assert_problem(
        http.patch(f"/v1/destinations/{new_id()}", json={"name": "x"}, headers=manager),
        404,
        "destination-not-found",
    )
    plain = live.seed.auth(
        live.seed.subscriber(dest.destination_id, scopes=[SUBSCRIBE_SCOPE, MANAGE_SCOPE])
    )  # manage scope, but linked without can_manage
    assert_problem(http.patch(url, json={"name": "x"}, headers=plain), 403, "forbidden")


def test_add_key_refusals(live: LiveServer, http: httpx.Client) -> None:
    dest = live.seed.destination()
    manager = _manager(live, dest.destination_id)
    url = f"/v1/destinations/{dest.destination_id}/keys"
    keys = _new_keys(live)
    problem = assert_problem(
        http.post(url, json=dest.keys.signing_public, headers=manager), 409, "key-already-exists"
    )
    assert dest.signing_kid in problem["detail"]
    problem = assert_problem(
        http.post(url, json=keys.signing_private, headers=manager), 422, "invalid-key"
    )
    assert "private" in problem["detail"]
    assert keys.signing_private["d"] not in str(problem)
    no_chain = {k: v for k, v in keys.signing_public.items() if k != "x5c"}
    problem = assert_problem(http.post(url, json=no_chain, headers=manager), 422, "invalid-key")
    assert any(v["path"].startswith("$.x5c") for v in problem["violations"])
    small = rsa_key(0, bits=2048).public_key()
    weak = jwk_from_public_key(small, kid="weak-key-0001", alg="PS512", key_ops=["verify"])
    problem = assert_problem(http.post(url, json=weak, headers=manager), 422, "invalid-key")
    assert any(v["path"] == "$.n" for v in problem["violations"])
    assert_problem(http.post(url, json=[1, 2], headers=manager), 422, "invalid-request-body")
    added = http.post(url, json=keys.signing_public, headers=manager)
    assert added.status_code == 201, added.text
    sender = live.seed.auth(live.seed.sender())
    assert_problem(http.post(url, json=keys.encryption_public, headers=sender), 403, "forbidden")


def test_strict_policy_refuses_untrusted_chains_and_plain_http_callbacks(
    start_server: StartServer, tmp_path: Path
) -> None:
    cached = iter([rsa_key(i) for i in (124, 125, 126)])
    unrelated_ca = generate_key_set(key_factory=lambda: next(cached)).ca_certificate
    anchor = tmp_path / "anchor.pem"
    anchor.write_bytes(unrelated_ca.public_bytes(serialization.Encoding.PEM))
    live = start_server(key_policy="strict", trust_anchors=[str(anchor)])
    dest_id = _bare_destination(live)  # admin would refuse the self-signed test chains here
    manager = live.seed.auth(live.seed.subscriber(dest_id, manage=True))
    keys = destination_key_set(live)
    with live.client() as http:
        problem = assert_problem(
            http.post(
                f"/v1/destinations/{dest_id}/keys", json=keys.signing_public, headers=manager
            ),
            422,
            "invalid-key",
        )
        assert "x5c" in problem["detail"]
        problem = assert_problem(
            http.patch(
                f"/v1/destinations/{dest_id}",
                json={"callback": {"url": "http://127.0.0.1:8999/cb", "secret": "s3cr3t-value"}},
                headers=manager,
            ),
            422,
            "invalid-callback",
        )
        assert "HTTPS" in problem["detail"]


def _bare_destination(live: LiveServer) -> str:
    """A destination row without keys, inserted directly."""
    dest_id = new_id()

    async def insert() -> None:
        now = live.clock.now()
        async with live.zd.sessions() as session:
            session.add(
                Destination(
                    destination_id=dest_id,
                    status="created",
                    name=None,
                    services=[service()],
                    metadata_versions=["1.0.0"],
                    reply_channels=None,
                    encryption_kid=None,
                    callback_url=None,
                    callback_secret=None,
                    contact_information=None,
                    created_at=now,
                    updated_at=now,
                    status_changed_at=now,
                )
            )
            await session.commit()

    live.run(insert())
    return dest_id


def test_created_destination_is_invisible_to_senders_until_it_has_a_key(
    live: LiveServer, http: httpx.Client
) -> None:
    anchor = live.seed.destination()
    manager = _manager(live, anchor.destination_id)
    created = http.post("/v1/destinations", json=_create_body(), headers=manager).json()
    dest_id = created["destinationId"]
    assert "encryptionKid" not in created
    sender = live.seed.auth(live.seed.sender())
    assert_problem(
        http.get(f"/v1/destinations/{dest_id}", headers=sender), 404, "destination-not-found"
    )
    problem = assert_problem(
        http.patch(f"/v1/destinations/{dest_id}", json={"status": "active"}, headers=manager),
        422,
        "destination-state-invalid",
    )
    assert "encryptionKid" in problem["detail"]
    # Deleting: only while created.
    assert http.delete(f"/v1/destinations/{dest_id}", headers=manager).status_code == 204
    assert_problem(
        http.get(f"/v1/destinations/{dest_id}", headers=manager), 404, "destination-not-found"
    )
    problem = assert_problem(
        http.delete(f"/v1/destinations/{anchor.destination_id}", headers=manager),
        422,
        "destination-state-invalid",
    )
    assert "active" in problem["detail"]
