"""Submission metadata 1.x: validator, reading models and builder.

The metadata (``encryptedMetadata`` once decrypted) describes a submission: hashes and schema of
the Fachdaten, the attachments, the service, payment, identification reports and the reply
channel. Receivers must validate it against the version named in ``$schema`` and reject
unsupported versions (reference §6, §11).

Validation is our own Python code (the official schema is not shipped with the package). For
metadata **1.0.0** it has exactly the semantics of the official JSON Schema (draft 2020-12):
types, ``required``, ``enum``, ``pattern``, ``minLength``/``maxLength`` (code points),
``minItems``, ``minProperties``/``maxProperties``, ``minimum``/``multipleOf`` and the ``$ref``'d
signature object; there is no ``additionalProperties: false`` anywhere, so unknown members are
tolerated at every level (real senders add ``x-…`` extension members). Later 1.x versions are
validated as 1.0.0 plus the additions in the [U] block below.

Rules that JSON Schema leaves open are decided as follows:

Patterns
    ECMA-262 semantics, as JSON Schema prescribes: ``\\d`` is ``[0-9]``, ``\\w`` is
    ``[A-Za-z0-9_]`` (``re.ASCII``) and ``$`` matches only at the very end of the string.
    Python's ``re`` without these adjustments (what the ``jsonschema`` package uses) differs: it
    lets ``\\d`` match any Unicode digit (``"١٢٣٤٥٦٧٨٩٠"`` as an ELSTER ``accountId``), ``\\w``
    any Unicode letter, and ``$`` also before a final ``"\\n"``.
``multipleOf`` / ``minimum``
    Exact decimal arithmetic: a number is taken as the decimal it is written as (a float as its
    shortest repr, which is the JSON literal for every value a float can carry), so ``0.07`` is a
    multiple of ``0.01`` (binary floating point division would say it is not).
Formats (asserted, not just annotations — receivers must check them)
    ``uuid``
        RFC 9562 hex-and-hyphens form ``8-4-4-4-12``, hex digits of either case, any version;
        nothing else (no braces, ``urn:uuid:``, whitespace or missing hyphens).
    ``date``
        RFC 3339 ``full-date`` ``YYYY-MM-DD`` that exists in the proleptic Gregorian calendar
        (year 0001–9999, day valid for the month incl. leap years).
    ``date-time``
        RFC 3339 ``date-time``: ``full-date "T" HH:MM:SS[.frac] ("Z" / ±HH:MM)``; ``T`` and ``Z``
        may be lower case (RFC 3339 §5.6 note); hours 00–23, offsets up to ±23:59; leap second
        ``60`` is not accepted; no space instead of ``T``.
    ``uri``
        RFC 3986 ``URI`` (absolute: a scheme is required; a fragment is allowed), ASCII only,
        percent-encodings must have two hex digits; an IP-literal host must be a valid IPv6
        address (RFC 4291 text form, no zone id) or an ``IPvFuture`` literal.
    ``email``
        RFC 5321 ``Mailbox`` ABNF (the JSON Schema definition): ``Local-part "@" ( Domain /
        address-literal )`` with a dot-string or quoted-string local part, LDH domain labels
        (single-label domains allowed) and syntactic address literals; ASCII only (that is
        ``idn-email``), no length limits, no DNS lookups.

Violation messages name the rule and the JSON path, never the offending value: metadata is
decrypted plaintext and violations may end up in a ``reject-submission`` problem that the
Zustelldienst can read. Builder errors (the caller's own input) do name the bad value.
"""

from __future__ import annotations

import copy
import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from fractions import Fraction
from functools import cache
from hashlib import sha512
from typing import Annotated, Any, Final, Self, TypeAlias

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, ValidationError

from fitconnect_kit.protocol import ids
from fitconnect_kit.protocol.errors import FormatError, MetadataError, Violation
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object

__all__ = [
    "DEFAULT_METADATA_VERSION",
    "FIT_CONNECT_REPLY_CHANNEL_SINCE",
    "KNOWN_METADATA_VERSIONS",
    "UNCONFIRMED_ASSUMPTIONS",
    "AdditionalReferenceInfo",
    "AttachmentInfo",
    "AttachmentPurpose",
    "AuthenticationInformation",
    "ContentStructure",
    "DataInfo",
    "DeMailReplyChannel",
    "EMailReplyChannel",
    "ElsterReplyChannel",
    "FinkReplyChannel",
    "FitConnectReplyChannel",
    "Hash",
    "Metadata",
    "MetadataBuilder",
    "MimeType",
    "PaymentInformation",
    "PaymentMethod",
    "PaymentStatus",
    "PublicServiceType",
    "ReplyChannel",
    "ReplyChannelKind",
    "Signature",
    "SignatureFormat",
    "SubmissionSchema",
    "check_metadata",
    "is_supported_version",
    "metadata_version",
    "parse_metadata",
    "schema_uri",
    "sha512_hex",
    "supports_fitconnect_reply_channel",
    "validate_metadata",
    "version_from_schema_uri",
]

# =================================================================================================
# [U] UNCONFIRMED ASSUMPTIONS — every guess about metadata 1.1.0–1.5.0 lives in this block.
# Reference §6.2/§14.5: the 1.1.0+ schemas could not be read; only the items below are known or
# assumed. Listed in docs/compatibility.md. Everything not listed is validated as in 1.0.0.
# =================================================================================================

#: First metadata version that has ``replyChannel.fitConnect``. [U] — which minor introduced it is
#: unknown; we assume the earliest possible one (1.1.0), the most tolerant choice for receivers.
FIT_CONNECT_REPLY_CHANNEL_SINCE: Final = "1.1.0"

#: Wire name of the FIT-Connect reply channel inside ``replyChannel``. [C] name, shape [U].
_FIT_CONNECT_CHANNEL: Final = "fitConnect"
#: Member listing the process standards (URIs, at least one) the sender can handle. [U]
_FC_PROCESS_STANDARDS: Final = "processStandards"
#: Member carrying the public RSA JWK the receiver encrypts its reply with (optional). [U]
_FC_ENCRYPTION_PUBLIC_KEY: Final = "encryptionPublicKey"
#: Required members of the fitConnect channel. [U]
_FC_REQUIRED: Final = (_FC_PROCESS_STANDARDS,)
#: Rules for ``encryptionPublicKey``: a JSON object with ``kty`` ``"RSA"`` and string ``n``/``e``;
#: further JWK members tolerated (full key rules are ``keys.py``'s business). [U]
_FC_JWK_REQUIRED: Final = ("kty", "n", "e")

UNCONFIRMED_ASSUMPTIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "replyChannel.fitConnect available since",
        f"metadata {FIT_CONNECT_REPLY_CHANNEL_SINCE} (earliest possible minor)",
    ),
    (
        "replyChannel.fitConnect members",
        f"{{{_FC_PROCESS_STANDARDS!r}: [uri, ...] (minItems 1, required), "
        f"{_FC_ENCRYPTION_PUBLIC_KEY!r}: RSA JWK object (optional)}}",
    ),
    (
        f"replyChannel.fitConnect.{_FC_ENCRYPTION_PUBLIC_KEY}",
        "object with kty 'RSA' and string n, e; other JWK members tolerated",
    ),
    (
        "metadata 1.4.0",
        "exists and is shaped like its neighbours (reference §0.1 lists it as [U])",
    ),
    (
        "metadata 1.1.0–1.5.0 otherwise",
        "= 1.0.0 + optional $schema (pattern of §6.2, [C]); unknown members tolerated; "
        "publicServiceType deprecated but accepted ([C])",
    ),
)
# ================================================ end of [U] block ===============================

KNOWN_METADATA_VERSIONS: Final = ("1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0")
DEFAULT_METADATA_VERSION: Final = "1.0.0"

_SCHEMA_URI_TEMPLATE: Final = "https://schema.fitko.de/fit-connect/metadata/{}/metadata.schema.json"
_SCHEMA_URI_RE: Final = re.compile(
    r"https://schema\.fitko\.de/fit-connect/metadata/(\d+\.\d+\.\d+)/metadata\.schema\.json",
    re.ASCII,
)
# [C] 1.1.0+: the optional top-level ``$schema`` member must match this pattern.
_SCHEMA_MEMBER_PATTERN: Final = (
    r"^https://schema\.fitko\.de/fit-connect/metadata/1\.\d+\.\d+/metadata\.schema\.json$"
)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def schema_uri(version: str = DEFAULT_METADATA_VERSION) -> str:
    """The ``$schema`` URI of a known metadata version."""
    _require_known_version(version)
    return _SCHEMA_URI_TEMPLATE.format(version)


def version_from_schema_uri(uri: object) -> str | None:
    """The version ``x.y.z`` named by a metadata schema URI (known or not), else ``None``."""
    if not isinstance(uri, str):
        return None
    match = _SCHEMA_URI_RE.fullmatch(uri)
    return match.group(1) if match else None


def is_supported_version(version: str, supported: Iterable[str] = KNOWN_METADATA_VERSIONS) -> bool:
    """Whether ``version`` is in ``supported`` (default: the versions this kit can validate).

    A subscriber passes its destination's ``metadataVersions`` and maps ``False`` to an
    ``unsupported-schema`` rejection.
    """
    return version in KNOWN_METADATA_VERSIONS and version in set(supported)


def supports_fitconnect_reply_channel(version: str) -> bool:
    """Whether metadata ``version`` has ``replyChannel.fitConnect`` ([U], see the block above)."""
    _require_known_version(version)
    return _version_key(version) >= _version_key(FIT_CONNECT_REPLY_CHANNEL_SINCE)


def _require_known_version(version: object) -> str:
    if not isinstance(version, str) or version not in KNOWN_METADATA_VERSIONS:
        raise FormatError(
            f"metadata version must be one of {', '.join(KNOWN_METADATA_VERSIONS)}, "
            f"got {_show(version)}",
            field="version",
            value=version,
        )
    return version


def _schema_member_violation(doc: Mapping[str, Any]) -> tuple[str | None, Violation | None]:
    """Version named by ``$schema`` (default when absent) or the violation explaining why not."""
    if "$schema" not in doc:
        return DEFAULT_METADATA_VERSION, None
    uri = doc["$schema"]
    if not isinstance(uri, str):
        return None, Violation("$.$schema", f"must be a string, got {_json_type(uri)}")
    version = version_from_schema_uri(uri)
    if version is None:
        return None, Violation(
            "$.$schema", "is not a FIT-Connect metadata schema URI (unsupported schema)"
        )
    if version not in KNOWN_METADATA_VERSIONS:
        return None, Violation(
            "$.$schema",
            f"names metadata version {version}, which is not supported "
            f"(supported: {', '.join(KNOWN_METADATA_VERSIONS)})",
        )
    return version, None


def metadata_version(doc: Any) -> str:
    """The metadata version of ``doc``: from ``$schema``, 1.0.0 when ``$schema`` is absent.

    Raises :class:`MetadataError` (path ``$.$schema``) for an unknown or malformed ``$schema``.
    """
    if not isinstance(doc, Mapping):
        raise MetadataError([Violation("$", f"must be an object, got {_json_type(doc)}")])
    version, violation = _schema_member_violation(doc)
    if violation is not None:
        raise MetadataError([violation])
    assert version is not None
    return version


# --- formats ------------------------------------------------------------------------------------

_UUID_RE: Final = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", re.ASCII
)
_DATE_RE: Final = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_DATE_TIME_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt]([01]\d|2[0-3]):([0-5]\d):([0-5]\d)(\.\d+)?"
    r"([Zz]|[+-](?:[01]\d|2[0-3]):[0-5]\d)",
    re.ASCII,
)

# RFC 3986 URI, built from the ABNF of appendix A.
_PCT = r"%[0-9A-Fa-f]{2}"
_PCHAR = rf"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@]|{_PCT})"
_SEGMENT_NZ = rf"{_PCHAR}+"
_PATH_TAIL = rf"(?:/{_PCHAR}*)*"
_QUERY = rf"(?:{_PCHAR}|[/?])*"
_URI_RE: Final = re.compile(
    r"[A-Za-z][A-Za-z0-9+\-.]*:"
    rf"(?://(?P<authority>[^/?#]*){_PATH_TAIL}"  # "//" authority path-abempty
    rf"|/(?:{_SEGMENT_NZ}{_PATH_TAIL})?"  # path-absolute
    rf"|{_SEGMENT_NZ}{_PATH_TAIL}"  # path-rootless
    r"|)"  # path-empty
    rf"(?:\?{_QUERY})?(?:\#{_QUERY})?",
    re.ASCII,
)
_AUTHORITY_RE: Final = re.compile(
    rf"(?:(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|{_PCT})*@)?"  # userinfo "@"
    rf"(?:\[(?P<literal>[^\]]*)\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|{_PCT})*)"  # host
    r"(?::[0-9]*)?",  # ":" port
    re.ASCII,
)
_IPV_FUTURE_RE: Final = re.compile(r"[vV][0-9A-Fa-f]+\.[A-Za-z0-9\-._~!$&'()*+,;=:]+", re.ASCII)

# RFC 5321 §4.1.2 Mailbox, §4.1.3 address literals (syntax only).
_ATOM = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_LDH_STR = r"[A-Za-z0-9-]*[A-Za-z0-9]"
_SUB_DOMAIN = rf"[A-Za-z0-9](?:{_LDH_STR})?"
_SNUM = r"(?:25[0-5]|2[0-4][0-9]|[01][0-9]{2}|[0-9]{1,2})"
_EMAIL_RE: Final = re.compile(
    rf"(?:{_ATOM}(?:\.{_ATOM})*"  # Dot-string
    r'|"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*")'  # Quoted-string
    r"@"
    rf"(?:{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*"  # Domain
    rf"|\[(?:{_SNUM}(?:\.{_SNUM}){{3}}"  # IPv4-address-literal
    r"|" + _LDH_STR + r":[\x21-\x5a\x5e-\x7e]+)\])",  # General-/IPv6-address-literal
    re.ASCII,
)


def _is_uuid(value: str) -> bool:
    return _UUID_RE.fullmatch(value) is not None


def _is_date(value: str) -> bool:
    match = _DATE_RE.fullmatch(value)
    return match is not None and _valid_ymd(*match.group(1, 2, 3))


def _valid_ymd(year: str, month: str, day: str) -> bool:
    try:
        date(int(year), int(month), int(day))
    except ValueError:
        return False
    return True


def _is_date_time(value: str) -> bool:
    match = _DATE_TIME_RE.fullmatch(value)
    return match is not None and _valid_ymd(*match.group(1, 2, 3))


def _is_uri(value: str) -> bool:
    match = _URI_RE.fullmatch(value)
    if match is None:
        return False
    authority = match.group("authority")
    if authority is None:
        return True
    auth = _AUTHORITY_RE.fullmatch(authority)
    if auth is None:
        return False
    literal = auth.group("literal")
    if literal is None:
        return True
    if _IPV_FUTURE_RE.fullmatch(literal):
        return True
    if "%" in literal or not literal.isascii():
        return False
    try:
        ipaddress.IPv6Address(literal)
    except ValueError:
        return False
    return True


def _is_email(value: str) -> bool:
    return _EMAIL_RE.fullmatch(value) is not None


_FORMATS: Final = {
    "uuid": (_is_uuid, "a UUID (8-4-4-4-12 hex digits)"),
    "date": (_is_date, "an RFC 3339 date (YYYY-MM-DD)"),
    "date-time": (_is_date_time, "an RFC 3339 date-time (e.g. 2024-05-04T12:00:00Z)"),
    "uri": (_is_uri, "an absolute URI (RFC 3986)"),
    "email": (_is_email, "an e-mail address (RFC 5321 Mailbox)"),
}


# --- the rule tree ------------------------------------------------------------------------------


def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """Compile an ECMA-262 pattern of the schema for Python with ECMA semantics.

    ``re.ASCII`` gives ECMA's ASCII-only ``\\d``/``\\w``; an unescaped ``$`` outside a character
    class becomes ``\\Z`` (end of input only). The schema's patterns use no other construct whose
    meaning differs between the two dialects.
    """
    out: list[str] = []
    in_class = escaped = False
    for char in pattern:
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "$":
            out.append(r"\Z")
            continue
        out.append(char)
    return re.compile("".join(out), re.ASCII)


@dataclass(frozen=True)
class _Str:
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    min_length: int | None = None
    max_length: int | None = None
    format: str | None = None
    regex: re.Pattern[str] | None = field(default=None, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.pattern is not None:
            object.__setattr__(self, "regex", _ecma_regex(self.pattern))


@dataclass(frozen=True)
class _Num:
    minimum: Decimal | None = None
    multiple_of: Decimal | None = None


@dataclass(frozen=True)
class _Bool:
    pass


@dataclass(frozen=True)
class _Arr:
    items: _Node
    min_items: int | None = None


@dataclass(frozen=True)
class _Obj:
    properties: Mapping[str, _Node]
    required: tuple[str, ...] = ()
    min_properties: int | None = None
    max_properties: int | None = None


_Node: TypeAlias = _Str | _Num | _Bool | _Arr | _Obj

_HEX_SHA512 = "^[a-f0-9]{128}$"
_MIME_TYPE_PATTERN = r"^[-\w.]+/[-\w.+]+$"
_SERVICE_URN_PATTERN = r"^urn:[a-z0-9][a-z0-9-]{0,31}:[a-z0-9()+,.:=@;$_!*'%/?#-]+$"
_SEMVER_PATTERN = r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$"
_BASE64URL_PATTERN = r"^[a-zA-Z0-9_\-.]+$"
_PAYMENT_ID_PATTERN = r"^[\w\d-]+$"
_PGP_PREFIX = "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n"
_FINK_PATTERN = r"^[-._a-z0-9~/]*$"
_ELSTER_ACCOUNT_PATTERN = r"^\d{10}$"
_EIDAS_PROFILES = tuple(
    f"http://uri.etsi.org/ades/191x2/level/baseline/{level}#"
    for level in ("B-B", "B-T", "B-LT", "B-LTA")
)

_HASH_RULE = _Obj(
    {"type": _Str(enum=("sha512",)), "content": _Str(pattern=_HEX_SHA512)},
    required=("type", "content"),
)
_SIGNATURE_RULE = _Obj(
    {
        "signatureFormat": _Str(enum=("cms", "xml", "pdf", "asic", "json")),
        "eidasAdesProfile": _Str(enum=_EIDAS_PROFILES),
        "detachedSignature": _Bool(),
        "content": _Str(pattern="^[a-zA-Z0-9+/=]+|[a-zA-Z0-9_-]+$"),
    },
    required=("signatureFormat", "detachedSignature"),
)
_DATA_RULE = _Obj(
    {
        "signature": _SIGNATURE_RULE,
        "hash": _HASH_RULE,
        "submissionSchema": _Obj(
            {
                "schemaUri": _Str(format="uri"),
                "mimeType": _Str(enum=("application/json", "application/xml")),
            },
            required=("schemaUri", "mimeType"),
        ),
    },
    required=("hash", "submissionSchema"),
)
_ATTACHMENT_ID_RULE = _Str(format="uuid", min_length=32, max_length=36)
_ATTACHMENT_RULE = _Obj(
    {
        "hash": _HASH_RULE,
        "signature": _SIGNATURE_RULE,
        "purpose": _Str(enum=("form", "attachment", "report")),
        "filename": _Str(),
        "description": _Str(),
        "mimeType": _Str(pattern=_MIME_TYPE_PATTERN),
        "attachmentId": _ATTACHMENT_ID_RULE,
    },
    required=("hash", "purpose", "mimeType", "attachmentId"),
)
_SERVICE_IDENTIFIER_RULE = _Str(min_length=7, max_length=255, pattern=_SERVICE_URN_PATTERN)
_AUTH_INFO_ITEM_RULE = _Obj(
    {
        "type": _Str(enum=("identificationReport",)),
        "version": _Str(pattern=_SEMVER_PATTERN),
        "content": _Str(pattern=_BASE64URL_PATTERN),
    },
    required=("type", "version", "content"),
)
_PAYMENT_ID_RULE = _Str(min_length=1, max_length=36, pattern=_PAYMENT_ID_PATTERN)
_URI_RULE = _Str(format="uri")
_PAYMENT_RULE = _Obj(
    {
        "transactionUrl": _Str(format="uri", min_length=1),
        "transactionId": _PAYMENT_ID_RULE,
        "transactionReference": _Str(),
        "transactionTimestamp": _Str(format="date-time"),
        "paymentMethod": _Str(
            enum=("GIROPAY", "PAYDIRECT", "CREDITCARD", "PAYPAL", "INVOICE", "OTHER")
        ),
        "paymentMethodDetail": _PAYMENT_ID_RULE,
        "status": _Str(enum=("INITIAL", "BOOKED", "FAILED", "CANCELED")),
        "grossAmount": _Num(minimum=Decimal("0.01"), multiple_of=Decimal("0.01")),
    },
    required=("transactionReference", "transactionId", "paymentMethod", "status"),
)
_EMAIL_RULE = _Str(format="email")
_PGP_RULE = _Str(pattern=r"^-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n")
_FINK_REF_RULE = _Str(max_length=150, pattern=_FINK_PATTERN)
_ELSTER_ACCOUNT_RULE = _Str(pattern=_ELSTER_ACCOUNT_PATTERN)
_GESCHAEFTSZEICHEN_RULE = _Str(max_length=10)
_REPLY_CHANNELS_1_0: Mapping[str, _Node] = {
    "eMail": _Obj({"address": _EMAIL_RULE, "pgpPublicKey": _PGP_RULE}, required=("address",)),
    "deMail": _Obj({"address": _EMAIL_RULE}, required=("address",)),
    "fink": _Obj(
        {"finkPostfachRef": _FINK_REF_RULE, "host": _URI_RULE}, required=("finkPostfachRef",)
    ),
    "elster": _Obj(
        {
            "accountId": _ELSTER_ACCOUNT_RULE,
            "lieferTicket": _Str(),
            "geschaeftszeichen": _GESCHAEFTSZEICHEN_RULE,
        },
        required=("accountId",),
    ),
}
# [U] shape of replyChannel.fitConnect (see the block at the top).
_FIT_CONNECT_CHANNEL_RULE = _Obj(
    {
        _FC_PROCESS_STANDARDS: _Arr(_URI_RULE, min_items=1),
        _FC_ENCRYPTION_PUBLIC_KEY: _Obj(
            {"kty": _Str(enum=("RSA",)), "n": _Str(), "e": _Str()}, required=_FC_JWK_REQUIRED
        ),
    },
    required=_FC_REQUIRED,
)
_REFERENCE_RULE = _Obj({"senderReference": _Str(), "applicationDate": _Str(format="date")})


def _metadata_rule_1_0_0(reply_channels: Mapping[str, _Node]) -> dict[str, _Node]:
    return {
        "paymentInformation": _PAYMENT_RULE,
        "publicServiceType": _Obj(
            {"name": _Str(), "description": _Str(), "identifier": _SERVICE_IDENTIFIER_RULE},
            required=("identifier",),
        ),
        "contentStructure": _Obj(
            {"data": _DATA_RULE, "attachments": _Arr(_ATTACHMENT_RULE)},
            required=("attachments",),
        ),
        "authenticationInformation": _Arr(_AUTH_INFO_ITEM_RULE, min_items=1),
        "replyChannel": _Obj(reply_channels, min_properties=1, max_properties=1),
        "additionalReferenceInfo": _REFERENCE_RULE,
    }


@cache
def _rules(version: str) -> _Obj:
    if version == "1.0.0":
        return _Obj(_metadata_rule_1_0_0(_REPLY_CHANNELS_1_0), required=("contentStructure",))
    channels = dict(_REPLY_CHANNELS_1_0)
    if supports_fitconnect_reply_channel(version):
        channels[_FIT_CONNECT_CHANNEL] = _FIT_CONNECT_CHANNEL_RULE
    properties: dict[str, _Node] = {"$schema": _Str(pattern=_SCHEMA_MEMBER_PATTERN)}
    properties.update(_metadata_rule_1_0_0(channels))
    return _Obj(properties, required=("contentStructure",))


# --- the validator ------------------------------------------------------------------------------

_IDENTIFIER_RE: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*", re.ASCII)


def _child(path: str, name: str) -> str:
    if _IDENTIFIER_RE.fullmatch(name):
        return f"{path}.{name}"
    return f"{path}[{json.dumps(name, ensure_ascii=False)}]"


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, Mapping):
        return "object"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def _as_fraction(value: object) -> Fraction | None:
    """Exact value of a JSON number (int, finite float or Decimal); ``None`` if not a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        # The shortest repr is the decimal the float was written as in JSON.
        return Fraction(Decimal(repr(value))) if math.isfinite(value) else None
    if isinstance(value, Decimal):
        return Fraction(value) if value.is_finite() else None
    return None


def _check(node: _Node, value: Any, path: str, out: list[Violation]) -> None:
    if isinstance(node, _Obj):
        _check_object(node, value, path, out)
    elif isinstance(node, _Str):
        _check_string(node, value, path, out)
    elif isinstance(node, _Arr):
        if not isinstance(value, list | tuple):
            out.append(Violation(path, f"must be an array, got {_json_type(value)}"))
            return
        if node.min_items is not None and len(value) < node.min_items:
            out.append(Violation(path, f"must have at least {node.min_items} item(s)"))
        for index, item in enumerate(value):
            _check(node.items, item, f"{path}[{index}]", out)
    elif isinstance(node, _Num):
        _check_number(node, value, path, out)
    elif not isinstance(value, bool):
        out.append(Violation(path, f"must be a boolean, got {_json_type(value)}"))


def _check_object(node: _Obj, value: Any, path: str, out: list[Violation]) -> None:
    if not isinstance(value, Mapping):
        out.append(Violation(path, f"must be an object, got {_json_type(value)}"))
        return
    count = len(value)
    if node.min_properties is not None and count < node.min_properties:
        out.append(Violation(path, f"must have at least {node.min_properties} member(s)"))
    if node.max_properties is not None and count > node.max_properties:
        out.append(
            Violation(path, f"must have at most {node.max_properties} member(s), has {count}")
        )
    for name in node.required:
        if name not in value:
            out.append(Violation(_child(path, name), "is required"))
    for name, sub in node.properties.items():
        if name in value:
            _check(sub, value[name], _child(path, name), out)


def _check_string(node: _Str, value: Any, path: str, out: list[Violation]) -> None:
    if not isinstance(value, str):
        out.append(Violation(path, f"must be a string, got {_json_type(value)}"))
        return
    if node.enum is not None and value not in node.enum:
        out.append(Violation(path, f"must be one of {', '.join(node.enum)}"))
    if node.min_length is not None and len(value) < node.min_length:
        out.append(Violation(path, f"must have at least {node.min_length} character(s)"))
    if node.max_length is not None and len(value) > node.max_length:
        out.append(
            Violation(path, f"must have at most {node.max_length} characters, has {len(value)}")
        )
    if node.regex is not None and node.regex.search(value) is None:
        pattern = (node.pattern or "").replace("\n", "\\n")
        out.append(Violation(path, f"must match the pattern {pattern}"))
    if node.format is not None:
        check, description = _FORMATS[node.format]
        if not check(value):
            out.append(Violation(path, f"must be {description}"))


def _check_number(node: _Num, value: Any, path: str, out: list[Violation]) -> None:
    number = _as_fraction(value)
    if number is None:
        out.append(Violation(path, f"must be a finite number, got {_json_type(value)}"))
        return
    if node.minimum is not None and number < Fraction(node.minimum):
        out.append(Violation(path, f"must be at least {node.minimum}"))
    if node.multiple_of is not None and (number / Fraction(node.multiple_of)).denominator != 1:
        out.append(Violation(path, f"must be a multiple of {node.multiple_of}"))


def validate_metadata(doc: Any, version: str | None = None) -> list[Violation]:
    """Every violation of ``doc`` against metadata ``version``; an empty list means valid.

    With ``version=None`` the version comes from ``$schema`` (1.0.0 when absent); an unknown or
    malformed ``$schema`` is reported at ``$.$schema`` and the rest is checked by the 1.0.0
    rules. With an explicit ``version`` the document is checked by exactly that version's rules
    (which, for 1.0.0, do not constrain ``$schema`` at all).
    """
    out: list[Violation] = []
    if version is None:
        if isinstance(doc, Mapping):
            detected, violation = _schema_member_violation(doc)
            if violation is not None:
                out.append(violation)
            version = detected or DEFAULT_METADATA_VERSION
        else:
            version = DEFAULT_METADATA_VERSION
    _check(_rules(_require_known_version(version)), doc, "$", out)
    return out


def check_metadata(doc: Any, version: str | None = None) -> None:
    """Raise :class:`MetadataError` listing every violation unless ``doc`` is valid."""
    violations = validate_metadata(doc, version)
    if violations:
        raise MetadataError(violations)


def sha512_hex(data: bytes) -> str:
    """The SHA-512 of ``data`` as 128 lowercase hex characters (metadata ``hash.content``)."""
    return sha512(data).hexdigest()


# --- enums --------------------------------------------------------------------------------------


class AttachmentPurpose(StrEnum):
    FORM = "form"  #: generated PDF of the whole application form
    ATTACHMENT = "attachment"  #: uploaded by the citizen
    REPORT = "report"  #: generated later by the online service


class PaymentMethod(StrEnum):
    GIROPAY = "GIROPAY"
    PAYDIRECT = "PAYDIRECT"
    CREDITCARD = "CREDITCARD"
    PAYPAL = "PAYPAL"
    INVOICE = "INVOICE"
    OTHER = "OTHER"


class PaymentStatus(StrEnum):
    INITIAL = "INITIAL"
    BOOKED = "BOOKED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


class SignatureFormat(StrEnum):
    CMS = "cms"
    XML = "xml"
    PDF = "pdf"
    ASIC = "asic"
    JSON = "json"


class MimeType(StrEnum):
    """MIME types of Fachdaten (``submissionSchema.mimeType``)."""

    JSON = "application/json"
    XML = "application/xml"


class ReplyChannelKind(StrEnum):
    EMAIL = "eMail"
    DEMAIL = "deMail"
    FINK = "fink"
    ELSTER = "elster"
    FIT_CONNECT = "fitConnect"


# --- reading models -----------------------------------------------------------------------------


class _Model(BaseModel):
    """Wire names via aliases; unknown members are kept (``model_extra``) and dumped again."""

    model_config = ConfigDict(populate_by_name=True, extra="allow")

    def to_wire(self) -> dict[str, Any]:
        """The JSON object of this model with wire names (unset optional members omitted)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Hash(_Model):
    type: str = "sha512"
    content: str


class SubmissionSchema(_Model):
    schema_uri: str = Field(alias="schemaUri")
    mime_type: str = Field(alias="mimeType")


class Signature(_Model):
    signature_format: str = Field(alias="signatureFormat")
    detached_signature: bool = Field(alias="detachedSignature")
    eidas_ades_profile: str | None = Field(default=None, alias="eidasAdesProfile")
    content: str | None = None


class DataInfo(_Model):
    hash: Hash
    submission_schema: SubmissionSchema = Field(alias="submissionSchema")
    signature: Signature | None = None


class AttachmentInfo(_Model):
    attachment_id: str = Field(alias="attachmentId")
    hash: Hash
    purpose: AttachmentPurpose
    mime_type: str = Field(alias="mimeType")
    filename: str | None = None
    description: str | None = None
    signature: Signature | None = None


class ContentStructure(_Model):
    attachments: list[AttachmentInfo]
    data: DataInfo | None = None


class PublicServiceType(_Model):
    """Deprecated since metadata 1.1.0, still accepted."""

    identifier: str
    name: str | None = None
    description: str | None = None


class EMailReplyChannel(_Model):
    address: str
    pgp_public_key: str | None = Field(default=None, alias="pgpPublicKey")


class DeMailReplyChannel(_Model):
    address: str


class FinkReplyChannel(_Model):
    fink_postfach_ref: str = Field(alias="finkPostfachRef")
    host: str | None = None


class ElsterReplyChannel(_Model):
    account_id: str = Field(alias="accountId")
    liefer_ticket: str | None = Field(default=None, alias="lieferTicket")
    geschaeftszeichen: str | None = None


class FitConnectReplyChannel(_Model):
    """[U] member names, see the block at the top of the module."""

    process_standards: list[str] = Field(alias=_FC_PROCESS_STANDARDS)
    encryption_public_key: dict[str, Any] | None = Field(
        default=None, alias=_FC_ENCRYPTION_PUBLIC_KEY
    )


class ReplyChannel(_Model):
    """Exactly one member; :attr:`kind` tells which (``None`` for a channel unknown to us)."""

    e_mail: EMailReplyChannel | None = Field(default=None, alias="eMail")
    de_mail: DeMailReplyChannel | None = Field(default=None, alias="deMail")
    fink: FinkReplyChannel | None = None
    elster: ElsterReplyChannel | None = None
    fit_connect: FitConnectReplyChannel | None = Field(default=None, alias=_FIT_CONNECT_CHANNEL)

    @property
    def kind(self) -> ReplyChannelKind | None:
        for kind, value in (
            (ReplyChannelKind.EMAIL, self.e_mail),
            (ReplyChannelKind.DEMAIL, self.de_mail),
            (ReplyChannelKind.FINK, self.fink),
            (ReplyChannelKind.ELSTER, self.elster),
            (ReplyChannelKind.FIT_CONNECT, self.fit_connect),
        ):
            if value is not None:
                return kind
        return None


_JsonDecimal = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]


class PaymentInformation(_Model):
    transaction_reference: str = Field(alias="transactionReference")
    transaction_id: str = Field(alias="transactionId")
    payment_method: PaymentMethod = Field(alias="paymentMethod")
    status: PaymentStatus
    transaction_url: str | None = Field(default=None, alias="transactionUrl")
    transaction_timestamp: str | None = Field(default=None, alias="transactionTimestamp")
    payment_method_detail: str | None = Field(default=None, alias="paymentMethodDetail")
    gross_amount: _JsonDecimal | None = Field(default=None, alias="grossAmount")

    @property
    def transaction_time(self) -> datetime | None:
        """``transactionTimestamp`` as an aware UTC datetime (``None`` when absent)."""
        if self.transaction_timestamp is None:
            return None
        return _parse_date_time(self.transaction_timestamp)


class AuthenticationInformation(_Model):
    type: str = "identificationReport"
    version: str
    content: str


class AdditionalReferenceInfo(_Model):
    sender_reference: str | None = Field(default=None, alias="senderReference")
    application_date: str | None = Field(default=None, alias="applicationDate")

    @property
    def application_day(self) -> date | None:
        """``applicationDate`` as a :class:`datetime.date` (``None`` when absent)."""
        if self.application_date is None:
            return None
        return date.fromisoformat(self.application_date)


class Metadata(_Model):
    """Validated submission metadata (build it with :func:`parse_metadata`)."""

    schema_uri: str | None = Field(default=None, alias="$schema")
    content_structure: ContentStructure = Field(alias="contentStructure")
    public_service_type: PublicServiceType | None = Field(default=None, alias="publicServiceType")
    authentication_information: list[AuthenticationInformation] | None = Field(
        default=None, alias="authenticationInformation"
    )
    payment_information: PaymentInformation | None = Field(default=None, alias="paymentInformation")
    reply_channel: ReplyChannel | None = Field(default=None, alias="replyChannel")
    additional_reference_info: AdditionalReferenceInfo | None = Field(
        default=None, alias="additionalReferenceInfo"
    )

    @property
    def version(self) -> str:
        """The metadata version named by ``$schema`` (1.0.0 when absent)."""
        if self.schema_uri is None:
            return DEFAULT_METADATA_VERSION
        return version_from_schema_uri(self.schema_uri) or DEFAULT_METADATA_VERSION

    @property
    def attachment_ids(self) -> list[str]:
        """The attachment ids in metadata order, canonical lowercase."""
        return [a.attachment_id.lower() for a in self.content_structure.attachments]


def _parse_date_time(value: str) -> datetime:
    match = _DATE_TIME_RE.fullmatch(value)
    if match is None or not _valid_ymd(*match.group(1, 2, 3)):
        raise FormatError(f"not an RFC 3339 date-time: {_show(value)}", value=value)
    year, month, day, hour, minute, second = (int(g) for g in match.group(1, 2, 3, 4, 5, 6))
    fraction = match.group(7) or ""
    micro = int((fraction[1:] + "000000")[:6]) if fraction else 0
    offset = match.group(8)
    if offset in ("Z", "z"):
        tz: timezone = UTC
    else:
        sign = -1 if offset[0] == "-" else 1
        tz = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz).astimezone(UTC)


def parse_metadata(data: bytes | str | Mapping[str, Any], version: str | None = None) -> Metadata:
    """Parse (strict JSON), validate and model submission metadata.

    Raises :class:`FormatError` for bytes that are not a JSON object (duplicate members, NaN, bad
    UTF-8) and :class:`MetadataError` listing every violation otherwise.
    """
    doc: Any = loads_object(data, what="metadata") if isinstance(data, bytes | str) else data
    check_metadata(doc, version)
    try:
        # Wire names only: a member spelled like a Python field name ("e_mail") is an unknown
        # extension member on the wire, not the field.
        return Metadata.model_validate(dict(doc), by_alias=True, by_name=False)
    except ValidationError as exc:
        # Only reachable where the 1.0.0 rules leave a member open that the model types, e.g. a
        # ``replyChannel.fitConnect`` of the wrong shape in a 1.0.0 document.
        raise MetadataError(
            [Violation(_loc_path(e["loc"]), e["msg"]) for e in exc.errors(include_input=False)]
        ) from None


def _loc_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        path = f"{path}[{part}]" if isinstance(part, int) else _child(path, part)
    return path


# --- builder ------------------------------------------------------------------------------------

_TOP_LEVEL_MEMBERS: Final = frozenset(
    {
        "$schema",
        "contentStructure",
        "publicServiceType",
        "authenticationInformation",
        "paymentInformation",
        "replyChannel",
        "additionalReferenceInfo",
    }
)
_PRIVATE_JWK_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_SHA512_HEX_RE: Final = re.compile(r"[a-f0-9]{128}", re.ASCII)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _require(node: _Node, value: object, name: str) -> None:
    """Check one builder argument against its schema rule; FormatError naming the value."""
    found: list[Violation] = []
    _check(node, value, "$", found)
    if found:
        message = "; ".join(v.message for v in found)
        raise FormatError(f"{name} {message}, got {_show(value)}", field=name, value=value)


def _require_sha512_hex(value: object, name: str = "sha512_hex") -> str:
    if not isinstance(value, str) or not _SHA512_HEX_RE.fullmatch(value):
        raise FormatError(
            f"{name} must be a SHA-512 as 128 lowercase hex characters "
            f"(use sha512_hex(data)), got {_show(value)}",
            field=name,
            value=value,
        )
    return value


def _optional_str(value: object, name: str) -> None:
    if value is not None and not isinstance(value, str):
        raise FormatError(f"{name} must be text, got {_show(value)}", field=name, value=value)


def _signature_dict(signature: Signature | Mapping[str, Any] | None) -> dict[str, Any] | None:
    if signature is None:
        return None
    sig = signature.to_wire() if isinstance(signature, Signature) else dict(signature)
    _require(_SIGNATURE_RULE, sig, "signature")
    return sig


def _enum_value(enum: type[StrEnum], value: object, name: str) -> str:
    try:
        if not isinstance(value, str):
            raise ValueError(value)
        return enum(value).value
    except ValueError:
        allowed = ", ".join(member.value for member in enum)
        raise FormatError(
            f"{name} must be one of {allowed}, got {_show(value)}", field=name, value=value
        ) from None


class MetadataBuilder:
    """Fluent builder of submission metadata; :meth:`build` validates the whole document.

    >>> doc = (MetadataBuilder()
    ...        .service("99123456760610")
    ...        .data(sha512_hex(b"{}"), "https://schema.fitko.de/fim/s00000096_1.0.schema.json",
    ...              MimeType.JSON)
    ...        .build())
    """

    def __init__(self, version: str = DEFAULT_METADATA_VERSION) -> None:
        self.version = _require_known_version(version)
        self._service: dict[str, Any] | None = None
        self._data: dict[str, Any] | None = None
        self._attachments: list[dict[str, Any]] = []
        self._reply_channel: dict[str, Any] | None = None
        self._payment: dict[str, Any] | None = None
        self._authentication: list[dict[str, Any]] = []
        self._reference: dict[str, Any] = {}
        self._extra: dict[str, Any] = {}

    # -- content -----------------------------------------------------------------------------

    def service(
        self, identifier: str, name: str | None = None, description: str | None = None
    ) -> Self:
        """``publicServiceType``: a Leistungsschlüssel (made a LeiKa URN) or another URN."""
        urn = ids.parse_service_identifier(identifier)
        _require(_SERVICE_IDENTIFIER_RULE, urn, "service identifier")
        _optional_str(name, "name")
        _optional_str(description, "description")
        service: dict[str, Any] = {"identifier": urn}
        if name is not None:
            service["name"] = name
        if description is not None:
            service["description"] = description
        self._service = service
        return self

    def data(
        self,
        sha512_hex: str,
        schema_uri: str,
        mime_type: MimeType | str,
        signature: Signature | Mapping[str, Any] | None = None,
    ) -> Self:
        """``contentStructure.data``: hash of the unencrypted Fachdaten and their schema."""
        digest = _require_sha512_hex(sha512_hex)
        _require(_URI_RULE, schema_uri, "schema_uri")
        mime = _enum_value(MimeType, mime_type, "mime_type")
        data: dict[str, Any] = {
            "hash": {"type": "sha512", "content": digest},
            "submissionSchema": {"schemaUri": schema_uri, "mimeType": mime},
        }
        sig = _signature_dict(signature)
        if sig is not None:
            data["signature"] = sig
        self._data = data
        return self

    def attachment(
        self,
        attachment_id: str,
        sha512_hex: str,
        purpose: AttachmentPurpose | str,
        mime_type: str,
        filename: str | None = None,
        description: str | None = None,
        signature: Signature | Mapping[str, Any] | None = None,
    ) -> Self:
        """Append an attachment (id: a random UUIDv4, e.g. ``ids.new_id()``)."""
        canonical = ids.parse_uuid(attachment_id, field="attachment_id", require_v4=True)
        if any(a["attachmentId"] == canonical for a in self._attachments):
            raise FormatError(
                f"attachment_id {canonical!r} is already used in this submission",
                field="attachment_id",
                value=attachment_id,
            )
        digest = _require_sha512_hex(sha512_hex)
        purpose_value = _enum_value(AttachmentPurpose, purpose, "purpose")
        _require(_ATTACHMENT_RULE.properties["mimeType"], mime_type, "mime_type")
        _optional_str(filename, "filename")
        _optional_str(description, "description")
        item: dict[str, Any] = {
            "attachmentId": canonical,
            "hash": {"type": "sha512", "content": digest},
            "purpose": purpose_value,
            "mimeType": mime_type,
        }
        if filename is not None:
            item["filename"] = filename
        if description is not None:
            item["description"] = description
        sig = _signature_dict(signature)
        if sig is not None:
            item["signature"] = sig
        self._attachments.append(item)
        return self

    # -- reply channels (exactly one) ----------------------------------------------------------

    def _set_reply_channel(self, kind: ReplyChannelKind, channel: dict[str, Any]) -> Self:
        if self._reply_channel is not None:
            (current,) = self._reply_channel
            raise FormatError(
                f"a reply channel ({current}) is already set; metadata carries exactly one",
                field="replyChannel",
            )
        self._reply_channel = {kind.value: channel}
        return self

    def reply_channel_email(self, address: str, pgp_public_key: str | None = None) -> Self:
        """E-mail reply channel; an armored PGP key has its CRLF line ends made LF."""
        _require(_EMAIL_RULE, address, "e-mail address")
        channel: dict[str, Any] = {"address": address}
        if pgp_public_key is not None:
            if not isinstance(pgp_public_key, str) or not pgp_public_key.replace(
                "\r\n", "\n"
            ).startswith(_PGP_PREFIX):
                raise FormatError(
                    "pgp_public_key must be an ASCII-armored public key starting with "
                    "'-----BEGIN PGP PUBLIC KEY BLOCK-----' followed by an empty line "
                    "(no armor headers)",
                    field="pgp_public_key",
                )
            channel["pgpPublicKey"] = pgp_public_key.replace("\r\n", "\n")
        return self._set_reply_channel(ReplyChannelKind.EMAIL, channel)

    def reply_channel_demail(self, address: str) -> Self:
        _require(_EMAIL_RULE, address, "De-Mail address")
        return self._set_reply_channel(ReplyChannelKind.DEMAIL, {"address": address})

    def reply_channel_fink(self, postfach_ref: str, host: str | None = None) -> Self:
        _require(_FINK_REF_RULE, postfach_ref, "FINK postfach_ref")
        channel: dict[str, Any] = {"finkPostfachRef": postfach_ref}
        if host is not None:
            _require(_URI_RULE, host, "FINK host")
            channel["host"] = host
        return self._set_reply_channel(ReplyChannelKind.FINK, channel)

    def reply_channel_elster(
        self,
        account_id: str,
        liefer_ticket: str | None = None,
        geschaeftszeichen: str | None = None,
    ) -> Self:
        _require(_ELSTER_ACCOUNT_RULE, account_id, "ELSTER account_id (10 digits)")
        channel: dict[str, Any] = {"accountId": account_id}
        if liefer_ticket is not None:
            _optional_str(liefer_ticket, "liefer_ticket")
            channel["lieferTicket"] = liefer_ticket
        if geschaeftszeichen is not None:
            _require(_GESCHAEFTSZEICHEN_RULE, geschaeftszeichen, "geschaeftszeichen")
            channel["geschaeftszeichen"] = geschaeftszeichen
        return self._set_reply_channel(ReplyChannelKind.ELSTER, channel)

    def reply_channel_fitconnect(
        self,
        process_standards: Sequence[str],
        encryption_public_key: Mapping[str, Any] | None = None,
    ) -> Self:
        """FIT-Connect reply channel ([U] member names), for metadata ≥ 1.1.0 only."""
        if not supports_fitconnect_reply_channel(self.version):
            raise FormatError(
                f"the FIT-Connect reply channel needs metadata {FIT_CONNECT_REPLY_CHANNEL_SINCE}"
                f" or later; this builder writes {self.version} "
                f"(use MetadataBuilder(version={FIT_CONNECT_REPLY_CHANNEL_SINCE!r}) or newer)",
                field="version",
                value=self.version,
            )
        if isinstance(process_standards, str):
            raise FormatError(
                "process_standards must be a list of URIs, not a single string",
                field="process_standards",
                value=process_standards,
            )
        standards = list(process_standards)
        _require(
            _FIT_CONNECT_CHANNEL_RULE.properties[_FC_PROCESS_STANDARDS],
            standards,
            "process_standards",
        )
        channel: dict[str, Any] = {_FC_PROCESS_STANDARDS: standards}
        if encryption_public_key is not None:
            jwk = dict(encryption_public_key)
            private = sorted(_PRIVATE_JWK_MEMBERS & jwk.keys())
            if private:
                raise FormatError(
                    "encryption_public_key must be a public JWK; it contains private members "
                    f"{', '.join(private)}",
                    field="encryption_public_key",
                )
            found: list[Violation] = []
            _check(_FIT_CONNECT_CHANNEL_RULE.properties[_FC_ENCRYPTION_PUBLIC_KEY], jwk, "$", found)
            if found:
                raise FormatError(
                    "encryption_public_key must be an RSA JWK: " + "; ".join(str(v) for v in found),
                    field="encryption_public_key",
                )
            channel[_FC_ENCRYPTION_PUBLIC_KEY] = jwk
        return self._set_reply_channel(ReplyChannelKind.FIT_CONNECT, channel)

    # -- payment, authentication, references, extensions ---------------------------------------

    def payment(
        self,
        transaction_reference: str,
        transaction_id: str,
        payment_method: PaymentMethod | str,
        status: PaymentStatus | str,
        *,
        transaction_url: str | None = None,
        transaction_timestamp: datetime | str | None = None,
        payment_method_detail: str | None = None,
        gross_amount: Decimal | float | str | None = None,
    ) -> Self:
        """``paymentInformation`` as reported by the payment service (ePayBL etc.)."""
        _optional_str(transaction_reference, "transaction_reference")
        if transaction_reference is None:
            raise FormatError("transaction_reference is required", field="transaction_reference")
        _require(_PAYMENT_ID_RULE, transaction_id, "transaction_id")
        payment: dict[str, Any] = {
            "transactionReference": transaction_reference,
            "transactionId": transaction_id,
            "paymentMethod": _enum_value(PaymentMethod, payment_method, "payment_method"),
            "status": _enum_value(PaymentStatus, status, "status"),
        }
        if transaction_url is not None:
            _require(_PAYMENT_RULE.properties["transactionUrl"], transaction_url, "transaction_url")
            payment["transactionUrl"] = transaction_url
        if transaction_timestamp is not None:
            payment["transactionTimestamp"] = _timestamp_text(transaction_timestamp)
        if payment_method_detail is not None:
            _require(_PAYMENT_ID_RULE, payment_method_detail, "payment_method_detail")
            payment["paymentMethodDetail"] = payment_method_detail
        if gross_amount is not None:
            payment["grossAmount"] = _gross_amount(gross_amount)
        self._payment = payment
        return self

    def authentication(
        self, version: str, content: str, type_: str = "identificationReport"
    ) -> Self:
        """Append an identification report (``content`` base64url / compact JWS)."""
        item = {"type": type_, "version": version, "content": content}
        for name, value in item.items():
            _require(_AUTH_INFO_ITEM_RULE.properties[name], value, f"authentication {name}")
        self._authentication.append(item)
        return self

    def reference(
        self,
        sender_reference: str | None = None,
        application_date: date | str | None = None,
    ) -> Self:
        """``additionalReferenceInfo`` (members given here replace earlier ones)."""
        if sender_reference is not None:
            _optional_str(sender_reference, "sender_reference")
            self._reference["senderReference"] = sender_reference
        if application_date is not None:
            if isinstance(application_date, datetime):
                raise FormatError(
                    "application_date must be a date, not a datetime "
                    f"(got {_show(application_date)}; use .date())",
                    field="application_date",
                    value=application_date,
                )
            text = (
                application_date.isoformat()
                if isinstance(application_date, date)
                else application_date
            )
            _require(_REFERENCE_RULE.properties["applicationDate"], text, "application_date")
            self._reference["applicationDate"] = text
        return self

    def extra(self, key: str, value: Any) -> Self:
        """A vendor extension member at the top level (e.g. ``x-sender``)."""
        if not isinstance(key, str) or not key:
            raise FormatError(f"extension key must be non-empty text, got {_show(key)}")
        if key in _TOP_LEVEL_MEMBERS:
            raise FormatError(
                f"{key!r} is a metadata member; set it with its builder method, not extra()",
                field=key,
            )
        try:
            dumps_compact(value)
        except (TypeError, ValueError) as exc:
            raise FormatError(
                f"extension {key!r} must be JSON-serializable: {exc}", field=key
            ) from None
        self._extra[key] = copy.deepcopy(value)
        return self

    # -- output ----------------------------------------------------------------------------------

    def build(self) -> dict[str, Any]:
        """The metadata document (with ``$schema``); :class:`MetadataError` if invalid."""
        content: dict[str, Any] = {}
        if self._data is not None:
            content["data"] = self._data
        content["attachments"] = self._attachments
        doc: dict[str, Any] = {"$schema": schema_uri(self.version), "contentStructure": content}
        if self._service is not None:
            doc["publicServiceType"] = self._service
        if self._authentication:
            doc["authenticationInformation"] = self._authentication
        if self._payment is not None:
            doc["paymentInformation"] = self._payment
        if self._reply_channel is not None:
            doc["replyChannel"] = self._reply_channel
        if self._reference:
            doc["additionalReferenceInfo"] = self._reference
        doc.update(self._extra)
        doc = copy.deepcopy(doc)
        check_metadata(doc, self.version)
        return doc

    def build_bytes(self) -> bytes:
        """:meth:`build` serialized compactly (the bytes to encrypt)."""
        return dumps_compact(self.build())


def _timestamp_text(value: datetime | str) -> str:
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise FormatError(
                f"transaction_timestamp must be timezone-aware, got {_show(value)}",
                field="transaction_timestamp",
                value=value,
            )
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    _require(_PAYMENT_RULE.properties["transactionTimestamp"], value, "transaction_timestamp")
    return value


def _gross_amount(value: Decimal | float | str) -> float | int:
    if isinstance(value, bool):
        raise FormatError(
            f"gross_amount must be an amount, got {_show(value)}", field="gross_amount", value=value
        )
    try:
        # A float is taken as the decimal it prints as (its shortest repr).
        amount = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        raise FormatError(
            f"gross_amount must be a decimal amount, got {_show(value)}",
            field="gross_amount",
            value=value,
        ) from None
    _require(_PAYMENT_RULE.properties["grossAmount"], amount, "gross_amount")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    number = float(amount)
    if Decimal(repr(number)) != amount:
        raise FormatError(
            f"gross_amount has too many digits to be sent exactly as a JSON number, "
            f"got {_show(value)}",
            field="gross_amount",
            value=value,
        )
    return number
