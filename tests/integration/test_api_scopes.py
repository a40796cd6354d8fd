"""Who may call what: the scope matrix of the Submission API v1, and the OpenAPI document.

Columns: ``snd`` the sender that owns the resources, ``snd2`` another sender, ``sub`` a
subscriber linked to the destination, ``sub2`` a subscriber linked to another destination,
``mgr`` a subscriber with the manage scope allowed to manage the destination, ``mgr2`` one
allowed to manage only another destination, ``none`` no token, ``exp`` an expired token
(ManualClock) — each of sender, subscriber and manager with its own, all get this answer.

| Endpoint                                   | snd | snd2 | sub | sub2 | mgr  | mgr2 | none | exp |
|--------------------------------------------|-----|------|-----|------|------|------|------|-----|
| POST /token (own client credentials)       | 200 | 200  | 200 | 200  | 200  | 200  | 401  | 200 |
| POST /token (wrong client secret)          | 401 | 401  | 401 | 401  | 401  | 401  | 401  | 401 |
| GET /v1/info                               | 200 | 200  | 200 | 200  | 200  | 200  | 200  | 200 |
| GET /.well-known/jwks.json                 | 200 | 200  | 200 | 200  | 200  | 200  | 200  | 200 |
| POST /v1/submissions                       | 201 | 201  | 403 | 403  | 403  | 403  | 401  | 401 |
| PUT /v1/submissions/{id}/attachments/{aid} | 204 | 404  | 403 | 403  | 403  | 403  | 401  | 401 |
| PUT /v1/submissions/{id}                   | 202 | 404  | 403 | 403  | 403  | 403  | 401  | 401 |
| GET /v1/submissions                        | 403 | 403  | 200 | 200  | 200  | 200  | 401  | 401 |
| GET /v1/submissions?destinationId={this}   | 403 | 403  | 200 | 403  | 200  | 403  | 401  | 401 |
| GET /v1/submissions/{id}                   | 403 | 403  | 200 | 404  | 200  | 404  | 401  | 401 |
| GET /v1/submissions/{id}/attachments/{aid} | 403 | 403  | 200 | 404  | 200  | 404  | 401  | 401 |
| GET /v1/cases/{caseId}/events              | 200 | 404  | 200 | 404  | 200  | 404  | 401  | 401 |
| GET /v1/submissions/{id}/events            | 200 | 404  | 200 | 404  | 200  | 404  | 401  | 401 |
| POST /v1/cases/{caseId}/events             | 403 | 403  | 204 | 404  | 204  | 404  | 401  | 401 |
| GET /v1/destinations/{id}                  | 200 | 200  | 200 | 200  | 200* | 200  | 401  | 401 |
| GET /v1/destinations/{id}/keys/{kid}       | 200 | 200  | 200 | 200  | 200  | 200  | 200  | 200 |
| GET /v1/destinations                       | 403 | 403  | 403 | 403  | 200  | 200  | 401  | 401 |
| POST /v1/destinations                      | 403 | 403  | 403 | 403  | 201  | 201  | 401  | 401 |
| PUT /v1/destinations/{id}                  | 403 | 403  | 403 | 403  | 200  | 403  | 401  | 401 |
| PATCH /v1/destinations/{id}                | 403 | 403  | 403 | 403  | 200  | 403  | 401  | 401 |
| DELETE /v1/destinations/{id}               | 403 | 403  | 403 | 403  | 204  | 403  | 401  | 401 |
| POST /v1/destinations/{id}/keys            | 403 | 403  | 403 | 403  | 201  | 403  | 401  | 401 |

\\* the owner view (with ``callback``, ``contactInformation``, ``name``); everyone else, ``mgr2``
too, gets the public view. The 404s are the answers for unknown resources
(``submission-not-found``/``case-not-found``): foreign resources do not leak. A sender token also
needs a ``send:region:`` scope covering a region of the service; subscribers act only on
destinations their client is linked to (403 ``forbidden``, or 404 where the resource is addressed
by its own id). ``POST /token`` answers OAuth errors (``invalid_client``, not problem JSON): in
the ``none`` column the form has no client credentials at all, in the ``exp`` column the client
whose token expired simply gets a new one; the wrong-secret row uses the column's client id
(``none``: an unknown one). ``/v1/info``, the JWKS and destination keys are public: a token, even
an expired one, is ignored there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest

from fitconnect_kit.protocol.events import Event
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.problems import PROBLEM_JSON_MEDIA_TYPE, SUBMISSION_API_PROBLEM_BASE
from tests.support.live import LiveServer
from tests.support.seed import (
    ClientCredentials,
    SeededDestination,
    SentSubmission,
    announce_body,
    destination_key_set,
    encrypt_for,
    jose_headers,
    receiver_set,
    send_submission,
    service,
)

COLUMNS = (
    "sender",
    "other sender",
    "subscriber",
    "other sub",
    "manager",
    "other mgr",
    "none",
    "expired",
)
#: Whose expired tokens the ``expired`` column tries (each one on every row).
EXPIRED_ROLES = ("sender", "subscriber", "manager")
#: Rows answered by the OAuth token endpoint (OAuth error JSON, not problem JSON).
TOKEN_ROWS = frozenset(
    {"POST /token (own client credentials)", "POST /token (wrong client secret)"}
)

#: The table of the module docstring, row by row.
EXPECTED: dict[str, tuple[int, ...]] = {
    # Cells in COLUMNS order: snd, snd2, sub, sub2, mgr, mgr2, none, exp.
    "POST /token (own client credentials)": (200, 200, 200, 200, 200, 200, 401, 200),
    "POST /token (wrong client secret)": (401, 401, 401, 401, 401, 401, 401, 401),
    "GET /v1/info": (200, 200, 200, 200, 200, 200, 200, 200),
    "GET /.well-known/jwks.json": (200, 200, 200, 200, 200, 200, 200, 200),
    "POST /v1/submissions": (201, 201, 403, 403, 403, 403, 401, 401),
    "PUT /v1/submissions/{id}/attachments/{aid}": (204, 404, 403, 403, 403, 403, 401, 401),
    "PUT /v1/submissions/{id}": (202, 404, 403, 403, 403, 403, 401, 401),
    "GET /v1/submissions": (403, 403, 200, 200, 200, 200, 401, 401),
    "GET /v1/submissions?destinationId={this}": (403, 403, 200, 403, 200, 403, 401, 401),
    "GET /v1/submissions/{id}": (403, 403, 200, 404, 200, 404, 401, 401),
    "GET /v1/submissions/{id}/attachments/{aid}": (403, 403, 200, 404, 200, 404, 401, 401),
    "GET /v1/cases/{caseId}/events": (200, 404, 200, 404, 200, 404, 401, 401),
    "GET /v1/submissions/{id}/events": (200, 404, 200, 404, 200, 404, 401, 401),
    "POST /v1/cases/{caseId}/events": (403, 403, 204, 404, 204, 404, 401, 401),
    "GET /v1/destinations/{id}": (200, 200, 200, 200, 200, 200, 401, 401),
    "GET /v1/destinations/{id}/keys/{kid}": (200, 200, 200, 200, 200, 200, 200, 200),
    "GET /v1/destinations": (403, 403, 403, 403, 200, 200, 401, 401),
    "POST /v1/destinations": (403, 403, 403, 403, 201, 201, 401, 401),
    "PUT /v1/destinations/{id}": (403, 403, 403, 403, 200, 403, 401, 401),
    "PATCH /v1/destinations/{id}": (403, 403, 403, 403, 200, 403, 401, 401),
    "DELETE /v1/destinations/{id}": (403, 403, 403, 403, 204, 403, 401, 401),
    "POST /v1/destinations/{id}/keys": (403, 403, 403, 403, 201, 403, 401, 401),
}


@dataclass
class Ctx:
    live: LiveServer
    http: httpx.Client
    dest: SeededDestination
    clients: dict[str, ClientCredentials]
    #: The role of the column being called ("none" without one; a role for ``expired``).
    column: str = "none"
    _tokens: dict[str, dict[str, str]] = field(default_factory=dict)
    _shared: SentSubmission | None = None

    def auth(self, name: str) -> dict[str, str]:
        """Fresh-enough headers of a column's client (cached until the clock jumps)."""
        if name not in self._tokens:
            self._tokens[name] = self.live.seed.auth(self.clients[name])
        return self._tokens[name]

    def forget_tokens(self) -> None:
        self._tokens.clear()

    def fresh(self, *, attachments: int = 1, submit: bool = True) -> SentSubmission:
        return send_submission(
            self.http, self.auth("sender"), self.dest, attachments=attachments, submit=submit
        )

    @property
    def shared(self) -> SentSubmission:
        """One submitted submission for read-only rows."""
        if self._shared is None:
            self._shared = self.fresh()
        return self._shared


Call = Callable[[Ctx, dict[str, str]], httpx.Response]


def _upload(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    aid = new_id()
    announced = ctx.http.post(
        "/v1/submissions",
        json=announce_body(ctx.dest.destination_id, [aid]),
        headers=ctx.auth("sender"),
    ).json()
    return ctx.http.put(
        f"/v1/submissions/{announced['submissionId']}/attachments/{aid}",
        content=encrypt_for(ctx.dest, b"x").encode(),
        headers={**headers, "Content-Type": "application/jose"},
    )


def _submit(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    sent = ctx.fresh(attachments=0, submit=False)
    return ctx.http.put(
        f"/v1/submissions/{sent.submission_id}",
        json={"encryptedMetadata": sent.encrypted_metadata},
        headers=headers,
    )


def _post_event(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    sent = ctx.fresh(attachments=0)
    token = receiver_set(
        ctx.dest,
        Event.ACCEPT_SUBMISSION.value,
        submission_id=sent.submission_id,
        case_id=sent.case_id,
        payload={"authenticationTags": sent.tags},
        clock=ctx.live.clock,
    )
    return ctx.http.post(
        f"/v1/cases/{sent.case_id}/events", content=token, headers=jose_headers(headers)
    )


def _destination_body(ctx: Ctx) -> dict[str, Any]:
    return {
        "status": "active",
        "services": [service()],
        "encryptionKid": ctx.dest.encryption_kid,
        "metadataVersions": ["1.0.0"],
    }


def _delete(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    created = ctx.http.post(
        "/v1/destinations",
        json={"services": [service()], "metadataVersions": ["1.0.0"]},
        headers=ctx.auth("manager"),
    )
    assert created.status_code == 201, created.text
    return ctx.http.delete(f"/v1/destinations/{created.json()['destinationId']}", headers=headers)


def _add_key(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    keys = destination_key_set(ctx.live, (120, 121, 122))
    kid_suffix = new_id()[:8]
    jwk = {**keys.signing_public}
    jwk["kid"] = f"{jwk['kid'][:40]}-{kid_suffix}"  # a new kid per call (still 8–64 chars)
    return ctx.http.post(
        f"/v1/destinations/{ctx.dest.destination_id}/keys", json=jwk, headers=headers
    )


def _own_token(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    form = {"grant_type": "client_credentials"}
    if ctx.column != "none":
        client = ctx.clients[ctx.column]
        form |= {"client_id": client.client_id, "client_secret": client.client_secret}
    return ctx.http.post("/token", data=form)


def _wrong_secret(ctx: Ctx, headers: dict[str, str]) -> httpx.Response:
    client_id = new_id() if ctx.column == "none" else ctx.clients[ctx.column].client_id
    form = {"grant_type": "client_credentials", "client_id": client_id, "client_secret": "wrong"}
    return ctx.http.post("/token", data=form)


CALLS: dict[str, Call] = {
    "POST /token (own client credentials)": _own_token,
    "POST /token (wrong client secret)": _wrong_secret,
    "GET /v1/info": lambda c, h: c.http.get("/v1/info", headers=h),
    "GET /.well-known/jwks.json": lambda c, h: c.http.get("/.well-known/jwks.json", headers=h),
    "POST /v1/submissions": lambda c, h: c.http.post(
        "/v1/submissions", json=announce_body(c.dest.destination_id), headers=h
    ),
    "PUT /v1/submissions/{id}/attachments/{aid}": _upload,
    "PUT /v1/submissions/{id}": _submit,
    "GET /v1/submissions": lambda c, h: c.http.get("/v1/submissions", headers=h),
    "GET /v1/submissions?destinationId={this}": lambda c, h: c.http.get(
        "/v1/submissions", params={"destinationId": c.dest.destination_id}, headers=h
    ),
    "GET /v1/submissions/{id}": lambda c, h: c.http.get(
        f"/v1/submissions/{c.shared.submission_id}", headers=h
    ),
    "GET /v1/submissions/{id}/attachments/{aid}": lambda c, h: c.http.get(
        f"/v1/submissions/{c.shared.submission_id}/attachments/{next(iter(c.shared.attachments))}",
        headers=h,
    ),
    "GET /v1/cases/{caseId}/events": lambda c, h: c.http.get(
        f"/v1/cases/{c.shared.case_id}/events", headers=h
    ),
    "GET /v1/submissions/{id}/events": lambda c, h: c.http.get(
        f"/v1/submissions/{c.shared.submission_id}/events", headers=h
    ),
    "POST /v1/cases/{caseId}/events": _post_event,
    "GET /v1/destinations/{id}": lambda c, h: c.http.get(
        f"/v1/destinations/{c.dest.destination_id}", headers=h
    ),
    "GET /v1/destinations/{id}/keys/{kid}": lambda c, h: c.http.get(
        f"/v1/destinations/{c.dest.destination_id}/keys/{c.dest.encryption_kid}", headers=h
    ),
    "GET /v1/destinations": lambda c, h: c.http.get("/v1/destinations", headers=h),
    "POST /v1/destinations": lambda c, h: c.http.post(
        "/v1/destinations",
        json={"services": [service()], "metadataVersions": ["1.0.0"]},
        headers=h,
    ),
    "PUT /v1/destinations/{id}": lambda c, h: c.http.put(
        f"/v1/destinations/{c.dest.destination_id}", json=_destination_body(c), headers=h
    ),
    "PATCH /v1/destinations/{id}": lambda c, h: c.http.patch(
        f"/v1/destinations/{c.dest.destination_id}", json={"name": "Gepatcht"}, headers=h
    ),
    "DELETE /v1/destinations/{id}": _delete,
    "POST /v1/destinations/{id}/keys": _add_key,
}


def _check_answer(row: str, response: httpx.Response, *, expired: bool) -> None:
    """The body of an answer that has the expected status: what kind of refusal it is."""
    status = response.status_code
    if row in TOKEN_ROWS:
        assert response.headers["cache-control"] == "no-store"
        if status == 200:
            assert response.json()["token_type"] == "Bearer"
        else:
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"] == "invalid_client"
        return
    if status < 400:
        return
    assert response.headers["content-type"] == PROBLEM_JSON_MEDIA_TYPE
    if expired and status == 401:
        body = response.json()
        assert body["type"] == SUBMISSION_API_PROBLEM_BASE + "unauthorized"
        assert "expired" in body["detail"]
        assert "invalid_token" in response.headers["www-authenticate"]


def test_scope_matrix(live: LiveServer) -> None:
    seed = live.seed
    dest = seed.destination()
    other = seed.destination()
    clients = {
        "sender": seed.sender(),
        "other sender": seed.sender(),
        "subscriber": seed.subscriber(dest.destination_id),
        "other sub": seed.subscriber(other.destination_id),
        "manager": seed.subscriber(dest.destination_id, manage=True),
        "other mgr": seed.subscriber(other.destination_id, manage=True),
    }
    assert list(CALLS) == list(EXPECTED)
    assert all(len(cells) == len(COLUMNS) for cells in EXPECTED.values())
    mismatches: list[str] = []

    def check(ctx: Ctx, row: str, column: str, headers: dict[str, str], label: str) -> None:
        response = CALLS[row](ctx, headers)
        expected = EXPECTED[row][COLUMNS.index(column)]
        if response.status_code != expected:
            mismatches.append(
                f"{row} as {label}: {response.status_code} != {expected} ({response.text[:200]})"
            )
        else:
            _check_answer(row, response, expired=column == "expired")

    with live.client() as http:
        ctx = Ctx(live, http, dest, clients)
        for column in COLUMNS[:-1]:  # "expired" comes last
            ctx.column = column
            headers = {} if column == "none" else ctx.auth(column)
            for row in CALLS:
                check(ctx, row, column, headers, column)
        # Only the managers of a destination get its owner view.
        for column, owner_view in (("manager", True), ("other mgr", False), ("subscriber", False)):
            view = http.get(f"/v1/destinations/{dest.destination_id}", headers=ctx.auth(column))
            assert ("name" in view.json()) is owner_view, (column, view.json())

        # Expired: each role's own token after its lifetime.
        expired = {role: ctx.auth(role) for role in EXPIRED_ROLES}
        live.manual_clock.advance(timedelta(seconds=live.config.token_lifetime + 1))
        ctx.forget_tokens()
        for role, headers in expired.items():
            ctx.column = role
            for row in CALLS:
                check(ctx, row, "expired", headers, f"expired {role}")
    assert not mismatches, "\n".join(mismatches)


def test_the_docstring_table_is_the_expected_matrix() -> None:
    rows = [line for line in (__doc__ or "").splitlines() if line.startswith("| ")]
    header, *body = ([cell.strip() for cell in line.strip("|").split("|")] for line in rows)
    assert len(header) == len(COLUMNS) + 1
    documented = {
        " ".join(cells[0].split()): tuple(int(cell.rstrip("*")) for cell in cells[1:])
        for cells in body
    }
    assert documented == EXPECTED


def test_insufficient_scope_challenges(live: LiveServer) -> None:
    dest = live.seed.destination()
    subscriber = live.seed.auth(live.seed.subscriber(dest.destination_id))
    with live.client() as http:
        response = http.post(
            "/v1/submissions", json=announce_body(dest.destination_id), headers=subscriber
        )
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


# --- OpenAPI -------------------------------------------------------------------------------------

DOCUMENTED = {
    ("post", "/v1/submissions"): ("Einreichungsübermittlung", "AnnounceSubmission"),
    ("put", "/v1/submissions/{submissionId}/attachments/{attachmentId}"): (
        "Einreichungsübermittlung",
        "application/jose",
    ),
    ("put", "/v1/submissions/{submissionId}"): ("Einreichungsübermittlung", "SubmitSubmission"),
    ("get", "/v1/submissions"): ("Einreichungsempfang", None),
    ("get", "/v1/submissions/{submissionId}"): ("Einreichungsempfang", None),
    ("get", "/v1/submissions/{submissionId}/attachments/{attachmentId}"): (
        "Einreichungsempfang",
        None,
    ),
    ("get", "/v1/cases/{caseId}/events"): ("Einreichungsempfang", None),
    ("get", "/v1/submissions/{submissionId}/events"): ("Einreichungsübermittlung", None),
    ("post", "/v1/cases/{caseId}/events"): ("Einreichungsempfang", "application/jose"),
    ("get", "/v1/destinations/{destinationId}"): ("Einreichungsübermittlung", None),
    ("get", "/v1/destinations/{destinationId}/keys/{keyId}"): ("Einreichungsübermittlung", None),
    ("get", "/v1/destinations"): ("Zustellpunktverwaltung", None),
    ("post", "/v1/destinations"): ("Zustellpunktverwaltung", "DestinationCreate"),
    ("put", "/v1/destinations/{destinationId}"): ("Zustellpunktverwaltung", "DestinationUpdate"),
    ("patch", "/v1/destinations/{destinationId}"): ("Zustellpunktverwaltung", "DestinationPatch"),
    ("delete", "/v1/destinations/{destinationId}"): ("Zustellpunktverwaltung", None),
    ("post", "/v1/destinations/{destinationId}/keys"): ("Zustellpunktverwaltung", None),
}

RESPONSE_MODELS = {
    ("post", "/v1/submissions", "201"): "SubmissionCreated",
    ("put", "/v1/submissions/{submissionId}", "202"): "SubmissionSummary",
    ("get", "/v1/submissions", "200"): "SubmissionList",
    ("get", "/v1/submissions/{submissionId}", "200"): "Submission",
    ("get", "/v1/cases/{caseId}/events", "200"): "EventLog",
    ("get", "/v1/submissions/{submissionId}/events", "200"): "EventLog",
    ("get", "/v1/destinations/{destinationId}", "200"): "OwnerDestination",
    ("get", "/v1/destinations/{destinationId}/keys/{keyId}", "200"): "PublicJwk",
    ("get", "/v1/destinations", "200"): "DestinationList",
    ("post", "/v1/destinations", "201"): "OwnerDestination",
    ("post", "/v1/destinations/{destinationId}/keys", "201"): "PublicJwk",
}


def test_openapi_documents_every_endpoint(live: LiveServer) -> None:
    with live.client() as http:
        spec = http.get("/openapi.json").json()
    paths = spec["paths"]
    for (method, path), (tag, request) in DOCUMENTED.items():
        operation = paths[path][method]
        assert tag in operation["tags"], (method, path)
        assert operation["operationId"]
        if request is not None:
            content = operation["requestBody"]["content"]
            if request == "application/jose":
                assert content == {"application/jose": {"schema": {"type": "string"}}}
            else:
                ref = content["application/json"]["schema"]["$ref"]
                assert ref == f"#/components/schemas/{request}"
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")):
                # Problems are documented as what they are (no FastAPI validation schema).
                assert list(response["content"]) == [PROBLEM_JSON_MEDIA_TYPE], (method, path)
                assert response["description"].startswith("Problem: ")
        assert "401" in operation["responses"] or path.endswith("/keys/{keyId}")
    for (method, path, status), model in RESPONSE_MODELS.items():
        schema = paths[path][method]["responses"][status]["content"]["application/json"]["schema"]
        assert schema["$ref"] == f"#/components/schemas/{model}"
    download = paths["/v1/submissions/{submissionId}/attachments/{attachmentId}"]["get"]
    assert list(download["responses"]["200"]["content"]) == ["application/jose"]
    upload = paths["/v1/submissions/{submissionId}/attachments/{attachmentId}"]["put"]
    assert {"204", "404", "409", "413", "415", "422"} <= set(upload["responses"])
    assert "Location" in paths["/v1/submissions"]["post"]["responses"]["201"]["headers"]
    assert "HTTPValidationError" not in spec.get("components", {}).get("schemas", {})

    definitions = pytest.importorskip("schemathesis.specs.openapi.definitions")
    definitions.OPENAPI_31_VALIDATOR.validate(spec)
