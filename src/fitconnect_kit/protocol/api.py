"""Submission API v1 request and response bodies as pydantic v2 models.

Conventions of every model here:

* Python attributes are snake_case; the wire names are the exact camelCase aliases
  (``destinationId``, ``announcedAttachments``, ...). Both are accepted on input
  (``populate_by_name``); output always uses the aliases.
* :meth:`ApiModel.to_json` / :meth:`ApiModel.to_bytes` give the wire form (aliases, ``None``
  members omitted, compact JSON). This is the form that is sent — it includes a callback secret.
* Unknown members are ignored on input (clients tolerate extra fields, servers ignore unknown
  request fields); a few open objects (reply channels, contact information, ``/info``) keep them.
* Ids are checked with :mod:`fitconnect_kit.protocol.ids` and normalized to lowercase UUIDs.
  Validation errors carry a pydantic error ``type`` a server can map to a problem type
  (:data:`ERROR_UUID`, :data:`ERROR_DUPLICATE_ATTACHMENT_IDS`, ...); input values are hidden
  from pydantic's messages so secrets never end up in logs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    WithJsonSchema,
    field_serializer,
    field_validator,
)
from pydantic_core import PydanticCustomError

from fitconnect_kit.protocol.errors import FormatError
from fitconnect_kit.protocol.ids import parse_service_identifier, parse_uuid
from fitconnect_kit.protocol.jsonutil import dumps_compact

# =================================================================================================
# [U] UNCONFIRMED CHOICES — the one table of this module. Every entry is a best guess where the
# reference (§3, §4) marks a fact [U]; change it here and nowhere else.
# =================================================================================================
MB: Final = 1_000_000
"""The docs say "500 MB" / "2 GB" without saying MB or MiB; we read decimal units ([U])."""
# [C] "500 MB" per encrypted attachment; MB = 10^6 bytes [U]
LIMIT_MAX_ATTACHMENT_BYTES: Final = 500 * MB
# [C] "2 GB" for all encrypted attachments of a submission/reply; GB = 10^9 bytes [U]
LIMIT_MAX_TOTAL_ATTACHMENT_BYTES: Final = 2_000 * MB
# [C] "files > 200 MB: chunked transfer recommended"; MB = 10^6 bytes [U]
LIMIT_CHUNKED_UPLOAD_RECOMMENDED_BYTES: Final = 200 * MB
LIMIT_MAX_ATTACHMENTS: Final = 100  # [C]
LIMIT_RECOMMENDED_MAX_ATTACHMENTS: Final = 30  # [C] recommendation only
EVENT_LOG_PAGE_MAX: Final = 500  # [C]
EVENT_LOG_PAGE_DEFAULT: Final = 500  # [U] default `limit` of the event log
SUBMISSION_LIST_PAGE_MAX: Final = 500  # [U] (same as the event log / routing API)
SUBMISSION_LIST_PAGE_DEFAULT: Final = 100  # [U] (routing API default)
MIN_JWE_COMPACT_LENGTH: Final = 776  # [C] RSA-OAEP-256 + A256GCM, 4096-bit key, empty payload

UNCONFIRMED_CHOICES: Final[Mapping[str, str]] = {
    "limits.units": "500 MB / 2 GB / 200 MB read as decimal units (10^6, 10^9 bytes), the stricter "
    "reading; MiB would allow 524_288_000 bytes per attachment",
    "limits.page_defaults": "event log default limit 500, submission list default 100, max 500",
    "AnnounceSubmission.callback": "optional sender callback {url, secret} on POST /v1/submissions",
    "AnnounceSubmission.caseId": "optional existing caseId to append a submission to a case",
    "SubmitSubmission.encryptedData": "optional (absent or null when the submission has no data)",
    "SubmissionSummary": "body of S3 (submit) responses and list items: destinationId, "
    "submissionId, caseId",
    "SubmissionList": "envelope {count, offset, totalCount, submissions}",
    "Submission": "R2 fields other than attachments/encryptedMetadata/encryptedData",
    "PublicDestination": "v1 names services/submissionSchemas/regions; region format free text",
    "Destination": "owner view = public view + callback {url} (never the secret), "
    "contactInformation, name",
    "ContactInformation": "members legalName, unit, address, phone, email (all optional, "
    "unknown members kept)",
    "DestinationCreate": "services, encryptionKid?, metadataVersions, replyChannels?, callback?, "
    "contactInformation?, name?, publicKeys? (JWKS)",
    "DestinationUpdate/Patch": "status 'created' may not be set (confirmed for PATCH, applied to "
    "PUT as well)",
    "EventLog": "paging members count/offset/totalCount optional next to eventLog",
    "ApiInfo": "{version: {major, minor, patch}} as the routing API; further members kept",
    "NewEventsCallback": "{type, submissions: [{destinationId, submissionId, caseId}]}",
    "CallbackConfig.url": "http and https accepted by the model; HTTPS-only is the server's policy",
}

# Error types of validation errors raised by this module (``ValidationError.errors()[i]["type"]``).
ERROR_UUID: Final = "uuid_format"
ERROR_UUID_V4: Final = "uuid_v4"
ERROR_DUPLICATE_ATTACHMENT_IDS: Final = "duplicate_attachment_ids"
ERROR_SERVICE_IDENTIFIER: Final = "service_identifier"
ERROR_CALLBACK_URL: Final = "callback_url"
ERROR_STATUS_NOT_ALLOWED: Final = "status_not_allowed"

SUBMISSION_SCHEMA_MIME_TYPES: Final = ("application/json", "application/xml")


# --- field types --------------------------------------------------------------------------------


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _uuid(value: object) -> str:
    try:
        return parse_uuid(value)
    except FormatError:
        raise PydanticCustomError(
            ERROR_UUID, "must be a UUID, got {value}", {"value": _short(value)}
        ) from None


def _uuid_v4(value: object) -> str:
    canonical = _uuid(value)
    try:
        return parse_uuid(canonical, require_v4=True)
    except FormatError:
        raise PydanticCustomError(
            ERROR_UUID_V4, "must be a random UUIDv4, got {value}", {"value": _short(value)}
        ) from None


def _service_identifier(value: object) -> str:
    try:
        return parse_service_identifier(value)
    except FormatError:
        raise PydanticCustomError(
            ERROR_SERVICE_IDENTIFIER,
            "must be a Leistungsschlüssel URN like 'urn:de:fim:leika:leistung:99…' or another "
            "URN, got {value}",
            {"value": _short(value)},
        ) from None


def _callback_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.hostname or parts.fragment:
        raise PydanticCustomError(
            ERROR_CALLBACK_URL, "must be an absolute http(s) URL without fragment", {}
        )
    return value


_UUID_SCHEMA = WithJsonSchema({"type": "string", "format": "uuid"})
Uuid = Annotated[str, BeforeValidator(_uuid), _UUID_SCHEMA]
"""A UUID, normalized to lowercase hyphenated form."""
UuidV4 = Annotated[str, BeforeValidator(_uuid_v4), _UUID_SCHEMA]
"""A random UUIDv4 (ids chosen by the sender)."""
ServiceIdentifier = Annotated[
    str, BeforeValidator(_service_identifier), WithJsonSchema({"type": "string"})
]
CallbackUrl = Annotated[str, AfterValidator(_callback_url)]
NonEmptyStr = Annotated[str, Field(min_length=1)]


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming every failing member by its wire path, e.g. ``announcedAttachments[1]: …``.

    Input values are not repeated (they may be secrets); our own messages name bad ids.
    """
    parts: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        path = ""
        for item in error["loc"]:
            path += f"[{item}]" if isinstance(item, int) else (f".{item}" if path else str(item))
        parts.append(f"{path or '$'}: {error['msg']}")
    return "; ".join(parts)


def validation_error_types(exc: ValidationError) -> set[str]:
    """The set of pydantic error types in ``exc`` (to map them to problem types)."""
    return {str(error["type"]) for error in exc.errors(include_input=False, include_url=False)}


# --- base ---------------------------------------------------------------------------------------


class ApiModel(BaseModel):
    """Base of all Submission API bodies: camelCase aliases, unknown members ignored."""

    model_config = ConfigDict(
        populate_by_name=True,
        serialize_by_alias=True,
        extra="ignore",
        hide_input_in_errors=True,
    )

    def to_json(self) -> dict[str, Any]:
        """The wire form as a JSON-compatible dict (aliases, ``None`` members omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)

    def to_bytes(self) -> bytes:
        """The wire form as compact UTF-8 JSON — exactly what is sent."""
        return dumps_compact(self.to_json())


class _OpenApiModel(ApiModel):
    """An object whose unknown members are kept (and sent back out)."""

    model_config = ConfigDict(extra="allow")


# --- enums --------------------------------------------------------------------------------------


class SubmissionStatus(StrEnum):
    """Status of a submission, derived from its event log (see :func:`events.derive_state`)."""

    INCOMPLETE = "incomplete"
    SUBMITTED = "submitted"
    NOTIFIED = "notified"
    FORWARDED = "forwarded"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    DELETED = "deleted"


class DestinationStatus(StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    INACTIVE = "inactive"
    DECOMMISSIONED = "decommissioned"


# --- submissions (sender) -----------------------------------------------------------------------


class ServiceType(ApiModel):
    """``serviceType`` of a submission: a name and a LeiKa (or other) URN."""

    name: NonEmptyStr
    identifier: ServiceIdentifier


class CallbackConfig(ApiModel):
    """A callback ``{url, secret}``. The secret is write-only: hidden in reprs and error
    messages, sent only in the wire form (:meth:`to_json`)."""

    url: CallbackUrl
    secret: SecretStr = Field(min_length=1)

    @field_serializer("secret", when_used="json")
    def _reveal_secret_on_the_wire(self, secret: SecretStr) -> str:
        return secret.get_secret_value()

    @property
    def is_https(self) -> bool:
        return urlsplit(self.url).scheme == "https"


class CallbackInfo(ApiModel):
    """The readable part of a configured callback (owner view): the URL only."""

    url: str


class AnnounceSubmission(ApiModel):
    """Body of ``POST /v1/submissions``."""

    destination_id: Uuid = Field(alias="destinationId")
    announced_attachments: list[UuidV4] = Field(alias="announcedAttachments")
    service_type: ServiceType = Field(alias="serviceType")
    callback: CallbackConfig | None = None
    case_id: Uuid | None = Field(default=None, alias="caseId")

    @field_validator("announced_attachments")
    @classmethod
    def _unique_attachment_ids(cls, ids: list[str]) -> list[str]:
        seen: set[str] = set()
        for attachment_id in ids:
            if attachment_id in seen:
                raise PydanticCustomError(
                    ERROR_DUPLICATE_ATTACHMENT_IDS,
                    "attachment id {id} is announced more than once",
                    {"id": attachment_id},
                )
            seen.add(attachment_id)
        return ids


class SubmissionSummary(ApiModel):
    """``{destinationId, submissionId, caseId}`` — list items, submit responses, callbacks."""

    destination_id: Uuid = Field(alias="destinationId")
    submission_id: Uuid = Field(alias="submissionId")
    case_id: Uuid = Field(alias="caseId")


class SubmissionCreated(SubmissionSummary):
    """Response of ``POST /v1/submissions`` (201)."""


class SubmitSubmission(ApiModel):
    """Body of ``PUT /v1/submissions/{submissionId}``: the JWE compact strings.

    The JWE syntax itself is checked by :mod:`fitconnect_kit.protocol.jose.jwe` (a server answers
    ``invalid-jwe``, not ``invalid-request-body``), so only "non-empty string" is required here.
    """

    encrypted_metadata: NonEmptyStr = Field(alias="encryptedMetadata")
    encrypted_data: NonEmptyStr | None = Field(default=None, alias="encryptedData")


class Submission(ApiModel):
    """Response of ``GET /v1/submissions/{submissionId}`` (subscriber)."""

    destination_id: Uuid = Field(alias="destinationId")
    submission_id: Uuid = Field(alias="submissionId")
    case_id: Uuid = Field(alias="caseId")
    service_type: ServiceType = Field(alias="serviceType")
    attachments: list[Uuid] = Field(default_factory=list)
    encrypted_metadata: str | None = Field(default=None, alias="encryptedMetadata")
    encrypted_data: str | None = Field(default=None, alias="encryptedData")


class SubmissionList(ApiModel):
    """Response of ``GET /v1/submissions`` (submissions waiting for pickup)."""

    count: int = Field(ge=0)
    offset: int = Field(ge=0)
    total_count: int = Field(ge=0, alias="totalCount")
    submissions: list[SubmissionSummary] = Field(default_factory=list)


class EventLog(ApiModel):
    """Response of ``GET /v1/cases/{caseId}/events``: SETs in compact serialization."""

    event_log: list[str] = Field(alias="eventLog")
    count: int | None = Field(default=None, ge=0)
    offset: int | None = Field(default=None, ge=0)
    total_count: int | None = Field(default=None, ge=0, alias="totalCount")


# --- destinations -------------------------------------------------------------------------------


class SubmissionSchema(ApiModel):
    schema_uri: NonEmptyStr = Field(alias="schemaUri")
    mime_type: NonEmptyStr = Field(alias="mimeType")


class ReplyChannel(_OpenApiModel):
    """One reply channel's settings (open object)."""


class EMailReplyChannel(ReplyChannel):
    use_pgp: bool | None = Field(default=None, alias="usePgp")


class ReplyChannels(_OpenApiModel):
    """Reply channels keyed by channel name; unknown channels are kept."""

    e_mail: EMailReplyChannel | None = Field(default=None, alias="eMail")
    de_mail: ReplyChannel | None = Field(default=None, alias="deMail")
    fink: ReplyChannel | None = None
    elster: ReplyChannel | None = None
    fit_connect: ReplyChannel | None = Field(default=None, alias="fitConnect")

    def channel_names(self) -> list[str]:
        """Wire names of the configured channels, known ones first."""
        return list(self.to_json())


class DestinationService(ApiModel):
    identifier: ServiceIdentifier
    submission_schemas: list[SubmissionSchema] = Field(
        default_factory=list, alias="submissionSchemas"
    )
    regions: list[str] = Field(default_factory=list)
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")


class ContactInformation(_OpenApiModel):
    legal_name: str | None = Field(default=None, alias="legalName")
    unit: str | None = None
    address: str | None = None
    phone: str | None = None
    email: str | None = None


class PublicDestination(ApiModel):
    """Response of ``GET /v1/destinations/{destinationId}`` for senders."""

    destination_id: Uuid = Field(alias="destinationId")
    status: DestinationStatus
    services: list[DestinationService] = Field(default_factory=list)
    encryption_kid: NonEmptyStr = Field(alias="encryptionKid")
    metadata_versions: list[str] = Field(default_factory=list, alias="metadataVersions")
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")

    def service(self, identifier: str) -> DestinationService | None:
        """The offered service with this identifier (bare Leistungsschlüssel accepted)."""
        try:
            wanted = parse_service_identifier(identifier)
        except FormatError:
            return None
        return next((s for s in self.services if s.identifier == wanted), None)


class Destination(PublicDestination):
    """Owner view of a destination (management API): never contains the callback secret."""

    callback: CallbackInfo | None = None
    contact_information: ContactInformation | None = Field(default=None, alias="contactInformation")
    name: str | None = None


def _not_created(status: DestinationStatus | None) -> DestinationStatus | None:
    if status is DestinationStatus.CREATED:
        raise PydanticCustomError(
            ERROR_STATUS_NOT_ALLOWED, "a destination's status cannot be set to 'created'", {}
        )
    return status


class DestinationCreate(ApiModel):
    """Body of ``POST /v1/destinations``."""

    services: list[DestinationService] = Field(min_length=1)
    encryption_kid: str | None = Field(default=None, alias="encryptionKid")
    metadata_versions: list[NonEmptyStr] = Field(min_length=1, alias="metadataVersions")
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")
    callback: CallbackConfig | None = None
    contact_information: ContactInformation | None = Field(default=None, alias="contactInformation")
    name: str | None = None
    public_keys: dict[str, Any] | None = Field(default=None, alias="publicKeys")


class DestinationUpdate(ApiModel):
    """Body of ``PUT /v1/destinations/{destinationId}`` (full replacement)."""

    status: Annotated[DestinationStatus, AfterValidator(_not_created)]
    services: list[DestinationService] = Field(min_length=1)
    encryption_kid: NonEmptyStr = Field(alias="encryptionKid")
    metadata_versions: list[NonEmptyStr] = Field(min_length=1, alias="metadataVersions")
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")
    callback: CallbackConfig | None = None
    contact_information: ContactInformation | None = Field(default=None, alias="contactInformation")
    name: str | None = None


class DestinationPatch(ApiModel):
    """Body of ``PATCH /v1/destinations/{destinationId}``: only the members that are sent."""

    status: Annotated[DestinationStatus | None, AfterValidator(_not_created)] = None
    services: list[DestinationService] | None = Field(default=None, min_length=1)
    encryption_kid: NonEmptyStr | None = Field(default=None, alias="encryptionKid")
    metadata_versions: list[NonEmptyStr] | None = Field(
        default=None, min_length=1, alias="metadataVersions"
    )
    reply_channels: ReplyChannels | None = Field(default=None, alias="replyChannels")
    callback: CallbackConfig | None = None
    contact_information: ContactInformation | None = Field(default=None, alias="contactInformation")
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude_unset=True)

    def changed_fields(self) -> set[str]:
        """Python names of the members present in the patch."""
        return {name for name in self.model_fields_set if getattr(self, name) is not None}


# --- technical ----------------------------------------------------------------------------------


class ApiVersion(ApiModel):
    major: int = Field(ge=0)
    minor: int = Field(ge=0)
    patch: int = Field(ge=0)

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"


class ApiInfo(_OpenApiModel):
    """Response of ``GET /v1/info``."""

    version: ApiVersion


class TokenResponse(BaseModel):
    """OAuth 2.0 token response (RFC 6749 §5.1, snake_case on the wire)."""

    model_config = ConfigDict(extra="ignore", hide_input_in_errors=True)

    access_token: str = Field(min_length=1, repr=False)
    token_type: str
    expires_in: int = Field(ge=0)
    scope: str | None = None

    @property
    def scopes(self) -> list[str]:
        return self.scope.split() if self.scope else []

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class OAuthError(BaseModel):
    """OAuth 2.0 error response (RFC 6749 §5.2)."""

    model_config = ConfigDict(extra="ignore")

    error: str
    error_description: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# --- callback payloads ---------------------------------------------------------------------------


class CallbackPayload(_OpenApiModel):
    """Any callback body: ``type`` plus members that depend on it (kept)."""

    type: NonEmptyStr


class NewSubmissionsCallback(ApiModel):
    """Body of a NEW_SUBMISSIONS callback to a destination.

    ``submissionIds`` is deprecated but still sent (and may be all an old sender sends).
    """

    type: NonEmptyStr
    submission_ids: list[Uuid] = Field(default_factory=list, alias="submissionIds")
    submissions: list[SubmissionSummary] = Field(default_factory=list)

    def all_submission_ids(self) -> list[str]:
        """Submission ids from ``submissions`` and the deprecated list, without duplicates."""
        ids = [s.submission_id for s in self.submissions] + self.submission_ids
        return list(dict.fromkeys(ids))


class NewEventsCallback(ApiModel):
    """Body of a NEW_EVENTS callback ([U] shape)."""

    type: NonEmptyStr
    submissions: list[SubmissionSummary] = Field(default_factory=list)


def summaries(items: Sequence[SubmissionSummary | Mapping[str, Any]]) -> list[SubmissionSummary]:
    """Coerce mappings (wire or Python names) to :class:`SubmissionSummary` objects."""
    return [
        item if isinstance(item, SubmissionSummary) else SubmissionSummary.model_validate(item)
        for item in items
    ]
