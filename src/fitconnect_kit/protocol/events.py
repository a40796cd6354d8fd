"""Security Event Tokens (SETs) of the FIT-Connect event log.

A SET is a compact JWS (``PS512``, header ``typ: secevent+jwt`` and ``kid``) whose payload has the
claims ``$schema`` (optional), ``jti``, ``iss``, ``iat``, ``sub``, ``txn`` and ``events`` — an
object with exactly one event URI mapped to that event's payload (reference §8).

* :func:`build_set_claims` + :func:`sign_set` produce SETs (Zustelldienst and receivers);
* :func:`parse_set` checks header, claims and the event payload strictly, without the signature;
* :func:`verify_set` / :func:`verify_set_with_jwks` also verify the signature and expectations;
* :func:`derive_state` turns the ordered SETs of one submission into its status.

The per-event rules (who issues it, which payload members, what is [U]) are the one table of
this module: :data:`EVENT_RULES`, next to :data:`ACCEPTED_SET_SCHEMA_VERSIONS`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric import rsa
from pydantic import ValidationError

from fitconnect_kit.protocol.api import SubmissionStatus
from fitconnect_kit.protocol.clock import SYSTEM_CLOCK, Clock, unix_time
from fitconnect_kit.protocol.errors import FormatError, InvalidKeyError, SetError
from fitconnect_kit.protocol.ids import is_uuid, new_id, parse_uuid
from fitconnect_kit.protocol.jose.jwk import find_key, jwks_keys
from fitconnect_kit.protocol.jose.jws import (
    ALG_PS512,
    ParsedJws,
    parse_compact,
    sign_compact,
    verify_parsed,
)
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object
from fitconnect_kit.protocol.problems import Problem, instance_attachment

EVENTS_BASE: Final = "https://schema.fitko.de/fit-connect/events/"
SET_SCHEMA_BASE: Final = "https://schema.fitko.de/fit-connect/set-payload/"
SET_PAYLOAD_SCHEMA_DEFAULT: Final = SET_SCHEMA_BASE + "1.2.2/set-payload.schema.json"
SET_TYP: Final = "secevent+jwt"
MIN_IAT: Final = 1577833200  # 2020-01-01T00:00:00+01:00, the schema's minimum

# Pattern of set-payload 1.2.x for `$schema` (any 1.x.y) [C].
SET_SCHEMA_URI_RE: Final = re.compile(
    r"^https://schema\.fitko\.de/fit-connect/set-payload/(1\.\d+\.\d+)/set-payload\.schema\.json$"
)
_SUB_RE: Final = re.compile(r"^(submission|reply):(.+)$")
_TXN_PREFIX: Final = "case:"
_TAG_RE: Final = re.compile(r"^[A-Za-z0-9_-]{22}$")  # base64url of a 16-byte AES-GCM tag


class SetKeyNotFoundError(SetError):
    """No verification key with the SET's ``kid`` is available."""


class SetMismatchError(SetError):
    """A valid SET does not match what the caller expected (subject, case or issuer)."""


class Event(StrEnum):
    """Event types; the values are the full event URIs used as keys of ``events``."""

    CREATE_SUBMISSION = EVENTS_BASE + "create-submission"
    SUBMIT_SUBMISSION = EVENTS_BASE + "submit-submission"
    NOTIFY_SUBMISSION = EVENTS_BASE + "notify-submission"
    FORWARD_SUBMISSION = EVENTS_BASE + "forward-submission"
    ACCEPT_SUBMISSION = EVENTS_BASE + "accept-submission"
    REJECT_SUBMISSION = EVENTS_BASE + "reject-submission"
    DELETE_SUBMISSION = EVENTS_BASE + "delete-submission"
    CREATE_REPLY = EVENTS_BASE + "create-reply"
    SUBMIT_REPLY = EVENTS_BASE + "submit-reply"
    NOTIFY_REPLY = EVENTS_BASE + "notify-reply"
    ACCEPT_REPLY = EVENTS_BASE + "accept-reply"
    REJECT_REPLY = EVENTS_BASE + "reject-reply"
    DELETE_REPLY = EVENTS_BASE + "delete-reply"

    @property
    def short_name(self) -> str:
        """The last path segment, e.g. ``accept-submission``."""
        return self.value[len(EVENTS_BASE) :]

    @property
    def is_reply_event(self) -> bool:
        return self.value.endswith("-reply")

    @classmethod
    def from_uri(cls, uri: object) -> Event:
        try:
            return cls(uri if isinstance(uri, str) else repr(uri))
        except ValueError:
            raise SetError(f"unknown event {uri!r}") from None


RECEIVER_EVENTS: Final = frozenset(
    {Event.FORWARD_SUBMISSION, Event.ACCEPT_SUBMISSION, Event.REJECT_SUBMISSION}
)
"""Events a receiving system may post to ``POST /v1/cases/{caseId}/events`` [C]."""


class NotifyType(StrEnum):
    POLLING = "polling"
    CALLBACK = "callback"


IssuerKind = Literal["zustelldienst", "destination", "either"]
Confidence = Literal["C", "S", "U"]

M_TAGS: Final = "authenticationTags"
M_PROBLEMS: Final = "problems"
M_NOTIFY_TYPE: Final = "notifyType"


@dataclass(frozen=True)
class EventRule:
    """What a SET of one event type looks like.

    * ``issuer`` — ``zustelldienst`` (``iss`` is an http(s) URL), ``destination`` (``iss`` is a
      UUID) or ``either``;
    * ``members`` — payload members the event may carry; ``None`` = payload shape unknown, any
      member accepted (known members are still checked);
    * ``required`` — members a parsed SET must have; ``build_required`` — members a SET we build
      must have (stricter: older logs lack some, what we write is current).
    """

    issuer: IssuerKind
    members: frozenset[str] | None
    required: frozenset[str]
    build_required: frozenset[str]
    confidence: Confidence
    note: str = ""


def _rule(
    issuer: IssuerKind,
    members: set[str] | None,
    required: set[str],
    build_required: set[str],
    confidence: Confidence,
    note: str = "",
) -> EventRule:
    return EventRule(
        issuer,
        None if members is None else frozenset(members),
        frozenset(required),
        frozenset(required | build_required),
        confidence,
        note,
    )


# =================================================================================================
# [U] THE ONE TABLE OF THIS MODULE: per-event rules (reference §8.3) and accepted payload schema
# versions (§8.1, §8.2). Rows and choices marked "U" are unconfirmed; change them here.
# =================================================================================================
EVENT_RULES: Final[Mapping[Event, EventRule]] = MappingProxyType(
    {
        Event.CREATE_SUBMISSION: _rule("zustelldienst", set(), set(), set(), "C"),
        Event.SUBMIT_SUBMISSION: _rule(
            "zustelldienst",
            {M_TAGS},
            set(),
            {M_TAGS},
            "C",
            "tags since ZD 1.2.0; older logs have an empty payload",
        ),
        Event.NOTIFY_SUBMISSION: _rule(
            "zustelldienst",
            {M_NOTIFY_TYPE},
            set(),
            {M_NOTIFY_TYPE},
            "U",
            "notifyType by analogy with notify-reply",
        ),
        Event.FORWARD_SUBMISSION: _rule(
            "destination", None, set(), set(), "U", "payload {authenticationTags} assumed"
        ),
        Event.ACCEPT_SUBMISSION: _rule(
            "destination",
            {M_TAGS},
            set(),
            {M_TAGS},
            "C",
            "tags required when we build; tolerated missing in old logs",
        ),
        Event.REJECT_SUBMISSION: _rule(
            "either",
            {M_PROBLEMS, M_TAGS},
            {M_PROBLEMS},
            set(),
            "C",
            "issued by the receiver or by the ZD (14-day rule)",
        ),
        Event.DELETE_SUBMISSION: _rule("zustelldienst", None, set(), set(), "U", "payload [U]"),
        Event.CREATE_REPLY: _rule("zustelldienst", None, set(), set(), "U", "payload {} [U]"),
        Event.SUBMIT_REPLY: _rule(
            "zustelldienst", {M_TAGS}, set(), {M_TAGS}, "U", "payload {authenticationTags} [U]"
        ),
        Event.NOTIFY_REPLY: _rule("zustelldienst", {M_NOTIFY_TYPE}, {M_NOTIFY_TYPE}, set(), "C"),
        Event.ACCEPT_REPLY: _rule("either", None, set(), set(), "U", "existence and payload [U]"),
        Event.REJECT_REPLY: _rule("either", {M_PROBLEMS, M_TAGS}, {M_PROBLEMS}, set(), "C"),
        Event.DELETE_REPLY: _rule("zustelldienst", None, set(), set(), "U"),
    }
)

ACCEPTED_SET_SCHEMA_VERSIONS: Final = frozenset(
    {"1.0.0", "1.0.1", "1.1.0", "1.2.0", "1.2.1", "1.2.2"}
)
"""[U] `$schema` versions a Zustelldienst accepts on ``POST …/events`` (1.0.0, 1.0.1 and 1.2.2 are
confirmed to exist; the others are assumed). :func:`parse_set` itself accepts any 1.x.y."""

SCHEMA_WITH_EMPTY_PAYLOAD: Final = True
"""[U] §8.2 says "if the event has no payload, `$schema` must be omitted", yet the test ZD sends
`$schema` with an empty ``{}`` payload (vector ``set_valid``). We read "no payload" as "no
payload object at all" and keep `$schema` for empty payloads, like the ZD does."""


def is_accepted_set_schema(uri: str) -> bool:
    """Whether a Zustelldienst should accept a posted SET with this ``$schema``."""
    match = SET_SCHEMA_URI_RE.match(uri)
    return match is not None and match.group(1) in ACCEPTED_SET_SCHEMA_VERSIONS


# --- subjects -----------------------------------------------------------------------------------


def submission_subject(submission_id: str) -> str:
    """``submission:<uuid>``"""
    return "submission:" + parse_uuid(submission_id, field="submission id")


def reply_subject(reply_id: str) -> str:
    """``reply:<uuid>``"""
    return "reply:" + parse_uuid(reply_id, field="reply id")


def case_txn(case_id: str) -> str:
    """``case:<uuid>``"""
    return _TXN_PREFIX + parse_uuid(case_id, field="case id")


def parse_subject(sub: object) -> tuple[Literal["submission", "reply"], str]:
    """Split ``sub`` into its kind and the canonical id; raise :class:`SetError`."""
    match = _SUB_RE.match(sub) if isinstance(sub, str) else None
    if not match or not is_uuid(match.group(2)):
        raise SetError(
            f"SET claim 'sub' must be 'submission:<uuid>' or 'reply:<uuid>', got {sub!r}"
        )
    kind: Literal["submission", "reply"] = (
        "submission" if match.group(1) == "submission" else "reply"
    )
    return kind, parse_uuid(match.group(2))


def parse_txn(txn: object) -> str:
    """The canonical case id of a ``txn`` claim ``case:<uuid>``; raise :class:`SetError`."""
    if isinstance(txn, str) and txn.startswith(_TXN_PREFIX) and is_uuid(txn[len(_TXN_PREFIX) :]):
        return parse_uuid(txn[len(_TXN_PREFIX) :])
    raise SetError(f"SET claim 'txn' must be 'case:<uuid>', got {txn!r}")


def _issuer_kind(iss: str) -> Literal["zustelldienst", "destination"] | None:
    if is_uuid(iss):
        return "destination"
    parts = urlsplit(iss)
    if parts.scheme in ("https", "http") and parts.hostname:
        return "zustelldienst"
    return None


def _normalize_issuer(iss: str) -> str:
    return parse_uuid(iss) if is_uuid(iss) else iss.rstrip("/")


# --- authentication tags -------------------------------------------------------------------------


def _check_tag(value: object, where: str) -> str:
    if not isinstance(value, str) or not _TAG_RE.match(value):
        raise SetError(
            f"authentication tag of {where} must be 22 base64url characters (16 bytes), "
            f"got {value!r}"
        )
    return value


def authentication_tag(jwe_compact: str) -> str:
    """The authentication tag of a JWE compact serialization: its fifth (last) segment."""
    parts = jwe_compact.strip().split(".")
    if len(parts) != 5:
        raise FormatError(f"a JWE compact serialization has 5 segments, got {len(parts)}")
    try:
        return _check_tag(parts[4], "the JWE")
    except SetError as exc:
        raise FormatError(str(exc)) from None


@dataclass(frozen=True)
class AuthenticationTags:
    """``authenticationTags`` of a SET: the AES-GCM tags of metadata, data and attachments."""

    metadata: str | None = None
    data: str | None = None
    attachments: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metadata is not None:
            _check_tag(self.metadata, "metadata")
        if self.data is not None:
            _check_tag(self.data, "data")
        normalized: dict[str, str] = {}
        for key, tag in self.attachments.items():
            try:
                attachment_id = parse_uuid(key, field="attachment id")
            except FormatError as exc:
                raise SetError(f"authenticationTags.attachments: {exc}") from None
            normalized[attachment_id] = _check_tag(tag, f"attachment {attachment_id}")
        object.__setattr__(self, "attachments", MappingProxyType(normalized))

    @classmethod
    def from_jwes(
        cls,
        metadata: str | None = None,
        data: str | None = None,
        attachments: Mapping[str, str] | None = None,
    ) -> AuthenticationTags:
        """Tags of the given JWE compact strings (attachments keyed by attachment id)."""
        return cls(
            metadata=authentication_tag(metadata) if metadata is not None else None,
            data=authentication_tag(data) if data is not None else None,
            attachments={k: authentication_tag(v) for k, v in (attachments or {}).items()},
        )

    def to_json(self) -> dict[str, Any]:
        """Wire form; ``attachments`` is always present (possibly ``{}``) [U]."""
        result: dict[str, Any] = {}
        if self.metadata is not None:
            result["metadata"] = self.metadata
        if self.data is not None:
            result["data"] = self.data
        result["attachments"] = dict(self.attachments)
        return result

    @classmethod
    def from_json(cls, obj: object) -> AuthenticationTags:
        """Parse strictly: only ``metadata``, ``data``, ``attachments``; every tag 22 chars."""
        if not isinstance(obj, Mapping):
            raise SetError("authenticationTags must be an object")
        unknown = set(obj) - {"metadata", "data", "attachments"}
        if unknown:
            raise SetError(f"authenticationTags has unknown members {sorted(unknown)}")
        attachments = obj.get("attachments", {})
        if not isinstance(attachments, Mapping):
            raise SetError("authenticationTags.attachments must be an object")
        metadata, data = obj.get("metadata"), obj.get("data")
        if ("metadata" in obj and metadata is None) or ("data" in obj and data is None):
            raise SetError("authentication tags must be strings, not null")
        return cls(metadata=metadata, data=data, attachments=dict(attachments))

    def mismatches(self, other: AuthenticationTags) -> list[str]:
        """Problem ``instance`` strings (``metadata``, ``data``, ``attachment:<id>``) whose tags
        differ between ``self`` and ``other`` (a tag missing on one side counts as different)."""
        result = []
        if self.metadata != other.metadata:
            result.append("metadata")
        if self.data != other.data:
            result.append("data")
        for attachment_id in sorted(set(self.attachments) | set(other.attachments)):
            if self.attachments.get(attachment_id) != other.attachments.get(attachment_id):
                result.append(instance_attachment(attachment_id))
        return result


# --- payload and claims validation ---------------------------------------------------------------


def _check_problems(value: object, *, building: bool) -> list[dict[str, Any]]:
    if not isinstance(value, list):
        raise SetError("'problems' must be an array of problem objects")
    if building and not value:
        raise SetError("a reject event needs at least one problem")
    result = []
    for index, item in enumerate(value):
        if isinstance(item, Problem):
            item = item.to_json()
        try:
            problem = Problem.model_validate(item)
        except ValidationError as exc:
            first = exc.errors(include_input=False, include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "item"
            raise SetError(f"problems[{index}] is invalid: {where}: {first['msg']}") from None
        result.append(problem.to_json())
    return result


def _check_payload(event: Event, payload: object, *, building: bool) -> dict[str, Any]:
    """Validate an event payload against :data:`EVENT_RULES`; return a normalized copy."""
    if not isinstance(payload, Mapping):
        raise SetError(f"payload of {event.short_name} must be an object")
    rule = EVENT_RULES[event]
    required = rule.build_required if building else rule.required
    missing = required - payload.keys()
    if missing:
        raise SetError(f"payload of {event.short_name} lacks {sorted(missing)}")
    if rule.members is not None:
        unknown = payload.keys() - rule.members
        if unknown:
            raise SetError(f"payload of {event.short_name} has unknown members {sorted(unknown)}")
    result = dict(payload)
    if M_TAGS in payload:
        tags = payload[M_TAGS]
        if not isinstance(tags, AuthenticationTags):
            tags = AuthenticationTags.from_json(tags)
        result[M_TAGS] = tags.to_json() if building else dict(payload[M_TAGS])
    if M_PROBLEMS in payload:
        checked = _check_problems(payload[M_PROBLEMS], building=building)
        result[M_PROBLEMS] = checked if building else list(payload[M_PROBLEMS])
    if M_NOTIFY_TYPE in payload:
        try:
            result[M_NOTIFY_TYPE] = NotifyType(payload[M_NOTIFY_TYPE]).value
        except ValueError:
            raise SetError(
                f"notifyType must be 'polling' or 'callback', got {payload[M_NOTIFY_TYPE]!r}"
            ) from None
    return result


@dataclass(frozen=True)
class _CheckedClaims:
    event: Event
    payload: dict[str, Any]
    jti: str
    issuer: str
    issued_at: int
    subject: str
    txn: str
    submission_id: str | None
    reply_id: str | None
    case_id: str


def _check_claims(claims: Mapping[str, Any], *, building: bool = False) -> _CheckedClaims:
    for name in ("jti", "iss", "iat", "sub", "txn", "events"):
        if name not in claims:
            raise SetError(f"SET claim {name!r} is missing")
    schema = claims.get("$schema")
    if "$schema" in claims and (not isinstance(schema, str) or not SET_SCHEMA_URI_RE.match(schema)):
        raise SetError(f"SET claim '$schema' is not a set-payload 1.x schema URI: {schema!r}")
    jti = claims["jti"]
    if not is_uuid(jti):
        raise SetError(f"SET claim 'jti' must be a UUID, got {jti!r}")
    iss = claims["iss"]
    issuer_kind = _issuer_kind(iss) if isinstance(iss, str) else None
    if issuer_kind is None:
        raise SetError(
            f"SET claim 'iss' must be a Zustelldienst URL or a destination id, got {iss!r}"
        )
    iat = claims["iat"]
    if not isinstance(iat, int) or isinstance(iat, bool) or iat < MIN_IAT:
        raise SetError(f"SET claim 'iat' must be Unix seconds ≥ {MIN_IAT}, got {iat!r}")
    sub_kind, sub_id = parse_subject(claims["sub"])
    case_id = parse_txn(claims["txn"])
    events = claims["events"]
    if not isinstance(events, Mapping) or len(events) != 1:
        count = len(events) if isinstance(events, Mapping) else "no object"
        raise SetError(f"SET claim 'events' must hold exactly one event, got {count}")
    ((uri, payload),) = events.items()
    event = Event.from_uri(uri)
    if (sub_kind == "reply") != event.is_reply_event:
        raise SetError(f"event {event.short_name} cannot have subject {claims['sub']!r}")
    rule = EVENT_RULES[event]
    if rule.issuer != "either" and rule.issuer != issuer_kind:
        wanted = "a Zustelldienst URL" if rule.issuer == "zustelldienst" else "a destination id"
        raise SetError(f"event {event.short_name} must be issued by {wanted}, got iss {iss!r}")
    if building and schema is not None and not is_accepted_set_schema(schema):
        raise SetError(f"SET payload schema {schema!r} is not an accepted version")
    return _CheckedClaims(
        event=event,
        payload=_check_payload(event, payload, building=building),
        jti=parse_uuid(jti),
        issuer=iss,
        issued_at=iat,
        subject=claims["sub"],
        txn=claims["txn"],
        submission_id=sub_id if sub_kind == "submission" else None,
        reply_id=sub_id if sub_kind == "reply" else None,
        case_id=case_id,
    )


# --- building and signing -----------------------------------------------------------------------


def build_set_claims(
    event: Event,
    *,
    issuer: str,
    subject: str,
    case_id: str,
    payload: Mapping[str, Any] | None = None,
    clock: Clock = SYSTEM_CLOCK,
    jti: str | None = None,
    schema: str | None = SET_PAYLOAD_SCHEMA_DEFAULT,
) -> dict[str, Any]:
    """The claims of a new SET, validated for ``event``.

    ``subject`` is ``submission:<id>`` / ``reply:<id>`` (see :func:`submission_subject`),
    ``case_id`` a bare UUID. Payload values may be :class:`AuthenticationTags` and
    :class:`Problem` objects. ``schema=None`` omits ``$schema``; it is kept for empty payloads
    (:data:`SCHEMA_WITH_EMPTY_PAYLOAD`).
    """
    event = Event.from_uri(event)
    claims: dict[str, Any] = {}
    if schema is not None and (SCHEMA_WITH_EMPTY_PAYLOAD or payload):
        claims["$schema"] = schema
    claims.update(
        jti=jti if jti is not None else new_id(),
        iss=issuer,
        iat=unix_time(clock),
        sub=subject,
        txn=case_txn(case_id),
        events={event.value: dict(payload or {})},
    )
    checked = _check_claims(claims, building=True)
    claims["jti"] = checked.jti
    claims["events"] = {event.value: checked.payload}
    return claims


def sign_set(claims: Mapping[str, Any], key: rsa.RSAPrivateKey, kid: str) -> str:
    """Sign SET claims (checked first) with PS512; header ``{typ, alg, kid}``, compact JSON."""
    if not isinstance(kid, str) or not kid:
        raise SetError("a SET needs a non-empty 'kid'")
    checked = _check_claims(claims, building=True)
    body = dict(claims)
    body["events"] = {checked.event.value: checked.payload}
    header = {"typ": SET_TYP, "alg": ALG_PS512, "kid": kid}
    return sign_compact(header, dumps_compact(body), key)


# --- parsed tokens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class SecurityEventToken:
    """A syntactically valid SET. Ids (``jti``, ``submission_id``, ``reply_id``, ``case_id``) are
    canonical lowercase UUIDs; ``subject``, ``txn`` and ``issuer`` are as in the token."""

    token: str = field(repr=False)
    header: dict[str, Any]
    claims: dict[str, Any] = field(repr=False)
    event: Event
    payload: dict[str, Any]
    jti: str
    issuer: str
    issued_at: int
    subject: str
    txn: str
    submission_id: str | None
    reply_id: str | None
    case_id: str
    kid: str

    @property
    def schema(self) -> str | None:
        value = self.claims.get("$schema")
        return value if isinstance(value, str) else None

    @property
    def authentication_tags(self) -> AuthenticationTags | None:
        tags = self.payload.get(M_TAGS)
        return AuthenticationTags.from_json(tags) if tags is not None else None

    @property
    def problems(self) -> list[Problem]:
        return [Problem.model_validate(p) for p in self.payload.get(M_PROBLEMS, [])]

    @property
    def notify_type(self) -> NotifyType | None:
        value = self.payload.get(M_NOTIFY_TYPE)
        return NotifyType(value) if value is not None else None

    @property
    def issued_by_zustelldienst(self) -> bool:
        return _issuer_kind(self.issuer) == "zustelldienst"

    @property
    def issued_by_destination(self) -> bool:
        return _issuer_kind(self.issuer) == "destination"


def _check_set_header(header: Mapping[str, Any]) -> str:
    typ = header.get("typ")
    if typ != SET_TYP:
        raise SetError(f"SET header 'typ' must be {SET_TYP!r}, got {typ!r}")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise SetError("SET header 'kid' is missing or empty")
    return kid


@dataclass(frozen=True)
class ParsedSet:
    """A SET checked by :func:`parse_set_token` (signature not yet verified) together with the
    JWS parts its signature check needs, so that verifying it does not parse it again."""

    jws: ParsedJws = field(repr=False)
    set: SecurityEventToken


def parse_set_token(token: str | bytes) -> ParsedSet:
    """Like :func:`parse_set`, keeping the JWS parts for :func:`verify_parsed_set`."""
    parsed = parse_compact(token)  # alg == PS512, no crit/jku/jwk/x5u/x5c
    kid = _check_set_header(parsed.header)
    try:
        claims = loads_object(parsed.payload, what="SET payload")
    except FormatError as exc:
        raise SetError(str(exc)) from None
    checked = _check_claims(claims)
    text = token.decode("ascii") if isinstance(token, bytes) else token
    return ParsedSet(
        jws=parsed,
        set=SecurityEventToken(
            token=text.strip(),
            header=dict(parsed.header),
            claims=claims,
            event=checked.event,
            payload=checked.payload,
            jti=checked.jti,
            issuer=checked.issuer,
            issued_at=checked.issued_at,
            subject=checked.subject,
            txn=checked.txn,
            submission_id=checked.submission_id,
            reply_id=checked.reply_id,
            case_id=checked.case_id,
            kid=kid,
        ),
    )


def parse_set(token: str | bytes) -> SecurityEventToken:
    """Check a SET's header, claims and event payload strictly — **without** the signature.

    Raises :class:`SetError` for SET rule violations and JOSE errors
    (:class:`~fitconnect_kit.protocol.errors.MalformedJoseError`,
    :class:`~fitconnect_kit.protocol.errors.UnsupportedAlgorithmError`, ...) for broken tokens.
    """
    return parse_set_token(token).set


def check_verification_jwk(jwk: Mapping[str, Any], kid: str | None = None) -> None:
    """A JWK may verify SETs only with ``kty`` RSA, ``alg`` PS512, ``key_ops`` containing
    ``verify`` (``use``, if present, ``sig``) and — when given — the SET's ``kid`` (§8.5 step 4)."""
    name = jwk.get("kid")
    if kid is not None and name is not None and name != kid:
        raise SetKeyNotFoundError(f"key {name!r} does not have the SET's kid {kid!r}")
    if jwk.get("kty") != "RSA":
        raise InvalidKeyError(f"key {name!r} is not an RSA key")
    if jwk.get("alg") != ALG_PS512:
        raise InvalidKeyError(f"key {name!r} has alg {jwk.get('alg')!r}; SETs need PS512")
    ops = jwk.get("key_ops")
    if not isinstance(ops, list) or "verify" not in ops:
        raise InvalidKeyError(f"key {name!r} does not allow key_ops 'verify'")
    if jwk.get("use", "sig") != "sig":
        raise InvalidKeyError(f"key {name!r} has use {jwk.get('use')!r}, not 'sig'")


def _check_expectations(
    st: SecurityEventToken,
    expected_subject: str | None,
    expected_case_id: str | None,
    expected_issuer: str | None,
) -> None:
    if expected_subject is not None:
        kind, wanted = parse_subject(expected_subject)
        actual = st.submission_id if kind == "submission" else st.reply_id
        if actual != wanted:
            raise SetMismatchError(f"SET is about {st.subject!r}, expected {kind}:{wanted}")
    if expected_case_id is not None:
        wanted_case = (
            parse_txn(expected_case_id)
            if expected_case_id.startswith(_TXN_PREFIX)
            else parse_uuid(expected_case_id, field="expected case id")
        )
        if st.case_id != wanted_case:
            raise SetMismatchError(f"SET belongs to {st.txn!r}, expected case:{wanted_case}")
    if expected_issuer is not None and _normalize_issuer(st.issuer) != _normalize_issuer(
        expected_issuer
    ):
        raise SetMismatchError(f"SET was issued by {st.issuer!r}, expected {expected_issuer!r}")


def verify_parsed_set(
    parsed: ParsedSet,
    key: rsa.RSAPublicKey | Mapping[str, Any],
    *,
    expected_subject: str | None = None,
    expected_case_id: str | None = None,
    expected_issuer: str | None = None,
) -> SecurityEventToken:
    """:func:`verify_set` for a SET already parsed with :func:`parse_set_token`."""
    st = parsed.set
    if isinstance(key, Mapping):
        check_verification_jwk(key, st.kid)
    verify_parsed(parsed.jws, key)
    _check_expectations(st, expected_subject, expected_case_id, expected_issuer)
    return st


def verify_set(
    token: str | bytes,
    key: rsa.RSAPublicKey | Mapping[str, Any],
    *,
    expected_subject: str | None = None,
    expected_case_id: str | None = None,
    expected_issuer: str | None = None,
) -> SecurityEventToken:
    """Parse a SET, verify its PS512 signature with ``key``, then check the expectations.

    ``key`` is an RSA public key or a JWK (checked with :func:`check_verification_jwk`).
    ``expected_subject`` is ``submission:<id>`` or ``reply:<id>``; ``expected_case_id`` a UUID
    (or ``case:<id>``); issuers compare with UUIDs canonical and URLs without trailing ``/``.
    """
    return verify_parsed_set(
        parse_set_token(token),
        key,
        expected_subject=expected_subject,
        expected_case_id=expected_case_id,
        expected_issuer=expected_issuer,
    )


def verify_set_with_jwks(
    token: str | bytes,
    jwks: Mapping[str, Any],
    *,
    expected_subject: str | None = None,
    expected_case_id: str | None = None,
    expected_issuer: str | None = None,
) -> SecurityEventToken:
    """Like :func:`verify_set` with the key picked from a JWK Set by the SET's ``kid``.

    Raises :class:`SetKeyNotFoundError` when no key has that ``kid``.
    """
    parsed = parse_set_token(token)
    jwk = find_key(jwks_keys(jwks), parsed.set.kid)
    if jwk is None:
        raise SetKeyNotFoundError(f"no key with kid {parsed.set.kid!r} in the JWKS")
    return verify_parsed_set(
        parsed,
        jwk,
        expected_subject=expected_subject,
        expected_case_id=expected_case_id,
        expected_issuer=expected_issuer,
    )


def check_postable(st: SecurityEventToken) -> None:
    """Rules a Zustelldienst applies to a SET a receiver posts to ``POST …/events``.

    Beyond :func:`parse_set`: the event is one of :data:`RECEIVER_EVENTS`, ``iss`` is a
    destination id, the payload has everything a current SET must carry (e.g. ``accept``
    carries ``authenticationTags``, ``reject`` at least one problem), and ``$schema``, if
    present, is an accepted version. Signature, issuer-vs-submission and state checks are the
    caller's. Raises :class:`SetError`.
    """
    if st.event not in RECEIVER_EVENTS:
        raise SetError(f"event {st.event.short_name} cannot be posted by a receiver")
    if not st.issued_by_destination:
        raise SetError(f"a posted SET must be issued by a destination id, got {st.issuer!r}")
    if st.schema is not None and not is_accepted_set_schema(st.schema):
        raise SetError(f"SET payload schema {st.schema!r} is not supported")
    _check_payload(st.event, st.payload, building=True)


# --- status derivation --------------------------------------------------------------------------


@dataclass(frozen=True)
class SubmissionState:
    """The state of one submission as its event log tells it."""

    status: SubmissionStatus
    problems: tuple[Problem, ...] = ()
    authentication_tags_sent: AuthenticationTags | None = None
    receiver_tags: AuthenticationTags | None = None
    content_deleted: bool = False
    last_event: Event | None = None

    @property
    def is_final(self) -> bool:
        """Accepted or rejected (a decision), or deleted without one."""
        return self.status in (
            SubmissionStatus.ACCEPTED,
            SubmissionStatus.REJECTED,
            SubmissionStatus.DELETED,
        )

    def tag_mismatches(self) -> list[str]:
        """Instances whose receiver tags differ from the ZD's ``submit-submission`` tags.

        Empty when either side is unknown (nothing to compare).
        """
        if self.authentication_tags_sent is None or self.receiver_tags is None:
            return []
        return self.authentication_tags_sent.mismatches(self.receiver_tags)


_DECIDED = (SubmissionStatus.ACCEPTED, SubmissionStatus.REJECTED)


def derive_state(
    events: Sequence[SecurityEventToken], *, submission_id: str | None = None
) -> SubmissionState:
    """Status of one submission from its (already verified) SETs, in log order.

    * ``create`` → incomplete, ``submit`` → submitted (tags of the ZD's SET), ``notify`` after
      submit → notified, ``forward`` → forwarded;
    * ``accept``/``reject`` are final decisions: the first one wins, later decisions are ignored;
      ``reject`` carries its problems (also the ZD's 14-day reject);
    * ``delete-submission`` after a decision keeps it and sets ``content_deleted``; without a
      decision the status becomes ``deleted``.

    Reply events are ignored. Pass ``submission_id`` to pick one submission out of a case log;
    without it all submission events must be about the same submission. An empty log gives
    ``incomplete`` with ``last_event`` ``None``.
    """
    wanted = parse_uuid(submission_id, field="submission id") if submission_id else None
    relevant = [e for e in events if e.submission_id is not None]
    if wanted is not None:
        relevant = [e for e in relevant if e.submission_id == wanted]
    elif len({e.submission_id for e in relevant}) > 1:
        raise SetError("the events belong to several submissions; pass submission_id")

    status = SubmissionStatus.INCOMPLETE
    problems: tuple[Problem, ...] = ()
    sent: AuthenticationTags | None = None
    received: AuthenticationTags | None = None
    deleted = False
    last: Event | None = None
    for st in relevant:
        last = st.event
        decided = status in _DECIDED
        if st.event is Event.CREATE_SUBMISSION:
            continue
        if st.event is Event.SUBMIT_SUBMISSION:
            if st.issued_by_zustelldienst:
                sent = st.authentication_tags
            if status is SubmissionStatus.INCOMPLETE:
                status = SubmissionStatus.SUBMITTED
        elif st.event is Event.NOTIFY_SUBMISSION:
            if status is SubmissionStatus.SUBMITTED:
                status = SubmissionStatus.NOTIFIED
        elif st.event is Event.FORWARD_SUBMISSION:
            if not decided and status is not SubmissionStatus.DELETED:
                status = SubmissionStatus.FORWARDED
                received = st.authentication_tags or received
        elif st.event in (Event.ACCEPT_SUBMISSION, Event.REJECT_SUBMISSION):
            if decided or status is SubmissionStatus.DELETED:
                continue
            if st.event is Event.ACCEPT_SUBMISSION:
                status, problems = SubmissionStatus.ACCEPTED, ()
            else:
                status, problems = SubmissionStatus.REJECTED, tuple(st.problems)
            if st.issued_by_destination:
                received = st.authentication_tags or received
        elif st.event is Event.DELETE_SUBMISSION:
            deleted = True
            if not decided:
                status = SubmissionStatus.DELETED
    return SubmissionState(
        status=status,
        problems=problems,
        authentication_tags_sent=sent,
        receiver_tags=received,
        content_deleted=deleted,
        last_event=last,
    )
