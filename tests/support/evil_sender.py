"""A test sender that can deliberately break every check a subscriber must make (reference §11).

It builds submissions with the low-level protocol functions (not the SDK's sender, which would
refuse to send most of these) and sends them over real HTTP (or any httpx transport)::

    plan = EvilPlan.for_destination(destination_id, encryption_jwk, service=..., schema_uri=...)
    built = build(plan.but(wrong_data_hash=True))
    ids = await EvilSender(base_url, client_id, secret).send(built)

Switches (each breaks one check; ``EXPECTED`` names the problem it must cause):

* ``wrong_data_hash`` — the metadata's data hash is of other bytes;
* ``swap_attachments`` — the first two attachments are uploaded under each other's ids;
* ``wrong_tag`` (``"metadata"``, ``"data"`` or ``"attachment"``) — the part is encrypted twice;
  A is uploaded (so the ZD records A's tag), and :class:`TamperingTransport` serves B to the
  subscriber: same plaintext, other ciphertext, other tag — an intermediary swapping a part;
* ``metadata_version`` — ``$schema`` names this version (e.g. one the destination lacks);
* ``wrong_service`` — ``publicServiceType`` names another service than the announcement;
* ``bad_xml`` — the data are not well-formed XML (hash computed over them, so it matches);
* ``schema_invalid_json`` — JSON data that violate the data schema;
* ``unoffered_data_schema`` — the metadata names this data schema URI (same MIME type), one
  the destination does not offer for the service;
* ``metadata_schema_violation`` — the metadata is a JSON object of a supported version, but the
  first attachment's ``purpose`` is not one the metadata schema allows;
* ``undecryptable`` (``"metadata"``, ``"data"`` or ``"attachment"``) — the part is encrypted
  to another key (another kid);
* ``missing_data`` — the metadata announces data, none is sent;
* ``reply_channel`` — a reply channel the destination does not offer;
* ``extra_attachment_in_metadata`` — the metadata lists an attachment that was never sent;
* ``missing_attachment_in_metadata`` — an attachment is sent but not listed in the metadata;
* ``broken_submit_set`` — :class:`TamperingTransport` serves the subscriber the case's event
  log with this submission's ``submit-submission`` SET re-signed with a key that is not the
  Zustelldienst's (same header and claims). A sender cannot make the Zustelldienst sign a wrong
  SET, and a tampered stored SET would break the sender's own status check as well; the
  intermediary breaks only the subscriber's view, so the sender still sees the rejection.

Two more for unit tests: ``raw_metadata`` (these bytes are the metadata plaintext) and
``unannounced_data`` (data are sent, the metadata does not announce them).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from fitconnect_kit.protocol.events import parse_set
from fitconnect_kit.protocol.ids import new_id, parse_service_identifier
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jws import parse_compact, sign_compact
from fitconnect_kit.protocol.jsonutil import dumps_compact
from fitconnect_kit.protocol.metadata import sha512_hex
from tests.keycache import rsa_key

#: The problem (type name, instance) each switch must cause; ``{aid}`` / ``{aid2}`` are the ids
#: of the first / second attachment.
EXPECTED: dict[str, list[tuple[str, str]]] = {
    "wrong_data_hash": [("hash-mismatch", "data")],
    "swap_attachments": [
        ("hash-mismatch", "attachment:{aid}"),
        ("hash-mismatch", "attachment:{aid2}"),
    ],
    "wrong_tag:metadata": [("incorrect-authentication-tag", "metadata")],
    "wrong_tag:data": [("incorrect-authentication-tag", "data")],
    "wrong_tag:attachment": [("incorrect-authentication-tag", "attachment:{aid}")],
    "metadata_version": [("unsupported-schema", "metadata")],
    "wrong_service": [("service-mismatch", "metadata")],
    "bad_xml": [("syntax-violation", "data")],
    "schema_invalid_json": [("schema-violation", "data")],
    "unoffered_data_schema": [("unsupported-schema", "data")],
    "metadata_schema_violation": [("schema-violation", "metadata")],
    "broken_submit_set": [("invalid-event-log", "submission")],
    "undecryptable:metadata": [("encryption-issue", "metadata")],
    "undecryptable:data": [("encryption-issue", "data")],
    "undecryptable:attachment": [("encryption-issue", "attachment:{aid}")],
    "missing_data": [("missing-data", "data")],
    "reply_channel": [("unsupported-reply-channel", "metadata")],
    "extra_attachment_in_metadata": [("attachments-mismatch", "metadata")],
    "missing_attachment_in_metadata": [("attachments-mismatch", "metadata")],
}

#: keycache index of the "other" key: parts are encrypted to it with ``undecryptable``, and
#: ``broken_submit_set`` re-signs the SET with it (it is not the Zustelldienst's key).
OTHER_KEY_INDEX = 120
OTHER_KID = "evil-other-key"
#: An attachment ``purpose`` the metadata schema does not allow (form, attachment, report).
INVALID_PURPOSE = "Beweismittel"


@dataclass(frozen=True)
class EvilAttachment:
    content: bytes
    filename: str = "anlage.txt"
    mime_type: str = "text/plain"
    purpose: str = "attachment"


@dataclass(frozen=True)
class EvilPlan:
    """What to send, and which check to break."""

    destination_id: str
    encryption_key: Mapping[str, Any]  # the destination's public encryption JWK (with kid)
    service: str
    service_name: str = "Testleistung"
    data: bytes | None = b'{"antrag":true}'
    data_mime_type: str = "application/json"
    data_schema_uri: str = "urn:test:schema"
    attachments: tuple[EvilAttachment, ...] = ()
    reply_channel: Mapping[str, Any] | None = None
    version: str = "1.0.0"
    # switches
    wrong_data_hash: bool = False
    swap_attachments: bool = False
    wrong_tag: str | None = None
    metadata_version: str | None = None
    wrong_service: str | None = None
    bad_xml: bool = False
    schema_invalid_json: bytes | None = None
    unoffered_data_schema: str | None = None
    metadata_schema_violation: bool = False
    broken_submit_set: bool = False
    undecryptable: str | None = None
    missing_data: bool = False
    extra_attachment_in_metadata: bool = False
    missing_attachment_in_metadata: bool = False
    raw_metadata: bytes | None = None
    unannounced_data: bool = False

    def but(self, **changes: Any) -> EvilPlan:
        return dataclasses.replace(self, **changes)


@dataclass
class BuiltSubmission:
    """Encrypted parts ready to send, plus what a tampering intermediary serves instead."""

    destination_id: str
    service_type: dict[str, str]
    attachment_ids: list[str]
    attachment_tokens: dict[str, str]
    metadata_token: str
    data_token: str | None
    metadata: dict[str, Any]
    replacements: dict[str, str] = field(default_factory=dict)  # "metadata"/"data"/aid → token
    broken_events: tuple[str, ...] = ()  # short names of this submission's SETs to re-sign
    submission_id: str | None = None
    case_id: str | None = None


def other_key_jwk() -> dict[str, Any]:
    from fitconnect_kit.protocol.jose.jwk import jwk_from_public_key

    jwk = jwk_from_public_key(rsa_key(OTHER_KEY_INDEX).public_key())
    jwk.update({"kid": OTHER_KID, "alg": "RSA-OAEP-256"})
    return jwk


def _encrypt(plan: EvilPlan, part: str, plaintext: bytes, cty: str | None) -> str:
    key: Mapping[str, Any] = plan.encryption_key
    if plan.undecryptable == part:
        key = other_key_jwk()
    jwk = {k: v for k, v in key.items() if k not in ("x5c", "key_ops", "use")}
    return jwe.encrypt(plaintext, jwk, cty=cty).token


def build(plan: EvilPlan) -> BuiltSubmission:
    """Encrypt everything as the plan says (breaking exactly what the switches say)."""
    ids = [new_id() for _ in plan.attachments]
    hashes = {aid: sha512_hex(a.content) for aid, a in zip(ids, plan.attachments, strict=True)}
    tokens = {
        aid: _encrypt(plan, "attachment" if i == 0 else f"attachment{i}", a.content, a.mime_type)
        for i, (aid, a) in enumerate(zip(ids, plan.attachments, strict=True))
    }
    replacements: dict[str, str] = {}
    if plan.swap_attachments:
        assert len(ids) >= 2, "swap_attachments needs two attachments"
        tokens[ids[0]], tokens[ids[1]] = tokens[ids[1]], tokens[ids[0]]
    if plan.wrong_tag == "attachment":
        first = plan.attachments[0]
        replacements[ids[0]] = _encrypt(plan, "none", first.content, first.mime_type)

    data = plan.data
    if plan.bad_xml:
        data = b'<?xml version="1.0"?><antrag><name>Erika</antrag>'
    if plan.schema_invalid_json is not None:
        data = plan.schema_invalid_json
    service = parse_service_identifier(plan.service)
    content: dict[str, Any] = {}
    if data is not None and not plan.unannounced_data:
        digest = sha512_hex(b"other bytes" + data) if plan.wrong_data_hash else sha512_hex(data)
        mime = "application/xml" if plan.bad_xml else plan.data_mime_type
        schema_uri = plan.unoffered_data_schema or plan.data_schema_uri
        content["data"] = {
            "hash": {"type": "sha512", "content": digest},
            "submissionSchema": {"schemaUri": schema_uri, "mimeType": mime},
        }
    listed = list(ids)
    if plan.missing_attachment_in_metadata:
        listed = listed[1:]
    content["attachments"] = [
        {
            "attachmentId": aid,
            "hash": {"type": "sha512", "content": hashes[aid]},
            "purpose": a.purpose,
            "mimeType": a.mime_type,
            "filename": a.filename,
        }
        for aid, a in zip(ids, plan.attachments, strict=True)
        if aid in listed
    ]
    if plan.extra_attachment_in_metadata:
        content["attachments"].append(
            {
                "attachmentId": new_id(),
                "hash": {"type": "sha512", "content": sha512_hex(b"never sent")},
                "purpose": "attachment",
                "mimeType": "application/pdf",
                "filename": "fehlt.pdf",
            }
        )
    if plan.metadata_schema_violation:
        assert content["attachments"], "metadata_schema_violation needs a listed attachment"
        content["attachments"][0]["purpose"] = INVALID_PURPOSE
    version = plan.metadata_version or plan.version
    metadata: dict[str, Any] = {
        "$schema": f"https://schema.fitko.de/fit-connect/metadata/{version}/metadata.schema.json",
        "contentStructure": content,
        "publicServiceType": {
            "identifier": parse_service_identifier(plan.wrong_service or plan.service),
            "name": plan.service_name,
        },
    }
    if plan.reply_channel is not None:
        metadata["replyChannel"] = dict(plan.reply_channel)
    metadata_bytes = plan.raw_metadata if plan.raw_metadata is not None else dumps_compact(metadata)
    metadata_token = _encrypt(plan, "metadata", metadata_bytes, "application/json")
    if plan.wrong_tag == "metadata":
        replacements["metadata"] = _encrypt(plan, "none", metadata_bytes, "application/json")
    data_token: str | None = None
    if data is not None and not plan.missing_data:
        cty = "application/xml" if plan.bad_xml else plan.data_mime_type
        data_token = _encrypt(plan, "data", data, cty)
        if plan.wrong_tag == "data":
            replacements["data"] = _encrypt(plan, "none", data, cty)
    return BuiltSubmission(
        destination_id=plan.destination_id,
        service_type={"name": plan.service_name, "identifier": service},
        attachment_ids=ids,
        attachment_tokens=tokens,
        metadata_token=metadata_token,
        data_token=data_token,
        metadata=metadata,
        replacements=replacements,
        broken_events=("submit-submission",) if plan.broken_submit_set else (),
    )


def expected_problems(switch: str, built: BuiltSubmission) -> list[tuple[str, str]]:
    """``EXPECTED[switch]`` with the attachment ids filled in."""
    ids = [*built.attachment_ids, "", ""]
    return [(t, i.format(aid=ids[0], aid2=ids[1])) for t, i in EXPECTED[switch]]


class EvilSender:
    """Sends :class:`BuiltSubmission`\\ s over HTTP like a (careless) Onlinedienst would."""

    def __init__(
        self,
        base_url: str,
        client_id: str,
        client_secret: str,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._client_id = client_id
        self._secret = client_secret
        self._transport = transport
        self._token: str | None = None

    async def _auth(self, client: httpx.AsyncClient) -> dict[str, str]:
        if self._token is None:
            response = await client.post(
                self.base_url + "/token",
                data={
                    "grant_type": "client_credentials",
                    "client_id": self._client_id,
                    "client_secret": self._secret,
                },
            )
            response.raise_for_status()
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    async def send(self, built: BuiltSubmission) -> BuiltSubmission:
        """Announce, upload, submit; fills in ``submission_id`` and ``case_id``."""
        async with httpx.AsyncClient(transport=self._transport, timeout=60) as client:
            auth = await self._auth(client)
            response = await client.post(
                self.base_url + "/v1/submissions",
                json={
                    "destinationId": built.destination_id,
                    "announcedAttachments": built.attachment_ids,
                    "serviceType": built.service_type,
                },
                headers=auth,
            )
            assert response.status_code == 201, response.text
            created = response.json()
            sid = created["submissionId"]
            for aid in built.attachment_ids:
                response = await client.put(
                    f"{self.base_url}/v1/submissions/{sid}/attachments/{aid}",
                    content=built.attachment_tokens[aid].encode("ascii"),
                    headers={**auth, "Content-Type": "application/jose"},
                )
                assert response.status_code == 204, response.text
            body: dict[str, Any] = {"encryptedMetadata": built.metadata_token}
            if built.data_token is not None:
                body["encryptedData"] = built.data_token
            response = await client.put(
                f"{self.base_url}/v1/submissions/{sid}", json=body, headers=auth
            )
            assert response.status_code in (200, 202), response.text
        built.submission_id = sid
        built.case_id = created["caseId"]
        return built


class TamperingTransport(httpx.AsyncBaseTransport):
    """An intermediary between subscriber and Zustelldienst that swaps parts it was told to.

    ``replace(built)`` registers a built submission's ``replacements``: the subscriber then gets
    the other ciphertext of the metadata / data (in ``GET /v1/submissions/{id}``) or of an
    attachment (``GET …/attachments/{id}``); and its ``broken_events``: in the case's event log
    (``GET /v1/cases/{id}/events``) this submission's SETs of those events come re-signed with
    the "other" key. Everything else passes through unchanged.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport | None = None) -> None:
        self.inner = inner or httpx.AsyncHTTPTransport()
        self._by_submission: dict[str, dict[str, str]] = {}
        self._broken_by_case: dict[str, tuple[str, set[str]]] = {}
        self.resigned = 0  # SETs re-signed so far

    def replace(self, built: BuiltSubmission) -> None:
        assert built.submission_id is not None
        self._by_submission[built.submission_id] = dict(built.replacements)
        if built.broken_events:
            assert built.case_id is not None
            self._broken_by_case[built.case_id] = (built.submission_id, set(built.broken_events))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method != "GET":
            return response
        path = request.url.path
        if m := re.fullmatch(r".*/v1/cases/([^/]+)/events", path):
            broken = self._broken_by_case.get(m.group(1))
            if broken is not None and response.status_code == 200:
                body = json.loads(await response.aread())
                await response.aclose()
                body["eventLog"] = [self._resign(token, *broken) for token in body["eventLog"]]
                return httpx.Response(200, json=body)
            return response
        if m := re.fullmatch(r".*/v1/submissions/([^/]+)/attachments/([^/]+)", path):
            swap = self._by_submission.get(m.group(1), {}).get(m.group(2))
            if swap is not None and response.status_code == 200:
                await response.aread()
                await response.aclose()
                return httpx.Response(
                    200, content=swap.encode("ascii"), headers={"Content-Type": "application/jose"}
                )
            return response
        if m := re.fullmatch(r".*/v1/submissions/([^/]+)", path):
            swaps = self._by_submission.get(m.group(1))
            if swaps and response.status_code == 200:
                body = json.loads(await response.aread())
                await response.aclose()
                if "metadata" in swaps:
                    body["encryptedMetadata"] = swaps["metadata"]
                if "data" in swaps:
                    body["encryptedData"] = swaps["data"]
                return httpx.Response(200, json=body)
        return response

    def _resign(self, token: str, submission_id: str, events: set[str]) -> str:
        parsed = parse_set(token)
        if parsed.submission_id != submission_id or parsed.event.short_name not in events:
            return token
        jws = parse_compact(token)
        self.resigned += 1
        return sign_compact(jws.header, jws.payload, rsa_key(OTHER_KEY_INDEX))

    async def aclose(self) -> None:
        await self.inner.aclose()


def problem_pairs(problems: Sequence[Any]) -> list[tuple[str, str]]:
    """``(type name, instance)`` of reject problems, for comparing with :data:`EXPECTED`."""
    return [(p.type.rsplit("/", 1)[-1], p.instance or "") for p in problems]
