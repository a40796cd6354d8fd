"""A small in-memory Zustelldienst for client unit tests (used through ``httpx.MockTransport``).

Not a test module itself: the client tests import :class:`FakeZustelldienst` from here. It speaks
just enough of the Submission API v1 (token, destinations, keys, announce, upload, submit, event
log, JWKS) and signs its SETs with a cached RSA-4096 key, so the SDK can be driven end to end
without a server. Faults are injected per request with :meth:`FakeZustelldienst.inject`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx
from tests.keycache import rsa_key

from fitconnect_kit.client.config import Credentials
from fitconnect_kit.client.environments import Environment
from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    build_set_claims,
    sign_set,
    submission_subject,
)
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key, thumbprint
from fitconnect_kit.protocol.keygen import GeneratedKeySet, generate_key_set
from fitconnect_kit.protocol.problems import ApiProblems, Problem, api_problem

REJECT_EXAMPLE = {
    "type": "https://schema.fitko.de/fit-connect/events/problems/schema-violation",
    "title": "Schema-Verletzung",
    "detail": "Feld 'name' fehlt",
    "instance": "data",
}
BASE = "https://zd.test"
API = BASE + "/v1"
CLIENT_ID = "sender-client-4711"
CLIENT_SECRET = "s3cr3t-Sender-Secret-do-not-log"
SERVICE = "urn:de:fim:leika:leistung:99400048079000"
SERVICE_NAME = "Testantrag"
JSON_SCHEMA = "urn:fitconnect-kit:demo:antrag:1.0.0:json"
XML_SCHEMA = "urn:fitconnect-kit:demo:antrag:1.0.0:xsd"


@functools.cache
def destination_keys() -> GeneratedKeySet:
    """The test destination's key set (cached RSA keys 0–2: CA, encryption, signing)."""
    keys = iter([rsa_key(0), rsa_key(1), rsa_key(2)])
    return generate_key_set(key_factory=lambda: next(keys))


@functools.cache
def other_destination_keys() -> GeneratedKeySet:
    keys = iter([rsa_key(5), rsa_key(6), rsa_key(7)])
    return generate_key_set(common_name="other destination", key_factory=lambda: next(keys))


def zd_signing_jwk() -> dict[str, Any]:
    key = rsa_key(3).public_key()
    jwk = jwk_from_public_key(key, alg="PS512", key_ops=["verify"], use="sig")
    jwk["kid"] = thumbprint(jwk)
    return jwk


def environment(**changes: Any) -> Environment:
    env = Environment.custom(
        "unit", token_url=BASE + "/token", submission_api_url=API, trust="test"
    )
    return env.replace(**changes) if changes else env


def credentials() -> Credentials:
    return Credentials(CLIENT_ID, CLIENT_SECRET)


@dataclass
class FakeSubmission:
    submission_id: str
    case_id: str
    destination_id: str
    announced: list[str]
    service_type: dict[str, Any]
    callback: dict[str, Any] | None = None
    attachments: dict[str, bytes] = field(default_factory=dict)
    encrypted_metadata: str | None = None
    encrypted_data: str | None = None
    status: str = "incomplete"


Fault = httpx.Response | Exception | Callable[[httpx.Request], Any]


class FakeZustelldienst:
    """An in-memory Submission API v1 behind ``httpx.MockTransport``."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock or ManualClock()
        self.keys = destination_keys()
        self.destination_id = "879ee109-a690-4db8-ab32-424284184d7d"
        self.destination: dict[str, Any] = {
            "destinationId": self.destination_id,
            "status": "active",
            "services": [
                {
                    "identifier": SERVICE,
                    "submissionSchemas": [
                        {"schemaUri": JSON_SCHEMA, "mimeType": "application/json"},
                        {"schemaUri": XML_SCHEMA, "mimeType": "application/xml"},
                    ],
                    "regions": ["DE09"],
                    "replyChannels": {"eMail": {"usePgp": False}},
                }
            ],
            "encryptionKid": self.keys.encryption_kid,
            "metadataVersions": ["1.0.0", "1.2.0"],
        }
        self.dest_keys: dict[str, dict[str, Any]] = {
            self.keys.encryption_kid: dict(self.keys.encryption_public),
            self.keys.signing_kid: dict(self.keys.signing_public),
        }
        self.zd_key = rsa_key(3)
        self.zd_jwk = zd_signing_jwk()
        self.submissions: dict[str, FakeSubmission] = {}
        self.case_events: dict[str, list[str]] = {}
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.faults: list[tuple[str, str, Fault]] = []
        self.token_count = 0
        self.issued_tokens: list[str] = []
        self.valid_tokens: set[str] = set()
        self.expires_in = 1800
        self.credentials = (CLIENT_ID, CLIENT_SECRET)
        self.event_page_size: int | None = None
        self.auto_decide: str | None = None  # "accept" / "reject" right after submit
        self.token_bodies: list[bytes] = []

    # --- wiring ----------------------------------------------------------------------------

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def inject(self, method: str, path_regex: str, fault: Fault, times: int = 1) -> None:
        """Answer the next ``times`` matching requests with ``fault`` instead of the real
        handler (a response, an exception to raise, or a callable getting the request that
        returns a response, or ``None`` to let the real handler answer afterwards)."""
        for _ in range(times):
            self.faults.append((method, path_regex, fault))

    def count(self, method: str, path_regex: str) -> int:
        return sum(
            1 for r in self.requests if r.method == method and re.fullmatch(path_regex, r.url.path)
        )

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        self.requests.append(request)
        self.bodies.append(body)
        for index, (method, regex, fault) in enumerate(self.faults):
            if method == request.method and re.fullmatch(regex, request.url.path):
                del self.faults[index]
                if isinstance(fault, Exception):
                    raise fault
                if isinstance(fault, httpx.Response):
                    return fault
                result = fault(request)
                if isinstance(result, httpx.Response):
                    return result
                break
        return self.route(request, body)

    # --- routing -------------------------------------------------------------------------------

    def problem(self, ptype: Any, detail: str | None = None) -> httpx.Response:
        problem: Problem = api_problem(ptype, detail)
        return httpx.Response(
            ptype.status,
            content=problem.to_bytes(),
            headers={"Content-Type": "application/problem+json"},
        )

    def route(self, request: httpx.Request, body: bytes) -> httpx.Response:
        path = request.url.path
        if path == "/token" and request.method == "POST":
            return self.token(request, body)
        if path == "/.well-known/jwks.json":
            return httpx.Response(200, json={"keys": [self.zd_jwk]})
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.valid_tokens:
            return self.problem(ApiProblems.UNAUTHORIZED)
        if m := re.fullmatch(r"/v1/destinations/([^/]+)", path):
            if m.group(1) != self.destination_id:
                return self.problem(ApiProblems.DESTINATION_NOT_FOUND)
            return httpx.Response(200, json=self.destination)
        if m := re.fullmatch(r"/v1/destinations/([^/]+)/keys/([^/]+)", path):
            key = self.dest_keys.get(m.group(2))
            if m.group(1) != self.destination_id or key is None:
                return self.problem(ApiProblems.KEY_NOT_FOUND)
            return httpx.Response(200, json=key)
        if path == "/v1/submissions" and request.method == "POST":
            return self.announce(json.loads(body))
        if m := re.fullmatch(r"/v1/submissions/([^/]+)/attachments/([^/]+)", path):
            return self.upload(m.group(1), m.group(2), request, body)
        if (m := re.fullmatch(r"/v1/submissions/([^/]+)", path)) and request.method == "PUT":
            return self.submit(m.group(1), json.loads(body))
        if m := re.fullmatch(r"/v1/cases/([^/]+)/events", path):
            return self.events(self.case_events.get(m.group(1)), request)
        if m := re.fullmatch(r"/v1/submissions/([^/]+)/events", path):
            sub = self.submissions.get(m.group(1))
            return self.events(self.case_events.get(sub.case_id) if sub else None, request)
        return httpx.Response(404, json={"type": "about:blank", "title": "Not Found"})

    def token(self, request: httpx.Request, body: bytes) -> httpx.Response:
        self.token_bodies.append(body)
        form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
        if (form.get("client_id"), form.get("client_secret")) != self.credentials:
            return httpx.Response(
                401, json={"error": "invalid_client", "error_description": "bad credentials"}
            )
        self.token_count += 1
        token = f"access-token-{self.token_count}-{new_id()}"
        self.issued_tokens.append(token)
        self.valid_tokens.add(token)
        return httpx.Response(
            200,
            json={"access_token": token, "token_type": "Bearer", "expires_in": self.expires_in},
        )

    def announce(self, data: dict[str, Any]) -> httpx.Response:
        if data["destinationId"] != self.destination_id:
            return self.problem(ApiProblems.DESTINATION_NOT_FOUND)
        sid, case_id = new_id(), data.get("caseId") or new_id()
        self.submissions[sid] = FakeSubmission(
            submission_id=sid,
            case_id=case_id,
            destination_id=self.destination_id,
            announced=list(data["announcedAttachments"]),
            service_type=data["serviceType"],
            callback=data.get("callback"),
        )
        self.zd_event(Event.CREATE_SUBMISSION, sid)
        return httpx.Response(
            201,
            json={"destinationId": self.destination_id, "submissionId": sid, "caseId": case_id},
        )

    def upload(self, sid: str, aid: str, request: httpx.Request, body: bytes) -> httpx.Response:
        sub = self.submissions.get(sid)
        if sub is None:
            return self.problem(ApiProblems.SUBMISSION_NOT_FOUND)
        if aid not in sub.announced:
            return self.problem(ApiProblems.ATTACHMENT_NOT_FOUND)
        if aid in sub.attachments:
            return self.problem(ApiProblems.ATTACHMENT_ALREADY_UPLOADED)
        assert request.headers["content-type"] == "application/jose"
        assert int(request.headers["content-length"]) == len(body)
        jwe.parse(body)
        sub.attachments[aid] = body
        return httpx.Response(204)

    def submit(self, sid: str, data: dict[str, Any]) -> httpx.Response:
        sub = self.submissions.get(sid)
        if sub is None:
            return self.problem(ApiProblems.SUBMISSION_NOT_FOUND)
        if sub.status != "incomplete":
            return self.problem(ApiProblems.SUBMISSION_STATE_INVALID)
        if set(sub.attachments) != set(sub.announced):
            return self.problem(ApiProblems.MISSING_ATTACHMENTS)
        sub.encrypted_metadata = data["encryptedMetadata"]
        sub.encrypted_data = data.get("encryptedData")
        sub.status = "submitted"
        self.zd_event(Event.SUBMIT_SUBMISSION, sid, {"authenticationTags": self.tags_of(sub)})
        if self.auto_decide == "accept":
            self.accept(sid)
        elif self.auto_decide == "reject":
            self.reject(sid, [REJECT_EXAMPLE])
        return httpx.Response(
            202,
            json={"destinationId": sub.destination_id, "submissionId": sid, "caseId": sub.case_id},
        )

    def events(self, log: list[str] | None, request: httpx.Request) -> httpx.Response:
        if log is None:
            return self.problem(ApiProblems.CASE_NOT_FOUND)
        offset = int(request.url.params.get("offset", 0))
        limit = int(request.url.params.get("limit", 500))
        assert limit <= 500
        if self.event_page_size is not None:
            limit = min(limit, self.event_page_size)
        page = log[offset : offset + limit]
        return httpx.Response(
            200,
            json={"eventLog": page, "count": len(page), "offset": offset, "totalCount": len(log)},
        )

    # --- events --------------------------------------------------------------------------------

    @staticmethod
    def tags_of(sub: FakeSubmission) -> AuthenticationTags:
        return AuthenticationTags.from_jwes(
            metadata=sub.encrypted_metadata,
            data=sub.encrypted_data,
            attachments={k: v.decode() for k, v in sub.attachments.items()},
        )

    def zd_event(self, event: Event, sid: str, payload: dict[str, Any] | None = None) -> str:
        sub = self.submissions[sid]
        claims = build_set_claims(
            event,
            issuer=BASE,
            subject=submission_subject(sid),
            case_id=sub.case_id,
            payload=payload,
            clock=self.clock,
        )
        token = sign_set(claims, self.zd_key, self.zd_jwk["kid"])
        self.case_events.setdefault(sub.case_id, []).append(token)
        return token

    def receiver_event(
        self,
        event: Event,
        sid: str,
        payload: dict[str, Any] | None = None,
        *,
        issuer: str | None = None,
        key_set: GeneratedKeySet | None = None,
        tamper: Callable[[dict[str, Any]], None] | None = None,
    ) -> str:
        """A SET of the receiving system (signed with the destination's signing key).

        ``tamper`` may change the claims after they were built (to sign invalid SETs).
        """
        from fitconnect_kit.protocol.jose.jwk import private_key_from_jwk
        from fitconnect_kit.protocol.jose.jws import sign_compact
        from fitconnect_kit.protocol.jsonutil import dumps_compact

        sub = self.submissions[sid]
        keys = key_set or self.keys
        claims = build_set_claims(
            event,
            issuer=issuer or sub.destination_id,
            subject=submission_subject(sid),
            case_id=sub.case_id,
            payload=payload,
            clock=self.clock,
        )
        private = private_key_from_jwk(keys.signing_private)
        if tamper is None:
            token = sign_set(claims, private, keys.signing_kid)
        else:
            tamper(claims)
            header = {"typ": "secevent+jwt", "alg": "PS512", "kid": keys.signing_kid}
            token = sign_compact(header, dumps_compact(claims), private)
        self.case_events.setdefault(sub.case_id, []).append(token)
        return token

    def accept(self, sid: str, tags: AuthenticationTags | None = None) -> str:
        sub = self.submissions[sid]
        return self.receiver_event(
            Event.ACCEPT_SUBMISSION,
            sid,
            {"authenticationTags": tags or self.tags_of(sub)},
        )

    def reject(self, sid: str, problems: list[dict[str, Any]]) -> str:
        sub = self.submissions[sid]
        return self.receiver_event(
            Event.REJECT_SUBMISSION,
            sid,
            {"problems": problems, "authenticationTags": self.tags_of(sub)},
        )

    def decrypt(self, token: str | bytes) -> bytes:
        return jwe.decrypt(token, self.keys.encryption_private).plaintext

    def only_submission(self) -> FakeSubmission:
        (sub,) = self.submissions.values()
        return sub


class RecordingSleep:
    """An injectable ``sleep`` that records delays and advances a ManualClock."""

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        if self.clock is not None:
            self.clock.advance(delay)
        await asyncio.sleep(0)


def test_fake_zustelldienst_is_importable() -> None:
    """Keeps pytest from warning about a module without tests; checks the key cache works."""
    zd = FakeZustelldienst()
    assert zd.keys.encryption_kid != zd.keys.signing_kid
    assert zd.zd_jwk["kid"]
