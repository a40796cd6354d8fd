"""The in-memory Zustelldienst of ``test_client_fakes`` plus the subscriber endpoints.

Not a test module itself (one smoke test keeps pytest quiet): subscriber unit tests import
:class:`SubscriberZD` and the helpers from here.

* ``GET /v1/submissions?destinationId&offset&limit`` — pending (submitted) submissions;
* ``GET /v1/submissions/{id}`` and ``GET …/attachments/{aid}`` — the stored parts;
* ``POST /v1/cases/{caseId}/events`` — a receiver SET, checked and verified with the
  destination's signature key like a real Zustelldienst does, then appended to the log.

The first subscriber access writes ``notify-submission`` (polling), as our server does.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import httpx
from tests.support.evil_sender import (
    BuiltSubmission,
    EvilAttachment,
    EvilPlan,
    EvilSender,
    TamperingTransport,
    build,
)
from tests.unit.test_client_fakes import (
    BASE,
    CLIENT_ID,
    CLIENT_SECRET,
    JSON_SCHEMA,
    SERVICE,
    XML_SCHEMA,
    FakeSubmission,
    FakeZustelldienst,
    credentials,
    destination_keys,
    environment,
)

from fitconnect_kit.client.keystore import DecryptionKeys, SigningKey
from fitconnect_kit.client.schemas import SchemaRegistry
from fitconnect_kit.client.subscriber import AsyncSubscriber
from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.events import Event, check_postable, verify_set
from fitconnect_kit.protocol.problems import SUBMISSION_API_PROBLEM_BASE, ApiProblems

__all__ = [
    "BASE",
    "JSON_SCHEMA",
    "SCHEMA_FILE_JSON",
    "SERVICE",
    "XML_SCHEMA",
    "SubscriberZD",
    "demo_schemas",
    "make_subscriber",
    "send_built",
]

SCHEMA_FILE_JSON = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": JSON_SCHEMA,
    "type": "object",
    "required": ["antrag"],
    "properties": {
        "antrag": {"type": "boolean"},
        "email": {"type": "string", "format": "email"},
        "plz": {"type": "string", "pattern": "^[0-9]{5}$"},
    },
    "additionalProperties": False,
}
SCHEMA_XSD = b"""<?xml version="1.0" encoding="UTF-8"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">
  <xs:element name="antrag">
    <xs:complexType><xs:sequence>
      <xs:element name="name" type="xs:string"/>
      <xs:element name="plz"><xs:simpleType><xs:restriction base="xs:string">
        <xs:pattern value="[0-9]{5}"/></xs:restriction></xs:simpleType></xs:element>
    </xs:sequence></xs:complexType>
  </xs:element>
</xs:schema>
"""
VALID_XML = b'<?xml version="1.0"?><antrag><name>Erika</name><plz>51147</plz></antrag>'


def demo_schemas() -> SchemaRegistry:
    """A registry with the fake destination's two data schemas."""
    return SchemaRegistry().add(JSON_SCHEMA, SCHEMA_FILE_JSON).add(XML_SCHEMA, SCHEMA_XSD)


class SubscriberZD(FakeZustelldienst):
    """:class:`FakeZustelldienst` with the subscriber side of the Submission API."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.list_page_size: int | None = None
        self.posted_events: list[str] = []
        self.post_faults: list[httpx.Response] = []
        self.notified: set[str] = set()
        self.jwks: dict[str, Any] | None = None  # replaces {"keys": [zd_jwk]} when set

    def route(self, request: httpx.Request, body: bytes) -> httpx.Response:
        path = request.url.path
        auth = request.headers.get("authorization", "")
        authorized = auth.startswith("Bearer ") and auth[7:] in self.valid_tokens
        if path == "/.well-known/jwks.json" and self.jwks is not None:
            return httpx.Response(200, json=self.jwks)
        if path == "/v1/submissions" and request.method == "GET":
            if not authorized:
                return self.problem(ApiProblems.UNAUTHORIZED)
            return self.list_pending(request)
        if (m := re.fullmatch(r"/v1/submissions/([^/]+)", path)) and request.method == "GET":
            if not authorized:
                return self.problem(ApiProblems.UNAUTHORIZED)
            return self.get_submission(m.group(1))
        if (
            m := re.fullmatch(r"/v1/submissions/([^/]+)/attachments/([^/]+)", path)
        ) and request.method == "GET":
            if not authorized:
                return self.problem(ApiProblems.UNAUTHORIZED)
            return self.get_attachment(m.group(1), m.group(2))
        if (m := re.fullmatch(r"/v1/cases/([^/]+)/events", path)) and request.method == "POST":
            if not authorized:
                return self.problem(ApiProblems.UNAUTHORIZED)
            return self.post_event(m.group(1), request, body)
        return super().route(request, body)

    def _notify(self, sub: FakeSubmission) -> None:
        if sub.submission_id not in self.notified and sub.status == "submitted":
            self.notified.add(sub.submission_id)
            self.zd_event(Event.NOTIFY_SUBMISSION, sub.submission_id, {"notifyType": "polling"})

    def list_pending(self, request: httpx.Request) -> httpx.Response:
        dest = request.url.params.get("destinationId")
        offset = int(request.url.params.get("offset", 0))
        limit = int(request.url.params.get("limit", 100))
        if self.list_page_size is not None:
            limit = min(limit, self.list_page_size)
        pending = [
            s
            for s in self.submissions.values()
            if s.destination_id == dest and s.status in ("submitted", "forwarded")
        ]
        page = pending[offset : offset + limit]
        for sub in page:
            self._notify(sub)
        return httpx.Response(
            200,
            json={
                "count": len(page),
                "offset": offset,
                "totalCount": len(pending),
                "submissions": [
                    {
                        "destinationId": s.destination_id,
                        "submissionId": s.submission_id,
                        "caseId": s.case_id,
                    }
                    for s in page
                ],
            },
        )

    def get_submission(self, sid: str) -> httpx.Response:
        sub = self.submissions.get(sid)
        if sub is None or sub.status == "incomplete":
            return self.problem(ApiProblems.SUBMISSION_NOT_FOUND)
        self._notify(sub)
        body: dict[str, Any] = {
            "destinationId": sub.destination_id,
            "submissionId": sub.submission_id,
            "caseId": sub.case_id,
            "serviceType": sub.service_type,
            "attachments": list(sub.announced),
            "encryptedMetadata": sub.encrypted_metadata,
        }
        if sub.encrypted_data is not None:
            body["encryptedData"] = sub.encrypted_data
        return httpx.Response(200, json=body)

    def get_attachment(self, sid: str, aid: str) -> httpx.Response:
        sub = self.submissions.get(sid)
        if sub is None:
            return self.problem(ApiProblems.SUBMISSION_NOT_FOUND)
        content = sub.attachments.get(aid)
        if content is None:
            return self.problem(ApiProblems.ATTACHMENT_NOT_FOUND)
        return httpx.Response(200, content=content, headers={"Content-Type": "application/jose"})

    def post_event(self, case_id: str, request: httpx.Request, body: bytes) -> httpx.Response:
        if self.post_faults:
            return self.post_faults.pop(0)
        assert request.headers["content-type"] == "application/jose"
        token = body.decode("ascii")
        try:
            st = verify_set(token, self.dest_keys[json.loads(_header(token))["kid"]])
            check_postable(st)
        except (FitConnectError, KeyError) as exc:
            return self.problem(ApiProblems.INVALID_EVENT, str(exc))
        if st.case_id != case_id or st.issuer != self.destination_id:
            return self.problem(ApiProblems.INVALID_EVENT, "case or issuer mismatch")
        log = self.case_events.get(case_id, [])
        if any(_jti(t) == st.jti for t in log):
            return self.problem(ApiProblems.SUBMISSION_STATE_INVALID, "duplicate jti")
        sub = self.submissions.get(st.submission_id or "")
        if sub is None or sub.status not in ("submitted", "forwarded"):
            return self.problem(ApiProblems.SUBMISSION_STATE_INVALID)
        sub.status = {
            Event.ACCEPT_SUBMISSION: "accepted",
            Event.REJECT_SUBMISSION: "rejected",
            Event.FORWARD_SUBMISSION: "forwarded",
        }[st.event]
        self.case_events.setdefault(case_id, []).append(token)
        self.posted_events.append(token)
        return httpx.Response(204)


def _header(token: str) -> bytes:
    from fitconnect_kit.protocol.b64 import b64url_decode

    return b64url_decode(token.split(".")[0])


def _jti(token: str) -> str:
    from fitconnect_kit.protocol.events import parse_set

    return parse_set(token).jti


@functools.cache
def converted_keys(kid: str) -> tuple[DecryptionKeys, SigningKey]:
    """The fake destination's private keys, converted once (RSA key checks are slow)."""
    keys = destination_keys()
    assert keys.encryption_kid == kid
    return DecryptionKeys.load(keys.encryption_private), SigningKey.from_jwk(keys.signing_private)


def make_subscriber(zd: SubscriberZD, **options: Any) -> AsyncSubscriber:
    """An :class:`AsyncSubscriber` on the fake with the destination's keys and schemas."""
    decryption, signing = converted_keys(zd.keys.encryption_kid)
    options.setdefault("decryption_keys", decryption)
    options.setdefault("signing_key", signing)
    options.setdefault("schemas", demo_schemas())
    options.setdefault("destination_id", zd.destination_id)
    transport = options.pop("transport", None) or zd.transport()
    return AsyncSubscriber(
        environment(), credentials(), transport=transport, clock=zd.clock, **options
    )


def base_plan(zd: SubscriberZD, **changes: Any) -> EvilPlan:
    """A valid plan for the fake destination (JSON data, one attachment, eMail reply)."""
    plan = EvilPlan(
        destination_id=zd.destination_id,
        encryption_key=zd.keys.encryption_public,
        service=SERVICE,
        data=b'{"antrag":true,"plz":"51147"}',
        data_schema_uri=JSON_SCHEMA,
        attachments=(EvilAttachment(b"%PDF-1.4 Antrag", "antrag.pdf", "application/pdf", "form"),),
        reply_channel={"eMail": {"address": "erika@example.org"}},
    )
    return plan.but(**changes) if changes else plan


async def send_built(zd: SubscriberZD, built: BuiltSubmission) -> BuiltSubmission:
    """Send a built submission to the fake over its transport."""
    return await EvilSender(BASE, CLIENT_ID, CLIENT_SECRET, transport=zd.transport()).send(built)


def tampering(zd: SubscriberZD, built: BuiltSubmission) -> TamperingTransport:
    transport = TamperingTransport(zd.transport())
    transport.replace(built)
    return transport


async def send_plan(zd: SubscriberZD, plan: EvilPlan) -> BuiltSubmission:
    return await send_built(zd, build(plan))


def test_subscriber_fake_is_importable(tmp_path: Path) -> None:
    zd = SubscriberZD()
    assert zd.destination_id
    assert SUBMISSION_API_PROBLEM_BASE.startswith("https://")
    assert demo_schemas().has(JSON_SCHEMA)
