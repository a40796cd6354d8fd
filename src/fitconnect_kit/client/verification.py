"""The receiver's verification duties (reference §11), in the documented order.

:func:`verify` takes everything the subscriber fetched and decrypted (:class:`Received`
parts, the destination, the Zustelldienst's verified ``submit-submission`` tags) and runs the
checks one after the other. Every failed check becomes a ``reject-submission`` problem from
:class:`~fitconnect_kit.protocol.problems.RejectProblems` with the exact ``type`` and ``instance``:

==  ================================================  ==========================================
 #  check                                             problem type / instance
==  ================================================  ==========================================
 1  the ZD's ``submit-submission`` SET verified       ``invalid-event-log`` / ``submission``
 2  tags of metadata, data, attachments = the ZD's    ``incorrect-authentication-tag`` / part
 3  JWE headers acceptable, every part decrypts       ``encryption-issue`` / part
 4  metadata is a JSON object                         ``syntax-violation`` / ``metadata``
 5  metadata ``$schema`` supported by destination     ``unsupported-schema`` / ``metadata``
 6  metadata valid for that version                   ``schema-violation`` / ``metadata``
 7  service in metadata = submission's, offered       ``service-mismatch`` / ``metadata``
 8  attachment ids of metadata = the submission's     ``attachments-mismatch`` / ``metadata``
 9  reply channel offered (service, else top level)   ``unsupported-reply-channel`` / ``metadata``
10  data present iff announced in the metadata        ``missing-data`` / ``data``
11  data schema (schemaUri + mimeType) offered        ``unsupported-schema`` / ``data``
12  data hash                                         ``hash-mismatch`` / ``data``
13  data syntax (JSON / XML)                          ``syntax-violation`` / ``data``
14  data valid against its schema                     ``schema-violation`` / ``data``
15  attachment hashes                                 ``hash-mismatch`` / ``attachment:<id>``
==  ================================================  ==========================================

All problems that can be determined are collected; a check is skipped only when it depends on
an earlier one (no decrypted metadata → nothing of 4–15; invalid metadata → nothing of 7–15;
no ZD tags → no 2; service not offered → no 9 and 11; undecryptable data → no 12–14; data not
valid JSON/XML → no 14; data schema not offered → no 14). Each check's outcome is recorded in
:attr:`VerificationResult.steps`.

A data schema missing from the :class:`~fitconnect_kit.client.schemas.SchemaRegistry` is a
**local** configuration problem, not the sender's fault: it is recorded in
:attr:`VerificationResult.local_issues` (verdict ``configuration-error``), never as a problem.

``detail`` texts go to the Zustelldienst and the sender: they name paths, rules, ids and sizes,
never decrypted content.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

from lxml import etree

from fitconnect_kit.client.schemas import (
    JSON_MIME,
    MAX_REPORTED_VIOLATIONS,
    XML_MIME,
    SchemaNotAvailableError,
    SchemaRegistry,
    safe_xml_parser,
)
from fitconnect_kit.protocol.api import DestinationService, PublicDestination, Submission
from fitconnect_kit.protocol.errors import FormatError, MetadataError, Violation
from fitconnect_kit.protocol.events import AuthenticationTags
from fitconnect_kit.protocol.ids import parse_service_identifier
from fitconnect_kit.protocol.metadata import (
    KNOWN_METADATA_VERSIONS,
    Metadata,
    metadata_version,
    parse_metadata,
)
from fitconnect_kit.protocol.problems import (
    INSTANCE_DATA,
    INSTANCE_METADATA,
    INSTANCE_SUBMISSION,
    Problem,
    RejectProblems,
    RejectProblemType,
    instance_attachment,
    reject_problem,
)

MAX_DETAIL_CHARS: Final = 2000


class Verdict(StrEnum):
    """The outcome of verifying a submission."""

    VALID = "valid"
    """Every check passed: accept it."""
    INVALID = "invalid"
    """At least one check failed: reject it with the problems found."""
    CONFIGURATION_ERROR = "configuration-error"
    """No problem found, but a check could not run because of a local configuration problem
    (e.g. the data schema is not in the registry): neither accept nor reject — fix the
    configuration and verify again."""


class StepStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"  # depends on an earlier check that failed or could not run
    NOT_APPLICABLE = "not-applicable"  # nothing to check (e.g. no data, no reply channel)
    LOCAL_ERROR = "local-error"  # could not run because of local configuration


@dataclass(frozen=True)
class Step:
    """The outcome of one numbered check."""

    number: int
    name: str
    status: StepStatus
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "step": self.number,
            "check": self.name,
            "status": self.status.value,
        }
        if self.note:
            data["note"] = self.note
        return data


STEP_NAMES: Final = {
    1: "event log (submit-submission SET)",
    2: "authentication tags",
    3: "JWE headers and decryption",
    4: "metadata syntax",
    5: "metadata schema version",
    6: "metadata schema",
    7: "service",
    8: "attachment ids",
    9: "reply channel",
    10: "data present as announced",
    11: "data schema offered",
    12: "data hash",
    13: "data syntax",
    14: "data schema",
    15: "attachment hashes",
}


@dataclass(frozen=True)
class LocalIssue:
    """A check that could not run because of local configuration (not the sender's fault)."""

    step: int
    message: str
    schema_uri: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"step": self.step, "message": self.message}
        if self.schema_uri:
            data["schemaUri"] = self.schema_uri
        return data


@dataclass(frozen=True)
class Received:
    """What was received for one encrypted part, before any check.

    ``present``: a ciphertext was there. ``tag``: the authentication tag (last JWE segment) of
    what was received (``None`` if absent or unreadable). ``error``: why it could not be
    decrypted — the sender's fault (``None``: decrypted). ``local_error``: it could not be
    decrypted because a private key the destination publishes is not configured here.
    ``sha512``/``size``: of the plaintext.
    """

    instance: str
    present: bool = True
    tag: str | None = None
    error: str | None = None
    sha512: str | None = None
    size: int | None = None
    cty: str | None = None
    local_error: str | None = None  # not decrypted because of local configuration (no key)

    @property
    def decrypted(self) -> bool:
        return (
            self.present
            and self.error is None
            and self.local_error is None
            and self.sha512 is not None
        )


@dataclass(frozen=True)
class VerificationInput:
    """Everything :func:`verify` needs; the subscriber fills it from the Zustelldienst."""

    submission: Submission
    destination: PublicDestination
    metadata_versions: Sequence[str]
    event_log_problem: str | None
    zd_tags: AuthenticationTags | None
    metadata: Received
    metadata_plaintext: bytes | None = field(default=None, repr=False)
    data: Received | None = None  # None: the submission has no encryptedData
    data_plaintext: bytes | None = field(default=None, repr=False)
    attachments: Mapping[str, Received] = field(default_factory=dict)


@dataclass
class VerificationResult:
    """Problems found (in check order), local issues, and what was learned on the way."""

    problems: list[Problem] = field(default_factory=list)
    local_issues: list[LocalIssue] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    metadata_document: dict[str, Any] | None = field(default=None, repr=False)
    metadata: Metadata | None = field(default=None, repr=False)
    metadata_version: str | None = None
    data_mime_type: str | None = None
    data_schema_uri: str | None = None

    @property
    def verdict(self) -> Verdict:
        if self.problems:
            return Verdict.INVALID
        if self.local_issues:
            return Verdict.CONFIGURATION_ERROR
        return Verdict.VALID


# --- helpers -------------------------------------------------------------------------------------


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_DETAIL_CHARS else flat[: MAX_DETAIL_CHARS - 1] + "…"


def describe_violations(violations: Sequence[Violation]) -> str:
    shown = [str(v) for v in violations[:MAX_REPORTED_VIOLATIONS]]
    more = len(violations) - len(shown)
    text = f"{len(violations)} violation(s): " + "; ".join(shown)
    if more > 0:
        text += f"; and {more} more"
    return _clip(text)


def parse_json_document(data: bytes) -> tuple[Any, str | None]:
    """Strict JSON (UTF-8, no duplicate members, no NaN); the error names no content."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in items:
            if key in result:
                raise FormatError("duplicate member")
            result[key] = value
        return result

    def constant(_name: str) -> Any:
        raise FormatError("NaN/Infinity")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (invalid byte at offset {exc.start})"
    if text.startswith("\ufeff"):
        return None, "starts with a byte order mark"
    try:
        return json.loads(text, object_pairs_hook=pairs, parse_constant=constant), None
    except FormatError as exc:
        what = str(exc)
        return None, (
            "an object has a duplicate member" if what == "duplicate member" else f"{what} found"
        )
    except json.JSONDecodeError as exc:
        return None, f"JSON syntax error at line {exc.lineno}, column {exc.colno}"
    except RecursionError:
        return None, "nested too deeply"


def parse_xml_document(data: bytes) -> tuple[Any, str | None]:
    """Safe XML: no DTD at all (so no entities), nothing loaded; the error names no content."""
    parser = safe_xml_parser()
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        last = getattr(exc.error_log, "last_error", None)
        name = getattr(last, "type_name", None)
        kind = name.lower().removeprefix("err-").replace("_", "-") if name else "syntax"
        line, column = exc.position
        return None, f"XML not well-formed ({kind}) at line {line}, column {column}"
    tree = root.getroottree()
    info: Any = tree.docinfo
    if info.doctype or info.internalDTD is not None:
        return None, "XML with a document type declaration (DTD) is not accepted"
    return tree, None


def _offered_reply_channels(
    destination: PublicDestination, service: DestinationService | None
) -> list[str]:
    channels = service.reply_channels if service is not None else None
    if channels is None:
        channels = destination.reply_channels
    return channels.channel_names() if channels is not None else []


def _canonical_service(identifier: object) -> str | None:
    try:
        return parse_service_identifier(identifier)
    except FormatError:
        return None


class _Run:
    def __init__(self, inp: VerificationInput, schemas: SchemaRegistry | None, strict: bool):
        self.inp = inp
        self.schemas = schemas
        self.require_schema = strict
        self.result = VerificationResult()
        self._step_failed: dict[int, bool] = {}

    # recording ------------------------------------------------------------------------------

    def problem(self, step: int, ptype: RejectProblemType, instance: str, detail: str) -> None:
        self.result.problems.append(reject_problem(ptype, instance, _clip(detail)))
        self._step_failed[step] = True

    def done(self, step: int, status: StepStatus | None = None, note: str | None = None) -> None:
        if status is None:
            status = StepStatus.FAILED if self._step_failed.get(step) else StepStatus.OK
        self.result.steps.append(Step(step, STEP_NAMES[step], status, note))

    def skip(self, steps: Sequence[int], note: str) -> None:
        for step in steps:
            self.done(step, StepStatus.SKIPPED, note)

    # the checks -----------------------------------------------------------------------------

    def run(self) -> VerificationResult:
        inp = self.inp
        self.event_log()
        self.tags()
        self.encryption()
        doc = self.metadata_syntax()
        if doc is None:
            self.skip(range(5, 16), "no decrypted metadata")
            return self.result
        version = self.metadata_version(doc)
        if version is None:
            self.skip(range(6, 16), "metadata version unknown")
            return self.result
        meta = self.metadata_schema(doc, version)
        if meta is None:
            self.skip(range(7, 16), "metadata invalid")
            return self.result
        service = self.service(meta)
        self.attachment_ids(meta)
        self.reply_channel(doc, service)
        announced = meta.content_structure.data
        present = self.data_presence(announced is not None)
        if announced is None or not present:
            if announced is None and not present:
                status, note = StepStatus.NOT_APPLICABLE, "no data"
            else:
                status = StepStatus.SKIPPED
                note = "data not announced" if announced is None else "data missing"
            for step in (11, 12, 13, 14):
                self.done(step, status, note)
        else:
            schema_uri = announced.submission_schema.schema_uri
            mime = announced.submission_schema.mime_type
            self.result.data_schema_uri, self.result.data_mime_type = schema_uri, mime
            offered = self.data_schema_offered(service, schema_uri, mime)
            assert inp.data is not None
            if inp.data_plaintext is None or not inp.data.decrypted:
                self.skip((12, 13, 14), "data not decrypted")
            else:
                self.data_hash(announced.hash.content)
                document = self.data_syntax(mime)
                if document is None:
                    self.done(14, StepStatus.SKIPPED, "data not well-formed")
                elif not offered:
                    self.done(14, StepStatus.SKIPPED, "data schema not offered")
                else:
                    self.data_schema(schema_uri, mime, document)
        self.attachment_hashes(meta)
        return self.result

    def event_log(self) -> None:
        if self.inp.event_log_problem is not None:
            self.problem(
                1,
                RejectProblems.INVALID_EVENT_LOG,
                INSTANCE_SUBMISSION,
                self.inp.event_log_problem,
            )
        self.done(1)

    def tags(self) -> None:
        inp = self.inp
        zd = inp.zd_tags
        if zd is None:
            self.done(2, StepStatus.SKIPPED, "no verified submit-submission tags")
            return
        ptype = RejectProblems.INCORRECT_AUTHENTICATION_TAG
        if inp.metadata.tag != zd.metadata:
            self.problem(
                2,
                ptype,
                INSTANCE_METADATA,
                "the metadata's authentication tag differs from the one the Zustelldienst "
                "recorded in submit-submission",
            )
        data_tag = inp.data.tag if inp.data is not None else None
        if data_tag != zd.data:
            if zd.data is None:
                detail = "data was received, but the Zustelldienst recorded no data tag"
            elif data_tag is None:
                detail = "the Zustelldienst recorded a data tag, but no data was received"
            else:
                detail = (
                    "the data's authentication tag differs from the one the Zustelldienst "
                    "recorded in submit-submission"
                )
            self.problem(2, ptype, INSTANCE_DATA, detail)
        order = list(inp.attachments) + sorted(set(zd.attachments) - set(inp.attachments))
        for aid in order:
            received = inp.attachments.get(aid)
            got = received.tag if received is not None else None
            wanted = zd.attachments.get(aid)
            if got == wanted:
                continue
            if wanted is None:
                detail = f"attachment {aid} was received, but the Zustelldienst recorded no tag"
            elif received is None:
                detail = f"the Zustelldienst recorded attachment {aid}, but it was not received"
            else:
                detail = (
                    f"the authentication tag of attachment {aid} differs from the one the "
                    "Zustelldienst recorded in submit-submission"
                )
            self.problem(2, ptype, instance_attachment(aid), detail)
        self.done(2)

    def encryption(self) -> None:
        inp = self.inp
        ptype = RejectProblems.ENCRYPTION_ISSUE
        if not inp.metadata.present:
            self.problem(3, ptype, INSTANCE_METADATA, "the submission has no encrypted metadata")
        elif inp.metadata.error is not None:
            self.problem(3, ptype, INSTANCE_METADATA, f"metadata: {inp.metadata.error}")
        if inp.data is not None and inp.data.error is not None:
            self.problem(3, ptype, INSTANCE_DATA, f"data: {inp.data.error}")
        for aid, received in inp.attachments.items():
            if received.error is not None:
                self.problem(
                    3, ptype, instance_attachment(aid), f"attachment {aid}: {received.error}"
                )
        parts = [inp.metadata, *([inp.data] if inp.data is not None else [])]
        for received in [*parts, *inp.attachments.values()]:
            if received.local_error is not None:
                self.result.local_issues.append(
                    LocalIssue(3, f"{received.instance}: {received.local_error}")
                )
        local = any(i.step == 3 for i in self.result.local_issues)
        self.done(3, StepStatus.LOCAL_ERROR if local and not self._step_failed.get(3) else None)

    def metadata_syntax(self) -> dict[str, Any] | None:
        inp = self.inp
        if inp.metadata_plaintext is None or not inp.metadata.decrypted:
            self.done(4, StepStatus.SKIPPED, "metadata not decrypted")
            return None
        doc, error = parse_json_document(inp.metadata_plaintext)
        if error is None and not isinstance(doc, dict):
            error = "the metadata is not a JSON object"
        if error is not None:
            self.problem(
                4, RejectProblems.SYNTAX_VIOLATION, INSTANCE_METADATA, f"metadata: {error}"
            )
            self.done(4)
            return None
        self.done(4)
        self.result.metadata_document = doc
        return doc  # type: ignore[no-any-return]

    def metadata_version(self, doc: dict[str, Any]) -> str | None:
        ptype = RejectProblems.UNSUPPORTED_SCHEMA
        try:
            version = metadata_version(doc)
        except MetadataError as exc:
            self.problem(5, ptype, INSTANCE_METADATA, describe_violations(exc.violations))
            self.done(5)
            return None
        self.result.metadata_version = version
        supported = list(self.inp.metadata_versions)
        if version not in supported or version not in KNOWN_METADATA_VERSIONS:
            self.problem(
                5,
                ptype,
                INSTANCE_METADATA,
                f"metadata version {version} is not supported by destination "
                f"{self.inp.destination.destination_id} (supported: "
                f"{', '.join(supported) or 'none'})",
            )
        self.done(5)
        # A version the kit knows is still validated, to report everything at once.
        return version if version in KNOWN_METADATA_VERSIONS else None

    def metadata_schema(self, doc: dict[str, Any], version: str) -> Metadata | None:
        try:
            meta = parse_metadata(doc, version)
        except MetadataError as exc:
            self.problem(
                6,
                RejectProblems.SCHEMA_VIOLATION,
                INSTANCE_METADATA,
                f"metadata {version}: " + describe_violations(exc.violations),
            )
            self.done(6)
            return None
        self.done(6)
        self.result.metadata = meta
        return meta

    def service(self, meta: Metadata) -> DestinationService | None:
        inp = self.inp
        ptype = RejectProblems.SERVICE_MISMATCH
        submitted = _canonical_service(inp.submission.service_type.identifier)
        offered = inp.destination.service(submitted) if submitted else None
        if meta.public_service_type is not None:
            named = _canonical_service(meta.public_service_type.identifier)
            if named != submitted:
                self.problem(
                    7,
                    ptype,
                    INSTANCE_METADATA,
                    "the service in the metadata (publicServiceType) differs from the "
                    f"submission's serviceType {submitted}",
                )
        if offered is None:
            self.problem(
                7,
                ptype,
                INSTANCE_METADATA,
                f"service {submitted} is not offered by destination "
                f"{inp.destination.destination_id}",
            )
        self.done(7)
        return offered

    def attachment_ids(self, meta: Metadata) -> None:
        in_metadata = meta.attachment_ids
        in_submission = list(self.inp.attachments)
        missing = [a for a in in_submission if a not in in_metadata]
        extra = [a for a in in_metadata if a not in in_submission]
        duplicates = len(in_metadata) - len(set(in_metadata))
        parts: list[str] = []
        if extra:
            parts.append(f"the metadata lists {len(extra)} attachment(s) the submission lacks")
        if missing:
            parts.append(
                "the submission has attachment(s) the metadata does not list: " + ", ".join(missing)
            )
        if duplicates:
            parts.append(f"the metadata lists {duplicates} attachment id(s) twice")
        if parts:
            self.problem(
                8, RejectProblems.ATTACHMENTS_MISMATCH, INSTANCE_METADATA, "; ".join(parts)
            )
        self.done(8)

    def reply_channel(self, doc: dict[str, Any], service: DestinationService | None) -> None:
        channel = doc.get("replyChannel")
        if not isinstance(channel, dict) or not channel:
            self.done(9, StepStatus.NOT_APPLICABLE, "no reply channel")
            return
        if service is None:
            self.done(9, StepStatus.SKIPPED, "service not offered")
            return
        offered = _offered_reply_channels(self.inp.destination, service)
        chosen = [name for name in channel if name not in offered]
        if chosen:
            self.problem(
                9,
                RejectProblems.UNSUPPORTED_REPLY_CHANNEL,
                INSTANCE_METADATA,
                f"reply channel {', '.join(chosen)} is not offered (offered: "
                f"{', '.join(offered) or 'none — replies go by post'})",
            )
        self.done(9)

    def data_presence(self, announced: bool) -> bool:
        present = self.inp.data is not None and self.inp.data.present
        if announced and not present:
            self.problem(
                10,
                RejectProblems.MISSING_DATA,
                INSTANCE_DATA,
                "the metadata announces data (contentStructure.data), but the submission has none",
            )
        elif present and not announced:
            self.problem(
                10,
                RejectProblems.MISSING_DATA,
                INSTANCE_DATA,
                "the submission has data, but the metadata does not announce it "
                "(contentStructure.data missing)",
            )
        self.done(10, None if announced or present else StepStatus.NOT_APPLICABLE)
        return present

    def data_schema_offered(
        self, service: DestinationService | None, schema_uri: str, mime: str
    ) -> bool:
        if service is None:
            self.done(11, StepStatus.SKIPPED, "service not offered")
            return False
        if not any(
            s.schema_uri == schema_uri and s.mime_type == mime for s in service.submission_schemas
        ):
            self.problem(
                11,
                RejectProblems.UNSUPPORTED_SCHEMA,
                INSTANCE_DATA,
                f"data schema {schema_uri} ({mime}) is not offered for service "
                f"{service.identifier}",
            )
            self.done(11)
            return False
        self.done(11)
        return True

    def data_hash(self, expected: str) -> None:
        data = self.inp.data
        assert data is not None
        if data.sha512 != expected:
            self.problem(
                12,
                RejectProblems.HASH_MISMATCH,
                INSTANCE_DATA,
                "the SHA-512 of the decrypted data differs from contentStructure.data.hash",
            )
        self.done(12)

    def data_syntax(self, mime: str) -> Any:
        plaintext = self.inp.data_plaintext
        assert plaintext is not None
        if mime == JSON_MIME:
            document, error = parse_json_document(plaintext)
        elif mime == XML_MIME:
            document, error = parse_xml_document(plaintext)
        else:
            document, error = None, f"unknown data MIME type {mime}"
        if error is not None:
            self.problem(13, RejectProblems.SYNTAX_VIOLATION, INSTANCE_DATA, f"data: {error}")
            self.done(13)
            return None
        self.done(13)
        return document

    def data_schema(self, schema_uri: str, mime: str, document: Any) -> None:
        if self.schemas is None or (not self.require_schema and not self.schemas.has(schema_uri)):
            self.done(14, StepStatus.NOT_APPLICABLE, "no schema registry configured")
            return
        try:
            violations = self.schemas.validate(schema_uri, mime, document)
        except SchemaNotAvailableError as exc:
            self.result.local_issues.append(LocalIssue(14, str(exc), schema_uri))
            self.done(14, StepStatus.LOCAL_ERROR, str(exc))
            return
        if violations:
            self.problem(
                14,
                RejectProblems.SCHEMA_VIOLATION,
                INSTANCE_DATA,
                f"data ({schema_uri}): " + describe_violations(violations),
            )
        self.done(14)

    def attachment_hashes(self, meta: Metadata) -> None:
        checked = 0
        for info in meta.content_structure.attachments:
            aid = info.attachment_id.lower()
            received = self.inp.attachments.get(aid)
            if received is None or not received.decrypted:
                continue
            checked += 1
            if received.sha512 != info.hash.content:
                self.problem(
                    15,
                    RejectProblems.HASH_MISMATCH,
                    instance_attachment(aid),
                    f"the SHA-512 of decrypted attachment {aid} differs from its hash in the "
                    "metadata",
                )
        self.done(15, None if checked or self._step_failed.get(15) else StepStatus.NOT_APPLICABLE)


def verify(
    inp: VerificationInput,
    schemas: SchemaRegistry | None = None,
    *,
    require_data_schema: bool = True,
) -> VerificationResult:
    """Run the §11 checks in order and collect every problem that can be determined.

    ``schemas`` validates the Fachdaten (step 14). ``require_data_schema=False`` makes a schema
    missing from the registry skip step 14 instead of reporting a local issue; ``schemas=None``
    skips step 14 altogether.
    """
    return _Run(inp, schemas, require_data_schema).run()


__all__ = [
    "STEP_NAMES",
    "LocalIssue",
    "Received",
    "Step",
    "StepStatus",
    "Verdict",
    "VerificationInput",
    "VerificationResult",
    "describe_violations",
    "parse_json_document",
    "parse_xml_document",
    "verify",
]
