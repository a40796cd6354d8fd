"""Sender SDK (Onlinedienst): check a destination, send a submission, follow its status.

:class:`AsyncSender` is the implementation; :class:`Sender` is its synchronous facade (same
methods, blocking). Both are created from an :class:`~fitconnect_kit.client.environments.
Environment` plus :class:`~fitconnect_kit.client.config.Credentials`, or from the configuration
(:meth:`AsyncSender.from_config`: arguments → environment variables → profile file).

Sending follows the reference's sender checklist (§12.1):

1. the destination is checked before anything is sent (:meth:`AsyncSender.check_destination`);
2. the submission is announced (``POST /v1/submissions``);
3. each attachment is encrypted while it is uploaded (constant memory, exact
   ``Content-Length`` computed up front, SHA-512 in the same pass);
4. metadata and Fachdaten are encrypted and the submission is submitted
   (``PUT /v1/submissions/{id}``).

Status is read from the case's event log; every SET is verified and the receiver's
authentication tags are compared with what was sent (:meth:`AsyncSender.status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import statistics
from collections import deque
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Unpack

from fitconnect_kit.client._base import (
    AsyncClientBase,
    ClientOptions,
    SyncFacadeBase,
    parse_answer,
)
from fitconnect_kit.client._http import Attempt, Safety
from fitconnect_kit.client.config import Credentials
from fitconnect_kit.client.environments import Environment
from fitconnect_kit.client.errors import (
    AmbiguousCaseError,
    ConflictError,
    DataSchemaNotOfferedError,
    DestinationInactiveError,
    EncryptionKeyRejectedError,
    EventLogVerificationError,
    InvalidRequestError,
    MetadataVersionNotSupportedError,
    NotFoundError,
    ReplyChannelNotOfferedError,
    ServiceNotOfferedError,
    SubmissionError,
    SubmissionLimitError,
    WaitTimeoutError,
)
from fitconnect_kit.client.eventlog import VerifiedEvent
from fitconnect_kit.client.submission import (
    AttachmentSpec,
    EncryptedDataPart,
    ProgressCallback,
    Submission,
)
from fitconnect_kit.protocol import api
from fitconnect_kit.protocol.api import (
    AnnounceSubmission,
    DestinationService,
    DestinationStatus,
    PublicDestination,
    ServiceType,
    SubmissionCreated,
    SubmissionStatus,
    SubmitSubmission,
)
from fitconnect_kit.protocol.b64 import b64url_decode
from fitconnect_kit.protocol.errors import FitConnectError, FormatError
from fitconnect_kit.protocol.events import AuthenticationTags, Event, derive_state
from fitconnect_kit.protocol.ids import parse_service_identifier, parse_uuid
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_object
from fitconnect_kit.protocol.keys import KeyPurpose, validate_destination_key
from fitconnect_kit.protocol.metadata import (
    FIT_CONNECT_REPLY_CHANNEL_SINCE,
    KNOWN_METADATA_VERSIONS,
    ReplyChannelKind,
)

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

    from fitconnect_kit.protocol.keys import TrustPolicy
    from fitconnect_kit.protocol.problems import Problem

log = logging.getLogger("fitconnect_kit.client.sender")

METADATA_CTY = "application/json"
CHUNK_SIZE = 1 << 20
#: Seconds a successful destination check is reused by :meth:`AsyncSender.send` (0: check before
#: every submission). A failed send drops it, so the next send checks afresh.
DESTINATION_CHECK_TTL_SECONDS = 60.0
#: First pause of :meth:`AsyncSender.wait` between polls (it grows ×1.5 up to ``max_interval``).
WAIT_POLL_INTERVAL = 0.25
#: Decision delays :meth:`AsyncSender.wait` remembers per destination (their median times its
#: first poll), and for how many destinations at most.
DECISION_DELAY_SAMPLES = 16
DECISION_DELAY_DESTINATIONS = 64
FINAL_STATES = frozenset(
    {SubmissionStatus.ACCEPTED, SubmissionStatus.REJECTED, SubmissionStatus.DELETED}
)


def _version_key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (-1,)


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """FIT-Connect size limits, checked before anything is uploaded (decimal MB/GB, [U] unit)."""

    max_attachment_bytes: int = api.LIMIT_MAX_ATTACHMENT_BYTES
    max_total_attachment_bytes: int = api.LIMIT_MAX_TOTAL_ATTACHMENT_BYTES
    max_attachments: int = api.LIMIT_MAX_ATTACHMENTS


@dataclass(frozen=True)
class CheckedDestination:
    """A destination that passed every check, with what is needed to encrypt for it."""

    destination: PublicDestination
    service: DestinationService
    metadata_version: str
    encryption_kid: str
    encryption_key: RSAPublicKey = field(repr=False)
    encryption_jwk: dict[str, Any] = field(repr=False)

    @property
    def destination_id(self) -> str:
        return self.destination.destination_id


@dataclass(frozen=True)
class SentSubmission:
    """What :meth:`AsyncSender.send` did: ids, the tags it sent, the metadata document."""

    submission_id: str
    case_id: str
    destination_id: str
    service: ServiceType
    metadata_version: str
    authentication_tags: AuthenticationTags
    attachment_ids: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, repr=False)
    #: When it was submitted (the sender's clock); :meth:`AsyncSender.wait` does not poll a
    #: submission that young at once (nobody can have decided yet).
    sent_at: datetime | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {
            "submissionId": self.submission_id,
            "caseId": self.case_id,
            "destinationId": self.destination_id,
            "serviceType": self.service.to_json(),
            "metadataVersion": self.metadata_version,
            "attachmentIds": list(self.attachment_ids),
            "authenticationTags": self.authentication_tags.to_json(),
        }


@dataclass(frozen=True)
class StatusReport:
    """The verified status of one submission, derived from its case's event log."""

    case_id: str
    submission_id: str | None
    destination_id: str | None
    status: SubmissionStatus
    problems: tuple[Problem, ...] = ()
    events: tuple[VerifiedEvent, ...] = ()
    authentication_tags: AuthenticationTags | None = None
    receiver_tags: AuthenticationTags | None = None
    content_deleted: bool = False
    tags_checked: bool = False

    @property
    def is_final(self) -> bool:
        """Accepted, rejected or deleted: the status will not change any more."""
        return self.status in FINAL_STATES

    @property
    def accepted(self) -> bool:
        return self.status is SubmissionStatus.ACCEPTED

    @property
    def rejected(self) -> bool:
        return self.status is SubmissionStatus.REJECTED

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "caseId": self.case_id,
            "submissionId": self.submission_id,
            "destinationId": self.destination_id,
            "status": self.status.value,
            "final": self.is_final,
            "tagsChecked": self.tags_checked,
            "contentDeleted": self.content_deleted,
            "problems": [p.to_json() for p in self.problems],
            "events": [e.to_json() for e in self.events],
        }
        if self.authentication_tags is not None:
            data["authenticationTags"] = self.authentication_tags.to_json()
        return data


@dataclass(frozen=True)
class DestinationReport:
    """Everything a sender needs to know about a destination, with the check results."""

    destination: PublicDestination
    environment: str
    metadata_version: str | None
    encryption_kid: str
    key_valid: bool
    key_problem: str | None = None
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "destination": self.destination.to_json(),
            "metadataVersion": self.metadata_version,
            "encryptionKey": {
                "kid": self.encryption_kid,
                "valid": self.key_valid,
                "problem": self.key_problem,
            },
            "ok": self.ok,
            "problems": list(self.problems),
        }


# --- reading attachment sources ------------------------------------------------------------------


class _BoundedReader(io.RawIOBase):
    """Reads exactly ``size`` bytes from ``raw``; a shorter source is an error."""

    def __init__(self, raw: BinaryIO, size: int, what: str) -> None:
        self._raw = raw
        self._left = size
        self._what = what

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self._left <= 0:
            return b""
        want = self._left if n is None or n < 0 else min(n, self._left)
        data = self._raw.read(want) or b""
        if not data:
            raise SubmissionError(
                f"{self._what} ended {self._left} bytes early (was it changed while uploading?)"
            )
        self._left -= len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), size):
        yield bytes(view[start : start + size])


@dataclass
class _EncryptedFile:
    """Facts about a JWE stored in a file: its length (without trailing whitespace) and tag."""

    length: int
    tag: str
    header: dict[str, Any]


def _jwe_header(head: bytes) -> dict[str, Any]:
    """The protected header of a JWE compact serialization (from its first bytes), checked."""
    dot = head.find(b".")
    if dot <= 0:
        raise FormatError("no protected header")
    header = loads_object(b64url_decode(head[:dot], what="JWE header"), what="JWE header")
    jwe.check_header(header)
    return header


def _inspect_jwe_file(path: Path) -> _EncryptedFile:
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8192)
        f.seek(max(0, size - 128))
        tail = f.read()
    stripped = tail.rstrip(b" \t\r\n")
    length = size - (len(tail) - len(stripped))
    try:
        tag = jwe.authentication_tag(stripped)
        header = _jwe_header(head)
    except FitConnectError as exc:
        raise SubmissionError(
            f"encrypted attachment {path} is not a JWE compact serialization: {exc}"
        ) from None
    return _EncryptedFile(length=length, tag=tag, header=header)


class _UploadAttempt:
    """One attempt at uploading one attachment: a fresh encryption of the source."""

    def __init__(
        self,
        spec: AttachmentSpec,
        key: RSAPublicKey,
        kid: str,
        total: int,
        progress: ProgressCallback | None,
        trace: list[Attempt],
        encrypted_file: _EncryptedFile | None,
        stream_start: int | None,
    ) -> None:
        self.spec = spec
        self.key = key
        self.kid = kid
        self.total = total
        self.progress = progress
        self.trace_entry: Attempt | None = trace[-1] if trace else None
        self.encrypted_file = encrypted_file
        self.stream_start = stream_start
        self.sent = 0
        self.complete = False
        self.sha512_hex: str | None = None
        self.tag: str | None = None
        self._closers: list[Any] = []

    def close(self) -> None:
        for closer in self._closers:
            with contextlib.suppress(Exception):  # closing must not mask the real error
                closer.close()
        self._closers.clear()

    def _open(self) -> Iterator[bytes]:
        """The chunks of the request body (runs in a worker thread when iterated)."""
        spec = self.spec
        what = f"attachment {spec.attachment_id}"
        if spec.encrypted_token is not None:
            return _chunks(spec.encrypted_token.encode("ascii"), CHUNK_SIZE)
        if spec.encrypted_path is not None:
            assert self.encrypted_file is not None
            f = spec.encrypted_path.open("rb")
            self._closers.append(f)
            reader = _BoundedReader(f, self.encrypted_file.length, what)
            return iter(lambda: reader.read(CHUNK_SIZE), b"")
        assert spec.size is not None
        source: BinaryIO
        if spec.content is not None:
            source = io.BytesIO(spec.content)
        elif spec.path is not None:
            source = spec.path.open("rb")
            self._closers.append(source)
        else:
            assert spec.stream is not None
            if self.stream_start is not None:
                spec.stream.seek(self.stream_start)
            source = spec.stream
        iterator = jwe.iter_encrypt(
            _BoundedReader(source, spec.size, what),
            self.key,
            kid=self.kid,
            cty=spec.mime_type,
            chunk_size=CHUNK_SIZE,
            plaintext_length=spec.size,
        )
        self._closers.append(iterator)
        self._iterator = iterator
        return iter(iterator)

    def _next_batch(
        self, chunks: Iterator[bytes] | None
    ) -> tuple[Iterator[bytes], list[bytes], bool]:
        """``(chunks, next chunks up to about CHUNK_SIZE bytes, exhausted)``; opens the body on
        the first call (runs in a worker thread)."""
        if chunks is None:
            chunks = self._open()
        batch: list[bytes] = []
        size = 0
        for chunk in chunks:
            batch.append(chunk)
            size += len(chunk)
            if size >= CHUNK_SIZE:
                return chunks, batch, False
        return chunks, batch, True

    async def body(self) -> AsyncIterator[bytes]:
        if self.progress is not None:
            self.progress(self.spec.attachment_id, 0, self.total)
        chunks: Iterator[bytes] | None = None
        try:
            done = False
            while not done:
                # One thread hop per ~CHUNK_SIZE bytes: a small attachment's chunks (JWE prefix,
                # ciphertext, tag) come in one hop instead of one each.
                chunks, batch, done = await asyncio.to_thread(self._next_batch, chunks)
                for chunk in batch:
                    self.sent += len(chunk)
                    yield chunk
                    if self.progress is not None:
                        self.progress(self.spec.attachment_id, self.sent, self.total)
            if self.sent != self.total:
                raise SubmissionError(
                    f"attachment {self.spec.attachment_id}: produced {self.sent} bytes but "
                    f"announced Content-Length {self.total}"
                )
            self._finish()
            self.complete = True
        finally:
            self.close()

    def _finish(self) -> None:
        spec = self.spec
        if spec.pre_encrypted:
            self.sha512_hex = spec.sha512_hex
            self.tag = (
                self.encrypted_file.tag
                if self.encrypted_file is not None
                else jwe.authentication_tag(spec.encrypted_token or "")
            )
            return
        result = self._iterator.result
        if result.plaintext_length != spec.size:
            raise SubmissionError(
                f"attachment {spec.attachment_id}: read {result.plaintext_length} bytes, "
                f"expected {spec.size}"
            )
        self.sha512_hex = result.plaintext_sha512
        self.tag = result.authentication_tag


# --- the async sender ---------------------------------------------------------------------------


class AsyncSender(AsyncClientBase):
    """Sender SDK, async. Create one per environment and reuse it (it caches the token).

    ``transport`` injects an ``httpx.AsyncBaseTransport`` (tests, proxies); ``trust_policy``
    overrides the environment's policy for destination keys; ``clock``, ``sleep`` and ``rand``
    make time and jitter deterministic in tests. ``destination_check_ttl``: seconds for which
    :meth:`send` reuses a passed destination check (status, service, schema, reply channel,
    metadata version, validated encryption key) for further submissions to the same
    destination; 0 checks before every submission.
    """

    _role = "sender"

    def __init__(
        self,
        environment: Environment,
        credentials: Credentials,
        *,
        limits: Limits | None = None,
        destination_check_ttl: float = DESTINATION_CHECK_TTL_SECONDS,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.limits = limits or Limits()
        self.destination_check_ttl = destination_check_ttl
        self._checked: dict[tuple[Any, ...], tuple[datetime, CheckedDestination]] = {}
        # destination id → recent decision delays (seconds after sending), see wait().
        self._decision_delays: dict[str, deque[float]] = {}
        super().__init__(environment, credentials, **options)

    # --- destinations ----------------------------------------------------------------------------

    async def get_destination(self, destination_id: str) -> PublicDestination:
        """The public information of a destination (``GET /v1/destinations/{id}``)."""
        dest_id = parse_uuid(destination_id, field="destination id")
        data = await self._core.get_json(f"/destinations/{dest_id}", what=f"destination {dest_id}")
        return parse_answer(
            PublicDestination,
            data,
            problem=f"destination {dest_id}: the Zustelldienst's answer is not a destination",
            url=self.environment.api_url(f"/destinations/{dest_id}"),
        )

    async def get_encryption_key(
        self, destination: PublicDestination
    ) -> tuple[RSAPublicKey, dict[str, Any]]:
        """Fetch the destination's encryption key (by ``encryptionKid``) and validate it."""
        dest_id = destination.destination_id
        kid = destination.encryption_kid
        try:
            jwk = await self._core.get_json(
                f"/destinations/{dest_id}/keys/{kid}",
                what=f"encryption key {kid!r} of destination {dest_id}",
            )
        except NotFoundError:
            raise EncryptionKeyRejectedError(
                f"destination {dest_id} names encryption key {kid!r}, but the Zustelldienst has "
                "no such key; its operator must upload the key or fix encryptionKid",
                destination_id=dest_id,
            ) from None
        if not isinstance(jwk, dict) or jwk.get("kid") != kid:
            got = jwk.get("kid") if isinstance(jwk, dict) else None
            raise EncryptionKeyRejectedError(
                f"destination {dest_id}: asked for encryption key {kid!r}, got "
                f"{'no JWK' if got is None else repr(got)}",
                destination_id=dest_id,
            )
        policy = self.trust_policy()
        try:
            key = validate_destination_key(
                jwk, purpose=KeyPurpose.ENCRYPTION, policy=policy, clock=self.clock
            )
        except FitConnectError as exc:
            hint = (
                "in the test environment self-signed chains are accepted, on stage and prod the "
                "chain must end in the Verwaltungs-PKI (configure trust anchors)"
                if policy.allow_self_signed is False
                else "the destination's operator must register a valid key"
            )
            raise EncryptionKeyRejectedError(
                f"the encryption key {kid!r} of destination {dest_id} is not acceptable: {exc}; "
                f"nothing was sent ({hint})",
                destination_id=dest_id,
            ) from exc
        return key, jwk

    async def check_destination(
        self,
        destination_id: str,
        *,
        service: str,
        data_schema: tuple[str, str] | None = None,
        reply_channel: str | None = None,
    ) -> CheckedDestination:
        """Check that a destination can receive a submission — before anything is sent.

        ``service`` is the service identifier (Leistungsschlüssel or URN), ``data_schema`` the
        ``(schemaUri, mimeType)`` of the Fachdaten, ``reply_channel`` the wire name of the reply
        channel (``eMail``, ``deMail``, ``fink``, ``elster``, ``fitConnect``). Raises a
        :class:`~fitconnect_kit.client.errors.DestinationCheckError` subclass naming the fix.
        """
        destination = await self.get_destination(destination_id)
        dest_id = destination.destination_id
        if destination.status is not DestinationStatus.ACTIVE:
            raise DestinationInactiveError(
                f"destination {dest_id} is {destination.status.value!r}; it accepts submissions "
                "only when 'active' — ask its operator to activate it, or send elsewhere",
                destination_id=dest_id,
            )
        offered = self._service_of(destination, service)
        if data_schema is not None:
            self._check_schema(destination, offered, data_schema)
        version = self._pick_metadata_version(destination, reply_channel)
        if reply_channel is not None:
            self._check_reply_channel(destination, offered, reply_channel)
        key, jwk = await self.get_encryption_key(destination)
        log.debug(
            "destination %s checked: metadata %s, encryption key %s",
            dest_id,
            version,
            destination.encryption_kid,
        )
        return CheckedDestination(
            destination=destination,
            service=offered,
            metadata_version=version,
            encryption_kid=destination.encryption_kid,
            encryption_key=key,
            encryption_jwk=jwk,
        )

    @staticmethod
    def _service_of(destination: PublicDestination, service: str) -> DestinationService:
        dest_id = destination.destination_id
        try:
            identifier = parse_service_identifier(service)
        except FormatError as exc:
            raise ServiceNotOfferedError(str(exc), destination_id=dest_id) from None
        offered = destination.service(identifier)
        if offered is None:
            names = ", ".join(s.identifier for s in destination.services) or "none"
            raise ServiceNotOfferedError(
                f"destination {dest_id} does not offer service {identifier} (it offers: "
                f"{names}); check the Leistungsschlüssel or find the right destination via "
                "the Routing API",
                destination_id=dest_id,
            )
        return offered

    @staticmethod
    def _check_schema(
        destination: PublicDestination, offered: DestinationService, data_schema: tuple[str, str]
    ) -> None:
        uri, mime = data_schema
        if any(s.schema_uri == uri and s.mime_type == mime for s in offered.submission_schemas):
            return
        listing = (
            ", ".join(f"{s.schema_uri} ({s.mime_type})" for s in offered.submission_schemas)
            or "none"
        )
        raise DataSchemaNotOfferedError(
            f"destination {destination.destination_id} does not accept data schema {uri} "
            f"({mime}) for service {offered.identifier} (accepted: {listing}); send data in "
            "an accepted schema or agree on the schema with the receiving authority",
            destination_id=destination.destination_id,
        )

    @staticmethod
    def _pick_metadata_version(destination: PublicDestination, reply_channel: str | None) -> str:
        ours = set(KNOWN_METADATA_VERSIONS)
        if reply_channel == ReplyChannelKind.FIT_CONNECT.value:
            floor = _version_key(FIT_CONNECT_REPLY_CHANNEL_SINCE)
            ours = {v for v in ours if _version_key(v) >= floor}
        common = sorted(ours & set(destination.metadata_versions), key=_version_key)
        if common:
            return common[-1]
        theirs = ", ".join(destination.metadata_versions) or "none"
        extra = (
            f" (the FIT-Connect reply channel needs ≥ {FIT_CONNECT_REPLY_CHANNEL_SINCE})"
            if reply_channel == ReplyChannelKind.FIT_CONNECT.value
            else ""
        )
        raise MetadataVersionNotSupportedError(
            f"destination {destination.destination_id} supports metadata versions {theirs}, this "
            f"SDK writes {', '.join(sorted(ours, key=_version_key))}{extra}; no common version",
            destination_id=destination.destination_id,
        )

    @staticmethod
    def _offered_reply_channels(
        destination: PublicDestination, offered: DestinationService
    ) -> list[str]:
        channels = (
            offered.reply_channels
            if offered.reply_channels is not None
            else destination.reply_channels
        )
        return channels.channel_names() if channels is not None else []

    def _check_reply_channel(
        self, destination: PublicDestination, offered: DestinationService, reply_channel: str
    ) -> None:
        names = self._offered_reply_channels(destination, offered)
        if reply_channel in names:
            return
        listing = ", ".join(names) if names else "none — the authority answers by post"
        raise ReplyChannelNotOfferedError(
            f"destination {destination.destination_id} does not offer reply channel "
            f"{reply_channel!r} for service {offered.identifier} (offered: {listing}); choose "
            "an offered reply channel or none",
            destination_id=destination.destination_id,
        )

    async def inspect_destination(
        self,
        destination_id: str,
        *,
        service: str | None = None,
        data_schema: tuple[str, str] | None = None,
        reply_channel: str | None = None,
    ) -> DestinationReport:
        """Everything about a destination with the check results — without raising on them."""
        destination = await self.get_destination(destination_id)
        problems: list[str] = []
        if destination.status is not DestinationStatus.ACTIVE:
            problems.append(f"status is {destination.status.value!r}, not 'active'")
        version: str | None = None
        try:
            version = self._pick_metadata_version(destination, reply_channel)
        except MetadataVersionNotSupportedError as exc:
            problems.append(str(exc))
        if service is not None:
            try:
                offered = self._service_of(destination, service)
                if data_schema is not None:
                    self._check_schema(destination, offered, data_schema)
                if reply_channel is not None:
                    self._check_reply_channel(destination, offered, reply_channel)
            except (ServiceNotOfferedError, DataSchemaNotOfferedError) as exc:
                problems.append(str(exc))
            except ReplyChannelNotOfferedError as exc:
                problems.append(str(exc))
        key_problem: str | None = None
        try:
            await self.get_encryption_key(destination)
        except EncryptionKeyRejectedError as exc:
            key_problem = str(exc)
            problems.append(key_problem)
        return DestinationReport(
            destination=destination,
            environment=self.environment.name,
            metadata_version=version,
            encryption_kid=destination.encryption_kid,
            key_valid=key_problem is None,
            key_problem=key_problem,
            problems=tuple(problems),
        )

    # --- sending ---------------------------------------------------------------------------------

    async def send(
        self, submission: Submission, *, progress: ProgressCallback | None = None
    ) -> SentSubmission:
        """Check the destination, announce, upload attachments, submit.

        A passed destination check is reused for ``destination_check_ttl`` seconds (see the
        class); a failed send discards it.
        ``progress(attachment_id, bytes_done, bytes_total)`` is called while attachments are
        uploaded (encrypted bytes). If anything fails after the announcement, the exception
        carries a note with the submission id; the Zustelldienst deletes incomplete
        submissions after one day.
        """
        check_key = (
            submission.destination_id,
            submission.service.identifier,
            submission.data_schema,
            submission.reply_channel,
        )
        try:
            checked = await self._checked_destination(check_key)
            return await self._send_checked(submission, checked, progress)
        except BaseException:
            # Whatever went wrong (e.g. the destination was deactivated or its key rotated):
            # the next submission checks the destination afresh.
            self._checked.pop(check_key, None)
            raise

    async def _checked_destination(self, key: tuple[Any, ...]) -> CheckedDestination:
        """:meth:`check_destination`, reused for ``destination_check_ttl`` seconds."""
        now = self.clock.now()
        cached = self._checked.get(key)
        if cached is not None and (now - cached[0]).total_seconds() < self.destination_check_ttl:
            return cached[1]
        destination_id, service, data_schema, reply_channel = key
        checked = await self.check_destination(
            destination_id, service=service, data_schema=data_schema, reply_channel=reply_channel
        )
        if self.destination_check_ttl > 0:
            self._checked[key] = (now, checked)
        return checked

    async def _send_checked(
        self,
        submission: Submission,
        checked: CheckedDestination,
        progress: ProgressCallback | None,
    ) -> SentSubmission:
        submission.check_metadata(checked.metadata_version)
        self._check_pre_encrypted(submission, checked)
        plan = await asyncio.to_thread(self._plan_uploads, submission, checked)

        announce = AnnounceSubmission(
            destination_id=checked.destination_id,
            announced_attachments=[spec.attachment_id for spec, _, _ in plan],
            service_type=submission.service,
            callback=submission.callback,
            case_id=submission.case_id,
        )
        response = await self._core.send(
            "POST",
            "/submissions",
            content=announce.to_bytes(),
            headers={"Content-Type": "application/json"},
            safety=Safety.UNSENT_ONLY,
            what=f"announcing a submission to destination {checked.destination_id}",
        )
        created = parse_answer(
            SubmissionCreated,
            self._core.json_of(response),
            problem="the Zustelldienst's answer to the announcement has no submissionId/caseId",
            url=self.environment.api_url("/submissions"),
            method="POST",
            status=response.status_code,
        )
        sid, case_id = created.submission_id, created.case_id
        log.info(
            "announced submission %s (case %s) to destination %s, %d attachment(s)",
            sid,
            case_id,
            checked.destination_id,
            len(plan),
        )
        try:
            return await self._complete(submission, checked, created, plan, progress)
        except BaseException as exc:
            log.warning(
                "submission %s was not completed (%s); the Zustelldienst deletes it after a day",
                sid,
                type(exc).__name__,
            )
            if isinstance(exc, Exception):
                exc.add_note(
                    f"submission {sid} (case {case_id}) stays incomplete and is deleted by the "
                    "Zustelldienst after one day; send again"
                )
            raise

    def _check_pre_encrypted(self, submission: Submission, checked: CheckedDestination) -> None:
        kid = checked.encryption_kid

        def check(header: dict[str, Any], what: str, cty: str | None) -> None:
            if header.get("kid") != kid:
                raise SubmissionError(
                    f"{what} was encrypted for key {header.get('kid')!r}, but destination "
                    f"{checked.destination_id} now uses encryption key {kid!r}; encrypt it again "
                    "with the current key"
                )
            if cty is not None and "cty" in header and header["cty"] != cty:
                raise SubmissionError(
                    f"{what} has JWE cty {header['cty']!r} but is declared as {cty!r}"
                )

        if isinstance(submission.data, EncryptedDataPart):
            try:
                parsed = jwe.parse(submission.data.token)
            except FitConnectError as exc:
                raise SubmissionError(f"the encrypted data is not a valid JWE: {exc}") from None
            check(parsed.header, "the encrypted data", submission.data.mime_type)
        for spec in submission.attachments:
            if spec.encrypted_token is not None:
                try:
                    # Header only: the token may be large, its ciphertext is not needed here.
                    header = _jwe_header(spec.encrypted_token[:8192].encode("ascii", "replace"))
                    jwe.authentication_tag(spec.encrypted_token)
                except FitConnectError as exc:
                    raise SubmissionError(
                        f"encrypted attachment {spec.attachment_id} is not a valid JWE: {exc}"
                    ) from None
                check(header, f"encrypted attachment {spec.attachment_id}", None)
            elif spec.encrypted_path is not None:
                info = _inspect_jwe_file(spec.encrypted_path)
                check(info.header, f"encrypted attachment {spec.encrypted_path}", None)

    def _plan_uploads(
        self, submission: Submission, checked: CheckedDestination
    ) -> list[tuple[AttachmentSpec, int, _EncryptedFile | None]]:
        """Attachments with their exact encrypted length; limits checked (no upload yet)."""
        limits = self.limits
        if len(submission.attachments) > limits.max_attachments:
            raise SubmissionLimitError(
                f"{len(submission.attachments)} attachments; FIT-Connect allows at most "
                f"{limits.max_attachments} per submission"
            )
        key_bytes = (checked.encryption_key.key_size + 7) // 8
        plan: list[tuple[AttachmentSpec, int, _EncryptedFile | None]] = []
        total = 0
        for spec in submission.attachments:
            info: _EncryptedFile | None = None
            if spec.encrypted_token is not None:
                length = len(spec.encrypted_token)
            elif spec.encrypted_path is not None:
                info = _inspect_jwe_file(spec.encrypted_path)
                length = info.length
            else:
                assert spec.size is not None
                length = jwe.compact_length(
                    spec.size, kid=checked.encryption_kid, cty=spec.mime_type, key_bytes=key_bytes
                )
            name = spec.filename or spec.attachment_id
            if length > limits.max_attachment_bytes:
                raise SubmissionLimitError(
                    f"attachment {name} is {length} bytes encrypted; FIT-Connect allows at most "
                    f"{limits.max_attachment_bytes} bytes per attachment"
                )
            total += length
            plan.append((spec, length, info))
        if total > limits.max_total_attachment_bytes:
            raise SubmissionLimitError(
                f"the attachments are {total} bytes encrypted; FIT-Connect allows at most "
                f"{limits.max_total_attachment_bytes} bytes per submission"
            )
        return plan

    async def _complete(
        self,
        submission: Submission,
        checked: CheckedDestination,
        created: SubmissionCreated,
        plan: Sequence[tuple[AttachmentSpec, int, _EncryptedFile | None]],
        progress: ProgressCallback | None,
    ) -> SentSubmission:
        sid = created.submission_id
        hashes: dict[str, str] = {}
        tags: dict[str, str] = {}
        for spec, length, info in plan:
            digest, tag = await self._upload_attachment(sid, spec, length, info, checked, progress)
            hashes[spec.attachment_id] = digest
            tags[spec.attachment_id] = tag

        data_token: str | None = None
        data_sha512: str | None = None
        if isinstance(submission.data, EncryptedDataPart):
            data_token = submission.data.token
            data_sha512 = submission.data.sha512_hex
        elif submission.data is not None:
            part = await asyncio.to_thread(
                jwe.encrypt,
                submission.data.content,
                checked.encryption_key,
                kid=checked.encryption_kid,
                cty=submission.data.mime_type,
            )
            data_token, data_sha512 = part.token, part.plaintext_sha512

        try:
            metadata = submission.metadata(
                checked.metadata_version, data_sha512=data_sha512, attachment_sha512=hashes
            ).build()
        except FitConnectError as exc:
            raise SubmissionError(f"the metadata is invalid: {exc}") from exc
        encrypted_metadata = await asyncio.to_thread(
            jwe.encrypt,
            dumps_compact(metadata),
            checked.encryption_key,
            kid=checked.encryption_kid,
            cty=METADATA_CTY,
        )
        sent_tags = AuthenticationTags(
            metadata=encrypted_metadata.authentication_tag,
            data=jwe.authentication_tag(data_token) if data_token is not None else None,
            attachments=tags,
        )
        body = SubmitSubmission(
            encrypted_metadata=encrypted_metadata.token, encrypted_data=data_token
        )
        await self._submit(created, body, sent_tags)
        log.info("submitted submission %s (case %s)", sid, created.case_id)
        return SentSubmission(
            submission_id=sid,
            case_id=created.case_id,
            destination_id=checked.destination_id,
            service=submission.service,
            metadata_version=checked.metadata_version,
            authentication_tags=sent_tags,
            attachment_ids=tuple(spec.attachment_id for spec, _, _ in plan),
            metadata=metadata,
            sent_at=self.clock.now(),
        )

    async def _upload_attachment(
        self,
        submission_id: str,
        spec: AttachmentSpec,
        length: int,
        info: _EncryptedFile | None,
        checked: CheckedDestination,
        progress: ProgressCallback | None,
    ) -> tuple[str, str]:
        aid = spec.attachment_id
        trace: list[Attempt] = []
        attempts: list[_UploadAttempt] = []
        stream_start: int | None = None
        if spec.stream is not None and spec.replayable:
            stream_start = spec.stream.tell()

        def body() -> AsyncIterator[bytes]:
            if attempts and not spec.replayable:
                raise RuntimeError("the attachment stream cannot be read a second time")
            for previous in attempts:
                previous.close()
            attempt = _UploadAttempt(
                spec,
                checked.encryption_key,
                checked.encryption_kid,
                length,
                progress,
                trace,
                info,
                stream_start,
            )
            attempts.append(attempt)
            return attempt.body()

        try:
            await self._core.send(
                "PUT",
                f"/submissions/{submission_id}/attachments/{aid}",
                body=body,
                headers={"Content-Type": "application/jose", "Content-Length": str(length)},
                safety=Safety.IDEMPOTENT,
                trace=trace,
                what=f"uploading attachment {spec.filename or aid}",
            )
            final = attempts[-1]
        except ConflictError:
            # A retry found the attachment already there: an earlier attempt whose answer was
            # lost did get through. Its ciphertext (and tag) is what the Zustelldienst stored.
            candidates = [
                a
                for a in attempts[:-1]
                if a.complete and a.trace_entry is not None and a.trace_entry.maybe_processed
            ]
            if len(candidates) != 1:
                raise
            final = candidates[0]
            log.warning(
                "attachment %s: an earlier upload attempt had reached the Zustelldienst", aid
            )
        finally:
            for attempt in attempts:
                attempt.close()
        if not final.complete or final.sha512_hex is None or final.tag is None:
            raise SubmissionError(f"attachment {aid} was not uploaded completely")
        log.debug("uploaded attachment %s (%d bytes)", aid, length)
        return final.sha512_hex, final.tag

    async def _submit(
        self, created: SubmissionCreated, body: SubmitSubmission, sent: AuthenticationTags
    ) -> None:
        trace: list[Attempt] = []
        sid = created.submission_id
        try:
            await self._core.send(
                "PUT",
                f"/submissions/{sid}",
                content=body.to_bytes(),
                headers={"Content-Type": "application/json"},
                safety=Safety.IDEMPOTENT,
                trace=trace,
                what=f"submitting submission {sid}",
            )
        except (ConflictError, InvalidRequestError):
            # After an attempt whose answer was lost, the repeat is refused because the
            # submission is already submitted: confirm that from the verified event log.
            if not any(a.maybe_processed for a in trace[:-1]):
                raise
            if not await self._submitted_with(created, sent):
                raise
            log.warning("submission %s: an earlier submit attempt had reached the ZD", sid)

    async def _submitted_with(self, created: SubmissionCreated, sent: AuthenticationTags) -> bool:
        tokens = await self._events.fetch(case_id=created.case_id)
        events = await self._events.verify(
            tokens, case_id=created.case_id, destination_id=created.destination_id
        )
        for event in events:
            if (
                event.event is Event.SUBMIT_SUBMISSION
                and event.submission_id == created.submission_id
                and event.authentication_tags is not None
            ):
                return not sent.mismatches(event.authentication_tags)
        return False

    # --- status ----------------------------------------------------------------------------------

    async def event_log(
        self,
        case_id: str | None = None,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
    ) -> list[VerifiedEvent]:
        """The verified event log of a case (or, with only ``submission_id``, of a submission)."""
        tokens = await self._events.fetch(case_id=case_id, submission_id=submission_id)
        return await self._events.verify(tokens, case_id=case_id, destination_id=destination_id)

    async def status(
        self,
        target: SentSubmission | str | None = None,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
        sent_tags: AuthenticationTags | None = None,
    ) -> StatusReport:
        """The verified status of a submission.

        ``target`` is a :class:`SentSubmission` (everything known) or a case id; then pass
        ``submission_id`` when the case holds several submissions and ``destination_id`` to
        require that receiver events come from that destination. With only ``submission_id``
        the submission's own log (``GET /v1/submissions/{id}/events``) is read. Every SET is
        verified; the
        receiver's authentication tags must equal those sent (``sent_tags`` / the
        ``SentSubmission``) and those of the Zustelldienst's ``submit-submission``. Anything
        else raises :class:`~fitconnect_kit.client.errors.EventLogVerificationError`.
        """
        if isinstance(target, SentSubmission):
            case_id = target.case_id
            submission_id = target.submission_id
            destination_id = target.destination_id
            sent_tags = target.authentication_tags
        elif target is None:
            if submission_id is None:
                raise ValueError("status() needs a SentSubmission, a case id or submission_id")
            submission_id = parse_uuid(submission_id, field="submission id")
            events = await self.event_log(
                submission_id=submission_id, destination_id=destination_id
            )
            case_id = events[0].case_id if events else ""
            return self._report(case_id, submission_id, destination_id, sent_tags, events)
        else:
            case_id = parse_uuid(target, field="case id")
            if submission_id is not None:
                submission_id = parse_uuid(submission_id, field="submission id")
        events = await self.event_log(case_id, destination_id=destination_id)
        return self._report(case_id, submission_id, destination_id, sent_tags, events)

    def _report(
        self,
        case_id: str,
        submission_id: str | None,
        destination_id: str | None,
        sent_tags: AuthenticationTags | None,
        events: Sequence[VerifiedEvent],
    ) -> StatusReport:
        in_log = list(dict.fromkeys(e.submission_id for e in events if e.submission_id))
        if submission_id is None:
            if len(in_log) > 1:
                raise AmbiguousCaseError(
                    f"case {case_id} holds {len(in_log)} submissions ({', '.join(in_log)}); "
                    "say which one (submission_id / --submission)"
                )
            submission_id = in_log[0] if in_log else None
        mine = [e for e in events if e.submission_id == submission_id]
        state = derive_state([e.set for e in mine], submission_id=submission_id)
        if destination_id is None:
            issuers = {e.issuer for e in mine if e.signer == "destination"}
            destination_id = issuers.pop() if len(issuers) == 1 else None

        problems: list[str] = []
        zd_tags = state.authentication_tags_sent
        if sent_tags is not None and zd_tags is not None:
            diff = sent_tags.mismatches(zd_tags)
            if diff:
                problems.append(
                    "the Zustelldienst recorded other authentication tags than this sender sent "
                    f"({', '.join(diff)})"
                )
        reference = sent_tags or zd_tags
        tags_checked = False
        for event in mine:
            if event.signer != "destination" or event.event not in (
                Event.ACCEPT_SUBMISSION,
                Event.REJECT_SUBMISSION,
                Event.FORWARD_SUBMISSION,
            ):
                continue
            tags = event.authentication_tags
            if tags is None:
                if event.event is Event.ACCEPT_SUBMISSION:
                    problems.append(
                        f"{event.name} (jti {event.set.jti}) carries no authenticationTags, so it "
                        "does not prove the receiver got these ciphertexts"
                    )
                continue
            if reference is None:
                problems.append(
                    f"{event.name} (jti {event.set.jti}) cannot be compared: neither the sent "
                    "tags nor a submit-submission with tags are known"
                )
                continue
            diff = reference.mismatches(tags)
            if diff:
                problems.append(
                    f"{event.name} (jti {event.set.jti}) names other authentication tags than "
                    f"were sent ({', '.join(diff)}): the receiver got different ciphertexts — "
                    "treat the submission as not delivered"
                )
            else:
                tags_checked = True
        if problems:
            raise EventLogVerificationError(
                f"submission {submission_id}: {problems[0]}", problems=problems
            )
        return StatusReport(
            case_id=case_id,
            submission_id=submission_id,
            destination_id=destination_id,
            status=state.status,
            problems=state.problems,
            events=tuple(mine),
            authentication_tags=zd_tags,
            receiver_tags=state.receiver_tags,
            content_deleted=state.content_deleted,
            tags_checked=tags_checked,
        )

    async def wait(
        self,
        target: SentSubmission | str,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
        timeout: float = 600.0,  # noqa: ASYNC109 - a polling budget, not a cancellation scope
        poll_interval: float = WAIT_POLL_INTERVAL,
        max_interval: float = 30.0,
    ) -> StatusReport:
        """Poll :meth:`status` with growing intervals until a final state or ``timeout``.

        The pauses start at ``poll_interval`` (an automatic receiver often decides within a
        second) and grow ×1.5 up to ``max_interval``; ten minutes of waiting cost 30 polls. A
        :class:`SentSubmission` sent less than ``poll_interval`` ago is first polled after one
        pause (at once it could only be ``submitted``). That first pause adapts to the
        destination: it is the median of the decision delays of its last few submissions that
        this sender waited for (at least ``poll_interval``, at most ``max_interval``), so a
        receiver that takes a second is not polled three times per submission.

        Raises :class:`~fitconnect_kit.client.errors.WaitTimeoutError` (with the last report)
        when the submission is not accepted, rejected or deleted in time.
        """
        start = self.clock.now()
        interval = max(0.1, poll_interval)
        sent = target if isinstance(target, SentSubmission) else None
        sent_at = sent.sent_at if sent is not None else None
        # Seconds after sending of the last poll that found no decision (while learning).
        undecided_at: float | None = None
        if sent is not None and sent_at is not None:
            since_sent = (start - sent_at).total_seconds()
            first_pause = self._first_pause(sent.destination_id, interval, max_interval)
            if since_sent < first_pause:
                # Just submitted: a poll now would only find it submitted. Pause first.
                undecided_at = max(0.0, since_sent)
                await self._sleep(min(first_pause - undecided_at, max(0.0, timeout)))
                interval = min(max_interval, interval * 1.5)
        while True:
            polled_at = self.clock.now()
            report = await self.status(
                target, submission_id=submission_id, destination_id=destination_id
            )
            if sent is not None and sent_at is not None and undecided_at is not None:
                since_sent = (polled_at - sent_at).total_seconds()
                if report.is_final:
                    # The decision came between the two polls: learn the midpoint.
                    self._learn_decision_delay(sent.destination_id, (undecided_at + since_sent) / 2)
                else:
                    undecided_at = since_sent
            if report.is_final:
                return report
            elapsed = (self.clock.now() - start).total_seconds()
            remaining = timeout - elapsed
            if remaining <= 0:
                raise WaitTimeoutError(
                    f"submission {report.submission_id} is still {report.status.value!r} after "
                    f"{timeout:.0f} s; the receiving system has not decided yet",
                    last_report=report,
                )
            await self._sleep(min(interval, remaining))
            interval = min(max_interval, interval * 1.5)

    def _first_pause(self, destination_id: str, poll_interval: float, max_interval: float) -> float:
        """Seconds after sending to poll first: the destination's median decision delay."""
        delays = self._decision_delays.get(destination_id)
        if not delays:
            return poll_interval
        return max(poll_interval, min(max_interval, statistics.median(delays)))

    def _learn_decision_delay(self, destination_id: str, seconds: float) -> None:
        delays = self._decision_delays.pop(destination_id, None)
        if delays is None:
            delays = deque(maxlen=DECISION_DELAY_SAMPLES)
            if len(self._decision_delays) >= DECISION_DELAY_DESTINATIONS:
                del self._decision_delays[next(iter(self._decision_delays))]  # least recent
        delays.append(seconds)
        self._decision_delays[destination_id] = delays  # re-inserted: most recent last


# --- the sync facade ----------------------------------------------------------------------------


class Sender(SyncFacadeBase[AsyncSender]):
    """Synchronous facade of :class:`AsyncSender` (same methods, blocking).

    Runs the async sender on a private event loop in a daemon thread, so it also works inside
    Jupyter or any other running event loop. Close it (or use ``with``) when done. Progress
    callbacks run in that thread.
    """

    _role = "sender"
    _async_class = AsyncSender
    _thread_name = "fitconnect-kit-sender"

    @property
    def async_sender(self) -> AsyncSender:
        """The async sender behind this facade (use it only on the facade's loop)."""
        return self._async

    def trust_policy(self) -> TrustPolicy:
        return self._async.trust_policy()

    def get_destination(self, destination_id: str) -> PublicDestination:
        return self._portal.call(self._async.get_destination(destination_id))

    def check_destination(
        self,
        destination_id: str,
        *,
        service: str,
        data_schema: tuple[str, str] | None = None,
        reply_channel: str | None = None,
    ) -> CheckedDestination:
        return self._portal.call(
            self._async.check_destination(
                destination_id,
                service=service,
                data_schema=data_schema,
                reply_channel=reply_channel,
            )
        )

    def inspect_destination(
        self,
        destination_id: str,
        *,
        service: str | None = None,
        data_schema: tuple[str, str] | None = None,
        reply_channel: str | None = None,
    ) -> DestinationReport:
        return self._portal.call(
            self._async.inspect_destination(
                destination_id,
                service=service,
                data_schema=data_schema,
                reply_channel=reply_channel,
            )
        )

    def send(
        self, submission: Submission, *, progress: ProgressCallback | None = None
    ) -> SentSubmission:
        return self._portal.call(self._async.send(submission, progress=progress))

    def event_log(
        self,
        case_id: str | None = None,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
    ) -> list[VerifiedEvent]:
        return self._portal.call(
            self._async.event_log(
                case_id, submission_id=submission_id, destination_id=destination_id
            )
        )

    def status(
        self,
        target: SentSubmission | str | None = None,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
        sent_tags: AuthenticationTags | None = None,
    ) -> StatusReport:
        return self._portal.call(
            self._async.status(
                target,
                submission_id=submission_id,
                destination_id=destination_id,
                sent_tags=sent_tags,
            )
        )

    def wait(
        self,
        target: SentSubmission | str,
        *,
        submission_id: str | None = None,
        destination_id: str | None = None,
        timeout: float = 600.0,
        poll_interval: float = WAIT_POLL_INTERVAL,
        max_interval: float = 30.0,
    ) -> StatusReport:
        return self._portal.call(
            self._async.wait(
                target,
                submission_id=submission_id,
                destination_id=destination_id,
                timeout=timeout,
                poll_interval=poll_interval,
                max_interval=max_interval,
            )
        )


__all__ = [
    "AsyncSender",
    "CheckedDestination",
    "DestinationReport",
    "Limits",
    "Sender",
    "SentSubmission",
    "StatusReport",
]
