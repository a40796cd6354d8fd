"""The problem catalog of FIT-Connect (RFC 7807 problem details).

Two families of problem types exist:

* **Submission API problems** (:class:`ApiProblems`) — the ``type`` of an
  ``application/problem+json`` error response of the Zustelldienst, under
  :data:`SUBMISSION_API_PROBLEM_BASE`; ``status`` is the HTTP status.
* **Reject problems** (:class:`RejectProblems`) — the ``problems`` of a ``reject-submission``
  Security Event Token, under :data:`REJECT_PROBLEM_BASE`, each with the ``instance`` forms the
  receiver must use verbatim (``metadata``, ``data``, ``attachment:<uuid>``, ``submission``).

Most names are UNCONFIRMED ([U]) because the full Submission API spec and the receiver
verification page could not be retrieved. **The two classes below are the one table of this
module**: every [U] name, title and status lives there (the ``confidence`` column says which),
and nowhere else.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fitconnect_kit.protocol.errors import FormatError
from fitconnect_kit.protocol.ids import parse_uuid
from fitconnect_kit.protocol.jsonutil import dumps_compact

SUBMISSION_API_PROBLEM_BASE = "https://schema.fitko.de/fit-connect/submission-api/problems/"
REJECT_PROBLEM_BASE = "https://schema.fitko.de/fit-connect/events/problems/"
PROBLEM_JSON_MEDIA_TYPE = "application/problem+json"

Confidence = Literal["C", "S", "U"]


# --- instance forms of reject problems ----------------------------------------------------------


class InstanceKind(StrEnum):
    """What a reject problem's ``instance`` points at."""

    SUBMISSION = "submission"
    METADATA = "metadata"
    DATA = "data"
    ATTACHMENT = "attachment"


INSTANCE_METADATA = "metadata"
INSTANCE_DATA = "data"
INSTANCE_SUBMISSION = "submission"
_ATTACHMENT_PREFIX = "attachment:"


def instance_attachment(attachment_id: str) -> str:
    """The ``instance`` of a problem about one attachment: ``attachment:<uuid>``."""
    return _ATTACHMENT_PREFIX + parse_uuid(attachment_id, field="attachment id")


def parse_instance(text: object) -> tuple[InstanceKind, str | None]:
    """Split an ``instance`` into its kind and (for attachments) the canonical attachment id.

    Raises :class:`FormatError` for anything but ``submission``, ``metadata``, ``data`` and
    ``attachment:<uuid>``.
    """
    if isinstance(text, str):
        if text.startswith(_ATTACHMENT_PREFIX):
            attachment_id = parse_uuid(text[len(_ATTACHMENT_PREFIX) :], field="attachment id")
            return InstanceKind.ATTACHMENT, attachment_id
        if text in (INSTANCE_SUBMISSION, INSTANCE_METADATA, INSTANCE_DATA):
            return InstanceKind(text), None
    raise FormatError(
        "problem instance must be 'submission', 'metadata', 'data' or 'attachment:<uuid>', "
        f"got {text!r}",
        field="instance",
        value=text,
    )


# --- problem types ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProblemType:
    """A Submission API problem type: URI suffix, HTTP status, English title, confidence."""

    name: str
    status: int
    title: str
    confidence: Confidence

    @property
    def type_uri(self) -> str:
        return SUBMISSION_API_PROBLEM_BASE + self.name


@dataclass(frozen=True)
class RejectProblemType:
    """A reject-submission problem type with the ``instance`` kinds it may be used with.

    ``instance_optional`` means the problem may also be sent without an ``instance``.
    """

    name: str
    title: str
    instance_kinds: frozenset[InstanceKind]
    confidence: Confidence
    instance_optional: bool = False

    @property
    def type_uri(self) -> str:
        return REJECT_PROBLEM_BASE + self.name

    def allows_instance(self, instance: str | None) -> bool:
        if instance is None:
            return self.instance_optional
        try:
            kind, _ = parse_instance(instance)
        except FormatError:
            return False
        return kind in self.instance_kinds


class _Catalog:
    """Shared lookups of a namespace class whose attributes are problem types."""

    _item_type: ClassVar[type[Any]]

    @classmethod
    def _items(cls) -> Iterator[Any]:
        for value in vars(cls).values():
            if isinstance(value, cls._item_type):
                yield value


# =================================================================================================
# [U] THE ONE TABLE OF SUBMISSION API PROBLEMS. Names, titles and statuses marked "U" are
# provisional (reference §3.7: the spec's complete list could not be retrieved). Change them here.
# =================================================================================================
class ApiProblems(_Catalog):
    """Submission API problem types (RFC 7807 ``type`` = base + name, ``status`` = HTTP status)."""

    _item_type = ProblemType

    # Domain ("fachliche") problems.
    DESTINATION_NOT_FOUND = ProblemType("destination-not-found", 404, "Destination not found", "S")
    DESTINATION_STATE_INVALID = ProblemType(
        "destination-state-invalid", 422, "Destination state invalid", "S"
    )
    # The service type is not offered by the destination.
    SERVICE_TYPE_MISMATCH = ProblemType("service-type-mismatch", 422, "Service type mismatch", "U")
    # Title copied from FITKO's example for this type.
    SUBMISSION_NOT_FOUND = ProblemType("submission-not-found", 404, "Application not found", "C")
    # Also: upload of an attachment id that was not announced.
    ATTACHMENT_NOT_FOUND = ProblemType("attachment-not-found", 404, "Attachment not found", "U")
    ATTACHMENT_ALREADY_UPLOADED = ProblemType(
        "attachment-already-uploaded", 409, "Attachment already uploaded", "U"
    )
    CASE_NOT_FOUND = ProblemType("case-not-found", 404, "Case not found", "U")
    KEY_NOT_FOUND = ProblemType("key-not-found", 404, "Key not found", "U")
    # Upload after submit, submit twice, events on a submission that does not wait for them.
    SUBMISSION_STATE_INVALID = ProblemType(
        "submission-state-invalid", 409, "Submission state invalid", "U"
    )
    MISSING_ATTACHMENTS = ProblemType("missing-attachments", 409, "Missing attachments", "U")
    INVALID_JWE = ProblemType("invalid-jwe", 422, "Invalid JWE", "U")
    ATTACHMENT_TOO_LARGE = ProblemType("attachment-too-large", 413, "Attachment too large", "U")
    TOO_MANY_ATTACHMENTS = ProblemType("too-many-attachments", 422, "Too many attachments", "U")
    SUBMISSION_TOO_LARGE = ProblemType("submission-too-large", 413, "Submission too large", "U")
    DUPLICATE_ATTACHMENT_IDS = ProblemType(
        "duplicate-attachment-ids", 422, "Duplicate attachment ids", "U"
    )
    # A posted SET was refused (syntax, signature, schema, state).
    INVALID_EVENT = ProblemType("invalid-event", 422, "Invalid event", "U")
    INVALID_KEY = ProblemType("invalid-key", 422, "Invalid key", "U")
    INVALID_CALLBACK = ProblemType("invalid-callback", 422, "Invalid callback", "U")
    # A posted SET whose jti is already in the event log (the same token posted twice).
    DUPLICATE_EVENT = ProblemType("duplicate-event", 409, "Event already recorded", "U")
    # A destination key whose kid is already registered on the destination.
    KEY_ALREADY_EXISTS = ProblemType("key-already-exists", 409, "Key already exists", "U")
    # Unparseable JSON, malformed ids or query parameters.
    MALFORMED_REQUEST = ProblemType("malformed-request", 400, "Malformed request", "U")
    # Well-formed JSON that violates the request schema.
    INVALID_REQUEST_BODY = ProblemType("invalid-request-body", 422, "Invalid request body", "U")

    # Technical problems: one per HTTP status, title = reason phrase (scheme [C], names [U]).
    UNAUTHORIZED = ProblemType("unauthorized", 401, "Unauthorized", "U")
    FORBIDDEN = ProblemType("forbidden", 403, "Forbidden", "U")
    NOT_FOUND = ProblemType("not-found", 404, "Not Found", "U")
    METHOD_NOT_ALLOWED = ProblemType("method-not-allowed", 405, "Method Not Allowed", "U")
    PAYLOAD_TOO_LARGE = ProblemType("payload-too-large", 413, "Payload Too Large", "U")
    UNSUPPORTED_MEDIA_TYPE = ProblemType(
        "unsupported-media-type", 415, "Unsupported Media Type", "U"
    )
    TOO_MANY_REQUESTS = ProblemType("too-many-requests", 429, "Too Many Requests", "U")
    INTERNAL_SERVER_ERROR = ProblemType("internal-server-error", 500, "Internal Server Error", "U")
    SERVICE_UNAVAILABLE = ProblemType("service-unavailable", 503, "Service Unavailable", "U")

    @classmethod
    def all(cls) -> tuple[ProblemType, ...]:
        return tuple(cls._items())

    @classmethod
    def by_name(cls, name: str) -> ProblemType | None:
        return next((p for p in cls.all() if p.name == name), None)

    @classmethod
    def by_type_uri(cls, uri: str) -> ProblemType | None:
        return next((p for p in cls.all() if p.type_uri == uri), None)


_M, _D, _A, _S = (
    InstanceKind.METADATA,
    InstanceKind.DATA,
    InstanceKind.ATTACHMENT,
    InstanceKind.SUBMISSION,
)


# =================================================================================================
# [U] THE ONE TABLE OF REJECT PROBLEMS (reference §11). Namespace and the instance "metadata" are
# [C]; every name below is [U]. Titles are our German wording: FITKO's exact titles could not be
# retrieved (titles SHOULD be copied, type and instance MUST) — replace them here once known.
# =================================================================================================
class RejectProblems(_Catalog):
    """Problem types a receiver (or the ZD) puts into ``reject-submission``."""

    _item_type = RejectProblemType

    INVALID_EVENT_LOG = RejectProblemType(
        "invalid-event-log", "Event Log ungültig", frozenset({_S}), "U"
    )
    INCORRECT_AUTHENTICATION_TAG = RejectProblemType(
        "incorrect-authentication-tag",
        "Authentication Tag ungültig",
        frozenset({_M, _D, _A}),
        "U",
    )
    ENCRYPTION_ISSUE = RejectProblemType(
        "encryption-issue", "Entschlüsselung fehlgeschlagen", frozenset({_M, _D, _A}), "U"
    )
    SYNTAX_VIOLATION = RejectProblemType(
        "syntax-violation", "Syntax-Fehler", frozenset({_M, _D}), "U"
    )
    UNSUPPORTED_SCHEMA = RejectProblemType(
        "unsupported-schema", "Schema nicht unterstützt", frozenset({_M, _D}), "U"
    )
    SCHEMA_VIOLATION = RejectProblemType(
        "schema-violation", "Schema-Verletzung", frozenset({_M, _D}), "U"
    )
    SERVICE_MISMATCH = RejectProblemType(
        "service-mismatch", "Verwaltungsleistung abweichend", frozenset({_M}), "U"
    )
    ATTACHMENTS_MISMATCH = RejectProblemType(
        "attachments-mismatch", "Anlagen abweichend", frozenset({_M}), "U"
    )
    UNSUPPORTED_REPLY_CHANNEL = RejectProblemType(
        "unsupported-reply-channel", "Rückkanal nicht unterstützt", frozenset({_M}), "U"
    )
    MISSING_DATA = RejectProblemType("missing-data", "Fachdaten fehlen", frozenset({_D}), "U")
    HASH_MISMATCH = RejectProblemType(
        "hash-mismatch", "Prüfsumme abweichend", frozenset({_D, _A}), "U"
    )
    # Issued by the Zustelldienst itself: not fetched/decided within 14 days of submit
    # (reference §3.6). Name and title are ours (server/compat.py).
    SUBMISSION_EXPIRED = RejectProblemType(
        "submission-expired",
        "Einreichung nicht rechtzeitig abgeholt",
        frozenset({_S}),
        "U",
    )
    TECHNICAL_ERROR = RejectProblemType(
        "technical-error",
        "Technischer Fehler",
        frozenset({_S, _M, _D, _A}),
        "U",
        instance_optional=True,
    )

    @classmethod
    def all(cls) -> tuple[RejectProblemType, ...]:
        return tuple(cls._items())

    @classmethod
    def by_name(cls, name: str) -> RejectProblemType | None:
        return next((p for p in cls.all() if p.name == name), None)

    @classmethod
    def by_type_uri(cls, uri: str) -> RejectProblemType | None:
        return next((p for p in cls.all() if p.type_uri == uri), None)


# --- problem objects ----------------------------------------------------------------------------


class Problem(BaseModel):
    """An RFC 7807 problem object; extension members are allowed and preserved.

    Used for ``application/problem+json`` bodies and for the ``problems`` of reject SETs (where
    ``status`` is usually absent). Serialize with :meth:`to_json` (``None`` members omitted).
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    type: str = Field(min_length=1, strict=True)
    title: str = Field(strict=True)
    status: int | None = Field(default=None, ge=100, le=599, strict=True)
    detail: str | None = Field(default=None, strict=True)
    instance: str | None = Field(default=None, strict=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)

    def to_bytes(self) -> bytes:
        """Compact UTF-8 JSON, the body of an ``application/problem+json`` response."""
        return dumps_compact(self.to_json())

    @property
    def extensions(self) -> dict[str, Any]:
        """The extension members (everything beyond the five RFC 7807 members)."""
        return dict(self.__pydantic_extra__ or {})

    def is_type(self, ptype: ProblemType | RejectProblemType) -> bool:
        return self.type == ptype.type_uri


def api_problem(
    ptype: ProblemType, detail: str | None = None, instance: str | None = None, **extra: Any
) -> Problem:
    """A Submission API problem of ``ptype`` (status and title from the catalog)."""
    reserved = {"type", "title", "status", "detail", "instance"} & extra.keys()
    if reserved:
        raise ValueError(f"extension members must not redefine {sorted(reserved)}")
    return Problem(
        type=ptype.type_uri,
        title=ptype.title,
        status=ptype.status,
        detail=detail,
        instance=instance,
        **extra,
    )


def reject_problem(
    ptype: RejectProblemType, instance: str | None, detail: str | None = None
) -> Problem:
    """A reject-submission problem; ``instance`` must be a form allowed for ``ptype``.

    Attachment instances are normalized to ``attachment:<lowercase uuid>``.
    """
    if instance is None:
        if not ptype.instance_optional:
            raise FormatError(f"reject problem {ptype.name!r} needs an instance", field="instance")
        return Problem(type=ptype.type_uri, title=ptype.title, detail=detail)
    kind, attachment_id = parse_instance(instance)
    if kind not in ptype.instance_kinds:
        allowed = ", ".join(sorted(k.value for k in ptype.instance_kinds))
        raise FormatError(
            f"reject problem {ptype.name!r} cannot have instance {instance!r} (allowed: {allowed})",
            field="instance",
            value=instance,
        )
    normalized = instance_attachment(attachment_id) if attachment_id else kind.value
    return Problem(type=ptype.type_uri, title=ptype.title, detail=detail, instance=normalized)
