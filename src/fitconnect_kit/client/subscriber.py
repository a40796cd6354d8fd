"""Subscriber SDK (receiving system, *Fachverfahren*): fetch, decrypt, verify, decide.

:class:`AsyncSubscriber` is the implementation; :class:`Subscriber` is its synchronous facade
(same methods, blocking). Receiving follows the reference's subscriber checklist (§12.2):

1. list pending submissions (``GET /v1/submissions?destinationId=…``, paginated);
2. fetch one (``GET /v1/submissions/{id}``) and the destination's public information;
3. read the case's event log and verify the Zustelldienst's ``submit-submission`` SET;
4. decrypt metadata and data (key selected by the JWE ``kid``) and stream every attachment
   (``GET …/attachments/{id}``) through decryption into a file — constant memory, SHA-512 in
   the same pass, the file appears only once the authentication tag verified;
5. run the §11 checks (:mod:`fitconnect_kit.client.verification`) and
6. post a signed ``accept-submission`` or ``reject-submission`` SET to the case
   (``POST /v1/cases/{caseId}/events``).

One call does it all (:meth:`AsyncSubscriber.process`); the lower-level API lets an application
decide itself (:meth:`~AsyncSubscriber.receive` → inspect → :meth:`~AsyncSubscriber.accept` /
:meth:`~AsyncSubscriber.reject` / :meth:`~AsyncSubscriber.forward`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import mimetypes
import os
import tempfile
import time
import unicodedata
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, Unpack

import httpx

from fitconnect_kit.client._base import (
    AsyncClientBase,
    ClientOptions,
    SubscriberFromConfig,
    SyncFacadeBase,
    parse_answer,
)
from fitconnect_kit.client._http import Attempt, Safety
from fitconnect_kit.client._sync import Portal
from fitconnect_kit.client.config import Credentials
from fitconnect_kit.client.environments import Environment
from fitconnect_kit.client.errors import (
    EXIT_CHECK_FAILED,
    ClientError,
    ConfigurationError,
    ConflictError,
    EventLogVerificationError,
    InvalidRequestError,
    NotFoundError,
    TransportError,
)
from fitconnect_kit.client.eventlog import VerifiedEvent
from fitconnect_kit.client.keystore import (
    DecryptionKeys,
    KeyInput,
    SigningKey,
    as_decryption_keys,
    as_signing_key,
)
from fitconnect_kit.client.schemas import SchemaRegistry
from fitconnect_kit.client.verification import (
    LocalIssue,
    Received,
    Step,
    StepStatus,
    Verdict,
    VerificationInput,
    VerificationResult,
    parse_json_document,
    verify,
)
from fitconnect_kit.protocol import api
from fitconnect_kit.protocol.api import (
    PublicDestination,
    ServiceType,
    SubmissionList,
    SubmissionStatus,
    SubmissionSummary,
)
from fitconnect_kit.protocol.b64 import b64url_decode
from fitconnect_kit.protocol.errors import (
    DecryptionError,
    FitConnectError,
    FormatError,
    JoseError,
)
from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    SubmissionState,
    build_set_claims,
    derive_state,
    parse_set,
    sign_set,
    submission_subject,
)
from fitconnect_kit.protocol.ids import parse_uuid
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.protocol.jose.jwe import KeyNotFoundError, PlaintextTooLargeError
from fitconnect_kit.protocol.jsonutil import loads_object
from fitconnect_kit.protocol.metadata import Metadata
from fitconnect_kit.protocol.problems import (
    Problem,
    RejectProblems,
    RejectProblemType,
    reject_problem,
)

log = logging.getLogger("fitconnect_kit.client.subscriber")

JOSE_MEDIA_TYPE = "application/jose"
METADATA_MAX_BYTES = 64 * 1024 * 1024
DATA_MAX_BYTES = jwe.DEFAULT_MAX_PLAINTEXT_SIZE
DOWNLOAD_BLOCK = 1 << 20
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 500
METADATA_FILE = "metadata.json"
DATA_FILES = {"application/json": "data.json", "application/xml": "data.xml"}
DATA_FILE_FALLBACK = "data.bin"
RESERVED_FILE_NAMES = frozenset({METADATA_FILE, DATA_FILE_FALLBACK, *DATA_FILES.values()})
DESTINATION_TTL_SECONDS = 300.0
#: Threads decrypting streamed attachments at once (per subscriber; more downloads queue).
DOWNLOAD_THREADS = 32
_HEAD_BYTES = 8192
_TAIL_BYTES = 64
_MAX_FILENAME_BYTES = 200
_WINDOWS_RESERVED = frozenset(
    {"con", "prn", "aux", "nul"}
    | {f"com{i}" for i in range(1, 10)}
    | {f"lpt{i}" for i in range(1, 10)}
)

Decide = Literal["none", "auto"]
ProblemInput = Problem | str | tuple[RejectProblemType, str | None]


# --- errors -------------------------------------------------------------------------------------


class SubmissionInvalidError(ClientError):
    """The submission did not pass verification, so it cannot be accepted (reject it)."""

    cli_exit_code: ClassVar[int] = EXIT_CHECK_FAILED

    def __init__(self, message: str, *, received: ReceivedSubmission | None = None) -> None:
        super().__init__(message)
        self.received = received


class VerificationIncompleteError(ConfigurationError):
    """A check could not run because of local configuration (e.g. a data schema missing from
    the registry): the submission is neither accepted nor rejected. Fix the configuration and
    receive it again; ``received`` holds what was received and checked so far."""

    def __init__(self, message: str, *, received: ReceivedSubmission | None = None) -> None:
        super().__init__(message)
        self.received = received


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedAttachment:
    """One attachment as received: where it was written and what the metadata says about it.

    ``path`` is ``None`` when the attachment could not be decrypted (no file is created for a
    part whose authentication tag did not verify). ``filename``, ``mime_type``, ``purpose`` and
    ``description`` come from the metadata (``None`` when it does not list the attachment).
    """

    attachment_id: str
    path: Path | None = field(repr=False)
    filename: str | None = field(repr=False)  # sender-supplied names stay out of reprs/logs
    mime_type: str | None
    purpose: str | None
    description: str | None = field(repr=False)
    size: int | None
    sha512: str | None
    authentication_tag: str | None
    error: str | None = None

    @property
    def decrypted(self) -> bool:
        return self.path is not None and self.error is None

    def to_json(self) -> dict[str, Any]:
        return {
            "attachmentId": self.attachment_id,
            "file": str(self.path) if self.path is not None else None,
            "filename": self.filename,
            "mimeType": self.mime_type,
            "purpose": self.purpose,
            "description": self.description,
            "size": self.size,
            "sha512": self.sha512,
            "authenticationTag": self.authentication_tag,
            "decrypted": self.decrypted,
        }


@dataclass(frozen=True)
class PostedEvent:
    """A SET this subscriber signed and posted to the case's event log."""

    event: Event
    jti: str
    case_id: str
    submission_id: str
    token: str = field(repr=False)
    problems: tuple[Problem, ...] = ()
    authentication_tags: AuthenticationTags | None = None

    @property
    def name(self) -> str:
        return self.event.short_name

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"event": self.name, "jti": self.jti}
        if self.problems:
            data["problems"] = [p.to_json() for p in self.problems]
        if self.authentication_tags is not None:
            data["authenticationTags"] = self.authentication_tags.to_json()
        return data


@dataclass(frozen=True)
class ReceivedSubmission:
    """A downloaded, decrypted and verified submission (and, after a decision, what was posted).

    ``verdict`` is ``valid``, ``invalid`` (see ``problems``) or ``configuration-error`` (see
    ``local_issues``). ``authentication_tags`` are the tags of what was *received*;
    ``zd_authentication_tags`` those of the Zustelldienst's verified ``submit-submission``.
    The decrypted data are in ``data`` (and ``data_path``); the metadata in ``metadata``
    (model) / ``metadata_document`` (the JSON object) and ``metadata_path``.
    """

    submission_id: str
    case_id: str
    destination_id: str
    service_type: ServiceType
    out_dir: Path
    verification: VerificationResult = field(repr=False)
    attachments: tuple[ReceivedAttachment, ...]
    authentication_tags: AuthenticationTags
    zd_authentication_tags: AuthenticationTags | None
    metadata_path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    data_path: Path | None = None
    data_cty: str | None = None
    events: tuple[VerifiedEvent, ...] = field(default=(), repr=False)
    status: SubmissionStatus | None = None
    decision: PostedEvent | None = None

    @property
    def verdict(self) -> Verdict:
        return self.verification.verdict

    @property
    def valid(self) -> bool:
        return self.verdict is Verdict.VALID

    @property
    def problems(self) -> tuple[Problem, ...]:
        return tuple(self.verification.problems)

    @property
    def local_issues(self) -> tuple[LocalIssue, ...]:
        return tuple(self.verification.local_issues)

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self.verification.steps)

    @property
    def metadata(self) -> Metadata | None:
        return self.verification.metadata

    @property
    def metadata_document(self) -> dict[str, Any] | None:
        return self.verification.metadata_document

    @property
    def metadata_version(self) -> str | None:
        return self.verification.metadata_version

    @property
    def data_mime_type(self) -> str | None:
        return self.verification.data_mime_type or self.data_cty

    @property
    def data_schema_uri(self) -> str | None:
        return self.verification.data_schema_uri

    @property
    def tags_confirmed(self) -> bool:
        """The received ciphertexts are exactly those the Zustelldienst recorded."""
        return self.zd_authentication_tags is not None and any(
            s.number == 2 and s.status is StepStatus.OK for s in self.verification.steps
        )

    def attachment(self, attachment_id: str) -> ReceivedAttachment:
        wanted = parse_uuid(attachment_id, field="attachment id")
        for item in self.attachments:
            if item.attachment_id == wanted:
                return item
        raise KeyError(attachment_id)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "submissionId": self.submission_id,
            "caseId": self.case_id,
            "destinationId": self.destination_id,
            "serviceType": self.service_type.to_json(),
            "verdict": self.verdict.value,
            "problems": [p.to_json() for p in self.problems],
            "localIssues": [i.to_json() for i in self.local_issues],
            "steps": [s.to_json() for s in self.steps],
            "metadataVersion": self.metadata_version,
            "metadataFile": str(self.metadata_path) if self.metadata_path else None,
            "dataFile": str(self.data_path) if self.data_path else None,
            "dataMimeType": self.data_mime_type,
            "dataSchemaUri": self.data_schema_uri,
            "attachments": [a.to_json() for a in self.attachments],
            "authenticationTags": self.authentication_tags.to_json(),
            "status": self.status.value if self.status else None,
            "decision": self.decision.to_json() if self.decision else None,
        }
        return data


@dataclass(frozen=True)
class CaseEventLog:
    """The verified event log of a case and the status of each submission in it."""

    case_id: str
    events: tuple[VerifiedEvent, ...]
    states: Mapping[str, SubmissionState]

    def status(self, submission_id: str | None = None) -> SubmissionStatus | None:
        if submission_id is None:
            if len(self.states) != 1:
                return None
            return next(iter(self.states.values())).status
        state = self.states.get(parse_uuid(submission_id, field="submission id"))
        return state.status if state else None

    def to_json(self) -> dict[str, Any]:
        return {
            "caseId": self.case_id,
            "events": [e.to_json() for e in self.events],
            "submissions": {
                sid: {
                    "status": state.status.value,
                    "problems": [p.to_json() for p in state.problems],
                    "contentDeleted": state.content_deleted,
                }
                for sid, state in self.states.items()
            },
        }


# --- problems -----------------------------------------------------------------------------------


def parse_problem(spec: ProblemInput, detail: str | None = None) -> Problem:
    """A reject problem from a :class:`Problem`, ``(type, instance)`` or a catalog name.

    Names are ``<type>[:<instance>]`` as in ``schema-violation:data``,
    ``hash-mismatch:attachment:<uuid>`` or ``technical-error``.
    """
    if isinstance(spec, Problem):
        return spec
    if isinstance(spec, tuple):
        ptype, instance = spec
        return reject_problem(ptype, instance, detail)
    name, _, instance = spec.strip().partition(":")
    found = RejectProblems.by_name(name)
    if found is None:
        names = ", ".join(p.name for p in RejectProblems.all())
        raise FormatError(f"unknown reject problem {name!r} (known: {names})", value=spec)
    return reject_problem(found, instance or None, detail)


# --- files --------------------------------------------------------------------------------------


def safe_filename(name: object, fallback: str) -> str:
    """A file name that stays inside its directory: no separators, no ``..``, no control
    characters, no hidden or device names, at most 200 bytes (extension kept)."""
    if not isinstance(name, str):
        return fallback
    text = unicodedata.normalize("NFC", name).replace("\\", "/").rsplit("/", 1)[-1]
    text = "".join(c for c in text if c.isprintable() and c not in '<>:"|?*')
    text = text.strip().lstrip(".").rstrip(". ")
    if not text:
        return fallback
    stem, dot, ext = text.rpartition(".")
    if not dot:
        stem, ext = text, ""
    if stem.lower() in _WINDOWS_RESERVED or text.lower() in _WINDOWS_RESERVED:
        stem = "_" + stem
    ext = ext[:20]
    suffix = f".{ext}" if ext else ""
    while len((stem + suffix).encode("utf-8")) > _MAX_FILENAME_BYTES and stem:
        stem = stem[:-1]
    return (stem + suffix) if stem else fallback


def _unique(name: str, taken: set[str], directory: Path, overwrite: bool) -> str:
    stem, dot, ext = name.rpartition(".")
    if not dot or not stem:
        stem, ext = name, ""
    candidate, number = name, 1
    while candidate.lower() in taken or (not overwrite and (directory / candidate).exists()):
        number += 1
        candidate = f"{stem} ({number})" + (f".{ext}" if ext else "")
    taken.add(candidate.lower())
    return candidate


def _attachment_infos(document: Any) -> dict[str, dict[str, Any]]:
    """Per attachment id, the metadata's string members (read leniently, for naming only)."""
    result: dict[str, dict[str, Any]] = {}
    content = document.get("contentStructure") if isinstance(document, dict) else None
    items = content.get("attachments") if isinstance(content, dict) else None
    if not isinstance(items, list):
        return result
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("attachmentId"), str):
            continue
        info = {k: v for k, v in item.items() if isinstance(v, str)}
        result.setdefault(item["attachmentId"].lower(), info)
    return result


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigurationError(f"{out} exists and is not a directory")
    if not overwrite:
        existing = [n for n in sorted(RESERVED_FILE_NAMES) if (out / n).exists()]
        if existing:
            raise ConfigurationError(
                f"{out} already holds a received submission ({existing[0]}); use an empty "
                "directory per submission (or overwrite=True)"
            )


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_all_atomic(files: Sequence[tuple[Path, bytes]]) -> None:
    """:func:`_write_atomic` for each ``(path, data)``, in order (one thread hop for all)."""
    for path, data in files:
        _write_atomic(path, data)


def _received_tags(
    metadata: Received, data: Received | None, attachments: Mapping[str, Received]
) -> AuthenticationTags:
    def ok(tag: str | None) -> str | None:
        if tag is None:
            return None
        try:
            AuthenticationTags(metadata=tag)
        except FitConnectError:
            return None
        return tag

    return AuthenticationTags(
        metadata=ok(metadata.tag),
        data=ok(data.tag) if data is not None else None,
        attachments={aid: t for aid, r in attachments.items() if (t := ok(r.tag)) is not None},
    )


# --- streaming download -------------------------------------------------------------------------


class _Blocks:
    """An async response body as ~1 MiB blocks for a worker thread; keeps head and tail bytes
    (the JWE header and authentication tag), so both are known even when decryption fails."""

    def __init__(self, response: httpx.Response) -> None:
        self._chunks = response.aiter_bytes()
        self.head = bytearray()
        self.tail = b""
        self.total = 0

    async def next_block(self) -> bytes | None:
        parts: list[bytes] = []
        size = 0
        while size < DOWNLOAD_BLOCK:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                break
            if chunk:
                parts.append(chunk)
                size += len(chunk)
        if not parts:
            return None
        block = parts[0] if len(parts) == 1 else b"".join(parts)
        if len(self.head) < _HEAD_BYTES:
            self.head += block[: _HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + block[-_TAIL_BYTES:])[-_TAIL_BYTES:]
        self.total += len(block)
        return block

    def blocking(self, loop: asyncio.AbstractEventLoop) -> Iterator[bytes]:
        """The blocks, for a worker thread (each one fetched on the event loop)."""
        while True:
            block = asyncio.run_coroutine_threadsafe(self.next_block(), loop).result()
            if block is None:
                return
            yield block

    async def drain(self) -> None:
        while await self.next_block() is not None:
            pass

    def tag(self) -> str | None:
        try:
            return jwe.authentication_tag(self.tail)
        except FitConnectError:
            return None

    def kid(self) -> str | None:
        dot = self.head.find(b".")
        if dot <= 0:
            return None
        try:
            header = loads_object(b64url_decode(bytes(self.head[:dot])), what="JWE header")
        except FitConnectError:
            return None
        kid = header.get("kid")
        return kid if isinstance(kid, str) else None


# --- the async subscriber -----------------------------------------------------------------------


class AsyncSubscriber(SubscriberFromConfig, AsyncClientBase):
    """Subscriber SDK, async. Create one per environment (and destination set) and reuse it.

    ``decryption_keys``: the destination's private encryption JWKs (files, directories,
    mappings or a :class:`~fitconnect_kit.client.keystore.DecryptionKeys`; several for key
    rotation). ``signing_key``: the private PS512 JWK whose public half is registered on the
    destination (needed to accept/reject). ``schemas``: the Fachdaten schema registry.
    ``metadata_versions`` overrides the destination's ``metadataVersions``.
    ``destination_id`` is the default for listing. ``transport``, ``clock``, ``sleep``, ``rand``
    as for :class:`~fitconnect_kit.client.sender.AsyncSender`.
    """

    def __init__(
        self,
        environment: Environment,
        credentials: Credentials,
        *,
        decryption_keys: DecryptionKeys | KeyInput | Iterable[KeyInput] | None = None,
        signing_key: SigningKey | KeyInput | None = None,
        schemas: SchemaRegistry | None = None,
        require_data_schema: bool = True,
        metadata_versions: Sequence[str] | None = None,
        destination_id: str | None = None,
        **options: Unpack[ClientOptions],
    ) -> None:
        self.decryption_keys = as_decryption_keys(decryption_keys)
        self.signing_key = as_signing_key(signing_key)
        self.schemas = schemas if schemas is not None else SchemaRegistry()
        self.require_data_schema = require_data_schema
        self.metadata_versions = tuple(metadata_versions) if metadata_versions else None
        self.destination_id = (
            parse_uuid(destination_id, field="destination id") if destination_id else None
        )
        super().__init__(environment, credentials, **options)
        self._destinations: dict[str, tuple[float, PublicDestination]] = {}
        self._known_keys: dict[tuple[str, str], bool] = {}
        self._download_threads: ThreadPoolExecutor | None = None

    async def aclose(self) -> None:
        """Close the HTTP client (if the subscriber created it) and the download threads."""
        await super().aclose()
        if self._download_threads is not None:
            self._download_threads.shutdown(wait=False)
            self._download_threads = None

    def _download_executor(self) -> ThreadPoolExecutor:
        """Threads for streamed decryption. Such a thread blocks until the event loop hands
        it the next block, so it must not come from the loop's default executor: when every
        default thread waited like that, nothing could produce the blocks if producing them
        needs a default thread too (e.g. our Zustelldienst reading blob files in the same
        process, as in ``fitconnect dev``) — a deadlock until the read timeout."""
        if self._download_threads is None:
            self._download_threads = ThreadPoolExecutor(
                max_workers=DOWNLOAD_THREADS, thread_name_prefix="fitconnect-download"
            )
        return self._download_threads

    # --- listing and fetching --------------------------------------------------------------------

    def resolve_destination_id(self, destination_id: str | None = None) -> str:
        """The destination id to use: the given one, else the default (profile)."""
        chosen = destination_id or self.destination_id
        if not chosen:
            raise ConfigurationError(
                "no destination id: pass destination_id (or --destination), or set "
                "'destinationId' in the profile"
            )
        return parse_uuid(chosen, field="destination id")

    async def list_submissions(
        self,
        destination_id: str | None = None,
        *,
        offset: int = 0,
        limit: int = DEFAULT_PAGE_SIZE,
    ) -> SubmissionList:
        """One page of the submissions waiting for pickup (``GET /v1/submissions``)."""
        dest = self.resolve_destination_id(destination_id)
        if offset < 0 or not 1 <= limit <= MAX_PAGE_SIZE:
            raise ValueError(f"offset must be ≥ 0 and limit 1…{MAX_PAGE_SIZE}")
        data = await self._core.get_json(
            "/submissions",
            params={"destinationId": dest, "offset": offset, "limit": limit},
            what=f"pending submissions of destination {dest}",
        )
        return parse_answer(
            SubmissionList,
            data,
            problem=f"pending submissions of destination {dest}: the answer is not a submission "
            "list",
            url=self.environment.api_url("/submissions"),
        )

    async def iter_submissions(
        self, destination_id: str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> AsyncIterator[SubmissionSummary]:
        """Every pending submission, page by page (each id once).

        Accepting or rejecting while iterating shortens the list on the server, so later pages
        shift; the iterator may then miss a few — poll again (the worker does).
        """
        seen: set[str] = set()
        offset = 0
        while True:
            page = await self.list_submissions(destination_id, offset=offset, limit=page_size)
            for item in page.submissions:
                if item.submission_id not in seen:
                    seen.add(item.submission_id)
                    yield item
            offset += len(page.submissions)
            if not page.submissions or offset >= page.total_count:
                return

    async def pending(self, destination_id: str | None = None) -> list[SubmissionSummary]:
        """All pending submissions as a list."""
        return [item async for item in self.iter_submissions(destination_id)]

    async def get_submission(self, submission_id: str) -> api.Submission:
        """The submission as the Zustelldienst holds it (``GET /v1/submissions/{id}``)."""
        sid = parse_uuid(submission_id, field="submission id")
        data = await self._core.get_json(f"/submissions/{sid}", what=f"submission {sid}")
        return parse_answer(
            api.Submission,
            data,
            problem=f"submission {sid}: the answer is not a submission",
            url=self.environment.api_url(f"/submissions/{sid}"),
        )

    async def get_destination(
        self, destination_id: str | None = None, *, refresh: bool = False
    ) -> PublicDestination:
        """The destination's public information (cached for a few minutes)."""
        dest = self.resolve_destination_id(destination_id)
        cached = self._destinations.get(dest)
        if (
            cached is not None
            and not refresh
            and time.monotonic() - cached[0] < (DESTINATION_TTL_SECONDS)
        ):
            return cached[1]
        data = await self._core.get_json(f"/destinations/{dest}", what=f"destination {dest}")
        destination = parse_answer(
            PublicDestination,
            data,
            problem=f"destination {dest}: the answer is not a destination",
            url=self.environment.api_url(f"/destinations/{dest}"),
        )
        self._destinations[dest] = (time.monotonic(), destination)
        return destination

    async def _destination_has_key(self, destination: PublicDestination, kid: str) -> bool:
        """Whether ``kid`` is a key the destination publishes (then a missing private key is
        our configuration problem, not the sender's)."""
        if kid == destination.encryption_kid:
            return True
        key = (destination.destination_id, kid)
        if key not in self._known_keys:
            try:
                await self._core.get_json(
                    f"/destinations/{destination.destination_id}/keys/{kid}",
                    what=f"key {kid!r} of destination {destination.destination_id}",
                )
                self._known_keys[key] = True
            except NotFoundError:
                self._known_keys[key] = False
        return self._known_keys[key]

    # --- decryption ------------------------------------------------------------------------------

    def _require_keys(self) -> DecryptionKeys:
        if not self.decryption_keys:
            raise ConfigurationError(
                "no decryption keys: pass decryption_keys= (the destination's private "
                "encryption JWKs), --key, or set keys.encryptionPrivate in the profile"
            )
        return self.decryption_keys

    async def _decryption_error(
        self, exc: Exception, kid: str | None, destination: PublicDestination
    ) -> tuple[str | None, str | None]:
        """``(error, local_error)`` for a failed decryption: the sender's fault or ours."""
        if isinstance(exc, KeyNotFoundError) and kid is not None:
            if await self._destination_has_key(destination, kid):
                return None, (
                    f"the part is encrypted for key {kid!r} of the destination, but no private "
                    "key with that kid is configured"
                )
            return (
                f"encrypted for key {kid!r}, which is not an encryption key of destination "
                f"{destination.destination_id}",
                None,
            )
        if isinstance(exc, PlaintextTooLargeError):
            return f"the plaintext exceeds the receiver's limit ({exc})", None
        if type(exc) is DecryptionError or isinstance(exc, KeyNotFoundError):
            return "could not be decrypted (wrong key, or the ciphertext was modified)", None
        return f"not an acceptable JWE: {exc}", None

    async def _decrypt_part(
        self,
        token: str | None,
        instance: str,
        destination: PublicDestination,
        *,
        max_size: int,
    ) -> tuple[Received, bytes | None]:
        if token is None:
            return Received(instance, present=False), None
        try:
            tag: str | None = jwe.authentication_tag(token)
        except FitConnectError:
            tag = None
        keys = self._require_keys()
        try:
            part = await asyncio.to_thread(jwe.decrypt, token, keys, max_plaintext_size=max_size)
        except JoseError as exc:
            kid: str | None = None
            with contextlib.suppress(FitConnectError):
                kid = jwe.parse(token).kid
            error, local = await self._decryption_error(exc, kid, destination)
            return Received(instance, tag=tag, error=error, local_error=local), None
        return (
            Received(
                instance,
                tag=part.authentication_tag,
                sha512=part.plaintext_sha512,
                size=len(part.plaintext),
                cty=part.cty,
            ),
            part.plaintext,
        )

    async def download_attachment(
        self,
        submission_id: str,
        attachment_id: str,
        path: str | os.PathLike[str],
        *,
        max_plaintext_size: int | None = None,
    ) -> jwe.StreamDecryptResult:
        """Download one attachment and decrypt it into ``path`` while it streams in.

        Constant memory, SHA-512 of the plaintext in the same pass; ``path`` is created only
        once the authentication tag verified (atomic rename). Raises the JOSE error when the
        part cannot be decrypted. Transport failures are retried (a fresh download).
        """
        result, _tag, error, _kid = await self._stream_attachment(
            parse_uuid(submission_id, field="submission id"),
            parse_uuid(attachment_id, field="attachment id"),
            Path(path),
            max_plaintext_size=max_plaintext_size,
        )
        if error is not None:
            raise error
        assert result is not None
        return result

    async def _stream_attachment(
        self,
        sid: str,
        aid: str,
        target: Path,
        *,
        max_plaintext_size: int | None = None,
    ) -> tuple[jwe.StreamDecryptResult | None, str | None, JoseError | None, str | None]:
        """``(result, tag, error, kid)``: the tag and kid are read from the stream itself."""
        keys = self._require_keys()
        loop = asyncio.get_running_loop()
        attempts = self._core.retry.max_attempts
        number = 0
        while True:
            number += 1
            try:
                async with self._core.stream(
                    "GET",
                    f"/submissions/{sid}/attachments/{aid}",
                    what=f"attachment {aid} of submission {sid}",
                ) as response:
                    blocks = _Blocks(response)
                    try:
                        result = await loop.run_in_executor(
                            self._download_executor(),
                            functools.partial(
                                jwe.decrypt_to_path,
                                blocks.blocking(loop),
                                target,
                                keys,
                                chunk_size=DOWNLOAD_BLOCK,
                                max_plaintext_size=max_plaintext_size,
                            ),
                        )
                    except JoseError as exc:
                        # Read the rest: the tag at the very end is still compared with the ZD's.
                        await blocks.drain()
                        return None, blocks.tag(), exc, blocks.kid()
                    return result, result.authentication_tag, None, blocks.kid()
            except (httpx.TransportError, TransportError) as exc:
                if number >= attempts:
                    if isinstance(exc, TransportError):
                        raise
                    raise TransportError(
                        f"downloading attachment {aid} of submission {sid} failed: "
                        f"{type(exc).__name__}; retry later",
                        method="GET",
                    ) from exc
                log.warning(
                    "attachment %s: download broke off (%s), retrying (attempt %d/%d)",
                    aid,
                    type(exc).__name__,
                    number + 1,
                    attempts,
                )
                await self._sleep(self._core.retry.backoff(number, 1.0))

    # --- event log -------------------------------------------------------------------------------

    async def _submission_events(
        self, submission: api.Submission
    ) -> tuple[tuple[VerifiedEvent, ...], AuthenticationTags | None, str | None]:
        """Verified SETs of this submission, the ZD's submit tags, or what is wrong (step 1)."""
        sid, case_id = submission.submission_id, submission.case_id
        tokens = await self._events.fetch(case_id=case_id)
        mine: list[str] = []
        for token in tokens:
            try:
                parsed = self._events.parse(token).set  # remembered for verify() below
            except FitConnectError:
                # Unknown future event types must not make every submission fail.
                log.warning("case %s: ignoring an event log entry that is not a known SET", case_id)
                continue
            if parsed.submission_id == sid:
                mine.append(token)
        try:
            events = await self._events.verify(
                mine, case_id=case_id, destination_id=submission.destination_id
            )
        except EventLogVerificationError as exc:
            return (), None, f"the event log of this submission does not verify: {exc.problems[0]}"
        submits = [
            e for e in events if e.event is Event.SUBMIT_SUBMISSION and e.signer == "zustelldienst"
        ]
        if not submits:
            return (
                tuple(events),
                None,
                "the event log has no submit-submission SET of the Zustelldienst for this "
                "submission",
            )
        tags = submits[0].authentication_tags
        if tags is None:
            return tuple(events), None, "the submit-submission SET carries no authenticationTags"
        if any(e.authentication_tags != tags for e in submits[1:]):
            return (
                tuple(events),
                None,
                "the event log has several submit-submission SETs with different tags",
            )
        return tuple(events), tags, None

    async def event_log(self, case_id: str, *, destination_id: str | None = None) -> CaseEventLog:
        """The verified event log of a case, with the derived status of each submission.

        Every SET is verified (ZD JWKS / the destination's signature key); a SET that does not
        verify raises :class:`~fitconnect_kit.client.errors.EventLogVerificationError`.
        """
        cid = parse_uuid(case_id, field="case id")
        tokens = await self._events.fetch(case_id=cid)
        events = await self._events.verify(tokens, case_id=cid, destination_id=destination_id)
        ids = list(dict.fromkeys(e.submission_id for e in events if e.submission_id))
        states = {sid: derive_state([e.set for e in events], submission_id=sid) for sid in ids}
        return CaseEventLog(case_id=cid, events=tuple(events), states=states)

    # --- receiving -------------------------------------------------------------------------------

    async def receive(
        self,
        submission_id: str,
        out_dir: str | os.PathLike[str],
        *,
        decide: Decide = "none",
        overwrite: bool = False,
    ) -> ReceivedSubmission:
        """Download, decrypt and verify a submission into ``out_dir``.

        Writes ``metadata.json``, the data (``data.json`` / ``data.xml``) and every attachment
        under its (sanitized, unique) metadata filename. ``overwrite`` replaces files of an
        earlier receive; otherwise a directory that already holds a received submission is
        refused and attachment names never replace existing files. ``decide="auto"`` then
        accepts a valid submission and rejects an invalid one (see :meth:`process`).
        """
        sid = parse_uuid(submission_id, field="submission id")
        self._require_keys()
        out = Path(out_dir)
        await asyncio.to_thread(_check_out_dir, out, overwrite)
        submission = await self.get_submission(sid)
        destination = await self.get_destination(submission.destination_id)
        events, zd_tags, log_problem = await self._submission_events(submission)
        await asyncio.to_thread(out.mkdir, mode=0o700, parents=True, exist_ok=True)

        meta_received, meta_plain = await self._decrypt_part(
            submission.encrypted_metadata, "metadata", destination, max_size=METADATA_MAX_BYTES
        )
        document: Any = None
        if meta_plain is not None:
            document, _ = parse_json_document(meta_plain)
        infos = _attachment_infos(document)

        taken = set(RESERVED_FILE_NAMES)
        attachments: dict[str, Received] = {}
        files: list[ReceivedAttachment] = []
        for raw_aid in submission.attachments:
            aid = parse_uuid(raw_aid, field="attachment id")
            info = infos.get(aid, {})
            ext = mimetypes.guess_extension(info.get("mimeType", "")) or ".bin"
            name = _unique(
                safe_filename(info.get("filename"), f"attachment-{aid}{ext}"), taken, out, overwrite
            )
            target = out / name
            result, tag, error, kid = await self._stream_attachment(sid, aid, target)
            if error is not None:
                message, local = await self._decryption_error(error, kid, destination)
                received = Received(f"attachment:{aid}", tag=tag, error=message, local_error=local)
                path: Path | None = None
            else:
                assert result is not None
                received = Received(
                    f"attachment:{aid}",
                    tag=tag,
                    sha512=result.plaintext_sha512,
                    size=result.plaintext_length,
                    cty=result.header.get("cty"),
                )
                path = target
            attachments[aid] = received
            files.append(
                ReceivedAttachment(
                    attachment_id=aid,
                    path=path,
                    filename=info.get("filename"),
                    mime_type=info.get("mimeType"),
                    purpose=info.get("purpose"),
                    description=info.get("description"),
                    size=received.size,
                    sha512=received.sha512,
                    authentication_tag=tag,
                    error=received.error or received.local_error,
                )
            )

        data_received: Received | None = None
        data_plain: bytes | None = None
        if submission.encrypted_data is not None:
            data_received, data_plain = await self._decrypt_part(
                submission.encrypted_data, "data", destination, max_size=DATA_MAX_BYTES
            )

        versions = self.metadata_versions or tuple(destination.metadata_versions)
        inp = VerificationInput(
            submission=submission,
            destination=destination,
            metadata_versions=versions,
            event_log_problem=log_problem,
            zd_tags=zd_tags,
            metadata=meta_received,
            metadata_plaintext=meta_plain,
            data=data_received,
            data_plaintext=data_plain,
            attachments=attachments,
        )
        result_ = await asyncio.to_thread(
            verify, inp, self.schemas, require_data_schema=self.require_data_schema
        )

        files_to_write: list[tuple[Path, bytes]] = []
        metadata_path: Path | None = None
        if meta_plain is not None:
            metadata_path = out / METADATA_FILE
            files_to_write.append((metadata_path, meta_plain))
        data_path: Path | None = None
        if data_plain is not None:
            mime = result_.data_mime_type or (data_received.cty if data_received else None)
            data_path = out / DATA_FILES.get(mime or "", DATA_FILE_FALLBACK)
            files_to_write.append((data_path, data_plain))
        if files_to_write:
            await asyncio.to_thread(_write_all_atomic, files_to_write)

        state = derive_state([e.set for e in events], submission_id=sid) if events else None
        received_submission = ReceivedSubmission(
            submission_id=sid,
            case_id=submission.case_id,
            destination_id=submission.destination_id,
            service_type=submission.service_type,
            out_dir=out,
            verification=result_,
            attachments=tuple(files),
            authentication_tags=_received_tags(meta_received, data_received, attachments),
            zd_authentication_tags=zd_tags,
            metadata_path=metadata_path,
            data=data_plain,
            data_path=data_path,
            data_cty=data_received.cty if data_received else None,
            events=events,
            status=state.status if state else None,
        )
        if received_submission.valid:
            log.info("submission %s received: valid", sid)
        else:
            log.info(
                "submission %s received: %s (%s)",
                sid,
                received_submission.verdict.value,
                ", ".join(
                    f"{p.type.rsplit('/', 1)[-1]} {p.instance}"
                    for p in received_submission.problems
                )
                or "; ".join(i.message for i in received_submission.local_issues),
            )
        if decide == "auto":
            return await self.decide(received_submission)
        return received_submission

    async def process(
        self, submission_id: str, out_dir: str | os.PathLike[str], *, overwrite: bool = False
    ) -> ReceivedSubmission:
        """Receive, verify, then accept (valid) or reject with the problems found (invalid).

        A submission that could not be verified completely because of local configuration
        (verdict ``configuration-error``) is neither accepted nor rejected:
        :class:`VerificationIncompleteError` is raised (with ``received``).
        """
        return await self.receive(submission_id, out_dir, decide="auto", overwrite=overwrite)

    async def decide(self, received: ReceivedSubmission) -> ReceivedSubmission:
        """Accept a valid, reject an invalid submission; returns it with ``decision`` set."""
        if received.verdict is Verdict.VALID:
            posted = await self.accept(received)
        elif received.verdict is Verdict.INVALID:
            posted = await self.reject(received)
        else:
            issue = received.local_issues[0].message if received.local_issues else "unknown"
            raise VerificationIncompleteError(
                f"submission {received.submission_id} could not be verified completely because "
                f"of local configuration, so it was neither accepted nor rejected: {issue}",
                received=received,
            )
        return replace(received, decision=posted)

    # --- decisions -------------------------------------------------------------------------------

    def _require_signing_key(self) -> SigningKey:
        if self.signing_key is None:
            raise ConfigurationError(
                "no signing key: pass signing_key= (the destination's private PS512 JWK), "
                "--signing-key, or set keys.signingPrivate in the profile"
            )
        return self.signing_key

    def build_event(
        self,
        event: Event,
        *,
        submission_id: str,
        case_id: str,
        destination_id: str,
        payload: Mapping[str, Any],
    ) -> str:
        """A signed receiver SET (``iss`` = destination, ``sub`` = submission, ``txn`` = case,
        set-payload 1.2.2), not yet posted."""
        key = self._require_signing_key()
        claims = build_set_claims(
            event,
            issuer=parse_uuid(destination_id, field="destination id"),
            subject=submission_subject(submission_id),
            case_id=case_id,
            payload=payload,
            clock=self.clock,
        )
        return sign_set(claims, key.key, key.kid)

    async def post_event_token(self, token: str) -> PostedEvent:
        """Post a signed receiver SET to its case's event log (``application/jose``).

        Repeating a post is safe: when the Zustelldienst refuses a repeat because the SET is
        already in the log (same ``jti``), that counts as posted.
        """
        st = parse_set(token)
        trace: list[Attempt] = []
        try:
            await self._core.send(
                "POST",
                f"/cases/{st.case_id}/events",
                content=token.encode("ascii"),
                headers={"Content-Type": JOSE_MEDIA_TYPE},
                safety=Safety.IDEMPOTENT,  # the same token again is refused as a duplicate jti
                trace=trace,
                what=f"posting {st.event.short_name} for submission {st.submission_id}",
            )
        except (ConflictError, InvalidRequestError):
            if not await self._in_log(st.case_id, st.jti):
                raise
            log.info("%s (jti %s) was already in the event log", st.event.short_name, st.jti)
        log.info("posted %s for submission %s", st.event.short_name, st.submission_id)
        tags = st.authentication_tags
        return PostedEvent(
            event=st.event,
            jti=st.jti,
            case_id=st.case_id,
            submission_id=st.submission_id or "",
            token=token,
            problems=tuple(st.problems),
            authentication_tags=tags,
        )

    async def _in_log(self, case_id: str, jti: str) -> bool:
        tokens = await self._events.fetch(case_id=case_id)
        for token in tokens:
            with contextlib.suppress(FitConnectError):
                if parse_set(token).jti == jti:
                    return True
        return False

    async def post_event(
        self,
        event: Event,
        *,
        submission_id: str,
        case_id: str,
        destination_id: str,
        payload: Mapping[str, Any],
    ) -> PostedEvent:
        """Build, sign and post a receiver SET."""
        token = await asyncio.to_thread(
            self.build_event,
            event,
            submission_id=submission_id,
            case_id=case_id,
            destination_id=destination_id,
            payload=payload,
        )
        return await self.post_event_token(token)

    def decision_token(
        self,
        received: ReceivedSubmission,
        event: Event,
        problems: Sequence[ProblemInput] | None = None,
        *,
        force: bool = False,
    ) -> str:
        """The signed SET for a decision about ``received`` (see :meth:`accept`/:meth:`reject`)."""
        payload: dict[str, Any]
        if event is Event.ACCEPT_SUBMISSION:
            if received.verdict is not Verdict.VALID and not force:
                what = (
                    f"{len(received.problems)} problem(s)"
                    if received.problems
                    else "it could not be verified completely"
                )
                raise SubmissionInvalidError(
                    f"submission {received.submission_id} cannot be accepted: {what}; reject it "
                    "(or pass force=True)",
                    received=received,
                )
            payload = {"authenticationTags": received.authentication_tags}
        elif event is Event.REJECT_SUBMISSION:
            chosen = [parse_problem(p) for p in (problems or received.problems)]
            if not chosen:
                raise ValueError("a rejection needs at least one problem")
            payload = {"problems": chosen}
            # Tags confirm *what* was rejected; they are sent only when they are exactly the
            # ones the Zustelldienst recorded (otherwise the problems say which part differs).
            if received.tags_confirmed:
                payload["authenticationTags"] = received.authentication_tags
        elif event is Event.FORWARD_SUBMISSION:
            payload = {"authenticationTags": received.authentication_tags}
        else:
            raise ValueError(f"{event.short_name} is not a receiver decision")
        return self.build_event(
            event,
            submission_id=received.submission_id,
            case_id=received.case_id,
            destination_id=received.destination_id,
            payload=payload,
        )

    async def accept(self, received: ReceivedSubmission, *, force: bool = False) -> PostedEvent:
        """Post ``accept-submission`` with the authentication tags of what was received.

        Refuses (:class:`SubmissionInvalidError`) a submission that is not valid unless
        ``force``.
        """
        token = await asyncio.to_thread(
            self.decision_token, received, Event.ACCEPT_SUBMISSION, force=force
        )
        return await self.post_event_token(token)

    async def reject(
        self, received: ReceivedSubmission, problems: Sequence[ProblemInput] | None = None
    ) -> PostedEvent:
        """Post ``reject-submission`` with ``problems`` (default: the problems found).

        Problems are :class:`~fitconnect_kit.protocol.problems.Problem` objects,
        ``(RejectProblems.X, instance)`` or names like ``"schema-violation:data"``.
        """
        token = await asyncio.to_thread(
            self.decision_token, received, Event.REJECT_SUBMISSION, problems
        )
        return await self.post_event_token(token)

    async def forward(self, received: ReceivedSubmission) -> PostedEvent:
        """Post ``forward-submission`` (an intermediary passed the submission on)."""
        token = await asyncio.to_thread(self.decision_token, received, Event.FORWARD_SUBMISSION)
        return await self.post_event_token(token)


# --- the sync facade ----------------------------------------------------------------------------


class Subscriber(SubscriberFromConfig, SyncFacadeBase[AsyncSubscriber]):
    """Synchronous facade of :class:`AsyncSubscriber` (same methods, blocking).

    Runs the async subscriber on a private event loop in a daemon thread (works inside Jupyter
    and other running loops). Close it (or use ``with``) when done.
    """

    _async_class = AsyncSubscriber
    _thread_name = "fitconnect-kit-subscriber"

    @property
    def async_subscriber(self) -> AsyncSubscriber:
        """The async subscriber behind this facade (use it only on the facade's loop)."""
        return self._async

    @property
    def portal(self) -> Portal:
        return self._portal

    def list_submissions(
        self, destination_id: str | None = None, *, offset: int = 0, limit: int = DEFAULT_PAGE_SIZE
    ) -> SubmissionList:
        return self._portal.call(
            self._async.list_submissions(destination_id, offset=offset, limit=limit)
        )

    def iter_submissions(
        self, destination_id: str | None = None, *, page_size: int = DEFAULT_PAGE_SIZE
    ) -> Iterator[SubmissionSummary]:
        return self._portal.iterate(
            self._async.iter_submissions(destination_id, page_size=page_size)
        )

    def pending(self, destination_id: str | None = None) -> list[SubmissionSummary]:
        return self._portal.call(self._async.pending(destination_id))

    def get_submission(self, submission_id: str) -> api.Submission:
        return self._portal.call(self._async.get_submission(submission_id))

    def get_destination(
        self, destination_id: str | None = None, *, refresh: bool = False
    ) -> PublicDestination:
        return self._portal.call(self._async.get_destination(destination_id, refresh=refresh))

    def download_attachment(
        self,
        submission_id: str,
        attachment_id: str,
        path: str | os.PathLike[str],
        *,
        max_plaintext_size: int | None = None,
    ) -> jwe.StreamDecryptResult:
        return self._portal.call(
            self._async.download_attachment(
                submission_id, attachment_id, path, max_plaintext_size=max_plaintext_size
            )
        )

    def receive(
        self,
        submission_id: str,
        out_dir: str | os.PathLike[str],
        *,
        decide: Decide = "none",
        overwrite: bool = False,
    ) -> ReceivedSubmission:
        return self._portal.call(
            self._async.receive(submission_id, out_dir, decide=decide, overwrite=overwrite)
        )

    def process(
        self, submission_id: str, out_dir: str | os.PathLike[str], *, overwrite: bool = False
    ) -> ReceivedSubmission:
        return self._portal.call(self._async.process(submission_id, out_dir, overwrite=overwrite))

    def decide(self, received: ReceivedSubmission) -> ReceivedSubmission:
        return self._portal.call(self._async.decide(received))

    def accept(self, received: ReceivedSubmission, *, force: bool = False) -> PostedEvent:
        return self._portal.call(self._async.accept(received, force=force))

    def reject(
        self, received: ReceivedSubmission, problems: Sequence[ProblemInput] | None = None
    ) -> PostedEvent:
        return self._portal.call(self._async.reject(received, problems))

    def forward(self, received: ReceivedSubmission) -> PostedEvent:
        return self._portal.call(self._async.forward(received))

    def post_event(
        self,
        event: Event,
        *,
        submission_id: str,
        case_id: str,
        destination_id: str,
        payload: Mapping[str, Any],
    ) -> PostedEvent:
        return self._portal.call(
            self._async.post_event(
                event,
                submission_id=submission_id,
                case_id=case_id,
                destination_id=destination_id,
                payload=payload,
            )
        )

    def event_log(self, case_id: str, *, destination_id: str | None = None) -> CaseEventLog:
        return self._portal.call(self._async.event_log(case_id, destination_id=destination_id))


__all__ = [
    "AsyncSubscriber",
    "CaseEventLog",
    "PostedEvent",
    "ProblemInput",
    "ReceivedAttachment",
    "ReceivedSubmission",
    "SubmissionInvalidError",
    "Subscriber",
    "VerificationIncompleteError",
    "parse_problem",
    "safe_filename",
]
