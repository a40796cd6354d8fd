"""Building a submission (Einreichung): service, Fachdaten, attachments, metadata inputs.

:class:`SubmissionBuilder` collects everything a sender knows *before* talking to the
Zustelldienst and checks each input at once (metadata inputs are validated with
:class:`~fitconnect_kit.protocol.metadata.MetadataBuilder` as they are given). :meth:`build`
returns an immutable :class:`Submission` that :meth:`AsyncSender.send
<fitconnect_kit.client.sender.AsyncSender.send>` encrypts and sends; the metadata document itself
is built at send time, for the metadata version the destination supports, with the hashes
computed while encrypting.

Fachdaten are held in memory (they are small structured documents); attachments are read in
chunks from bytes, files or binary streams and never held in memory as a whole. Parts that were
already encrypted elsewhere (e.g. in the citizen's browser) are accepted as JWE compact tokens
together with the SHA-512 of their plaintext.
"""

from __future__ import annotations

import io
import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, BinaryIO, Self
from xml.parsers import expat

from fitconnect_kit.client.errors import SubmissionError
from fitconnect_kit.protocol import ids
from fitconnect_kit.protocol.api import CallbackConfig, ServiceType
from fitconnect_kit.protocol.errors import FitConnectError, FormatError
from fitconnect_kit.protocol.jsonutil import dumps_compact, loads_strict
from fitconnect_kit.protocol.metadata import (
    KNOWN_METADATA_VERSIONS,
    AttachmentPurpose,
    MetadataBuilder,
    PaymentMethod,
    PaymentStatus,
    ReplyChannelKind,
)

JSON = "application/json"
XML = "application/xml"
DATA_MIME_TYPES = (JSON, XML)
DEFAULT_ATTACHMENT_MIME_TYPE = "application/octet-stream"
_PLACEHOLDER_HASH = "0" * 128
_VALIDATION_VERSION = KNOWN_METADATA_VERSIONS[-1]

AttachmentSource = bytes | bytearray | memoryview | str | os.PathLike[str] | BinaryIO


# --- parts --------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DataPart:
    """Fachdaten to be encrypted by the SDK: the exact bytes, their schema and MIME type."""

    content: bytes
    schema_uri: str
    mime_type: str

    def __repr__(self) -> str:
        return f"DataPart({self.mime_type}, {len(self.content)} bytes, schema={self.schema_uri!r})"


@dataclass(frozen=True, repr=False)
class EncryptedDataPart:
    """Fachdaten encrypted elsewhere: the JWE token and the SHA-512 (hex) of the plaintext."""

    token: str
    sha512_hex: str
    schema_uri: str
    mime_type: str

    def __repr__(self) -> str:
        return (
            f"EncryptedDataPart({self.mime_type}, {len(self.token)} chars, "
            f"schema={self.schema_uri!r})"
        )


@dataclass(frozen=True, repr=False)
class AttachmentSpec:
    """One attachment: its metadata entry plus where to read it from.

    Exactly one source is set: ``content`` (bytes), ``path`` (a file), ``stream`` (a binary
    stream, read from its current position) or ``encrypted_token``/``encrypted_path`` (a JWE
    made elsewhere; ``sha512_hex`` is then the hash of its plaintext). ``size`` is the plaintext
    size (unknown, ``None``, for encrypted parts).
    """

    attachment_id: str
    purpose: AttachmentPurpose
    mime_type: str
    filename: str | None = None
    description: str | None = None
    content: bytes | None = None
    path: Path | None = None
    stream: BinaryIO | None = None
    size: int | None = None
    encrypted_token: str | None = None
    encrypted_path: Path | None = None
    sha512_hex: str | None = None

    def __repr__(self) -> str:
        source = (
            "bytes"
            if self.content is not None
            else f"path={self.path}"
            if self.path is not None
            else "stream"
            if self.stream is not None
            else "pre-encrypted"
        )
        return (
            f"AttachmentSpec({self.attachment_id}, {self.purpose.value}, {self.mime_type}, "
            f"filename={self.filename!r}, {source}, size={self.size})"
        )

    @property
    def pre_encrypted(self) -> bool:
        return self.encrypted_token is not None or self.encrypted_path is not None

    @property
    def replayable(self) -> bool:
        """Whether the source can be read again (for a retried upload)."""
        if self.stream is None:
            return True
        try:
            return bool(self.stream.seekable())
        except (AttributeError, OSError, ValueError):
            return False


# --- the submission -------------------------------------------------------------------------------

MetadataOp = tuple[str, tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Submission:
    """Everything to send to one destination (built by :class:`SubmissionBuilder`)."""

    destination_id: str
    service: ServiceType
    data: DataPart | EncryptedDataPart | None
    attachments: tuple[AttachmentSpec, ...]
    reply_channel: str | None = None
    callback: CallbackConfig | None = field(default=None, repr=False)
    case_id: str | None = None
    metadata_ops: tuple[MetadataOp, ...] = field(default=(), repr=False)

    @property
    def data_schema(self) -> tuple[str, str] | None:
        """``(schemaUri, mimeType)`` of the Fachdaten, if any."""
        if self.data is None:
            return None
        return self.data.schema_uri, self.data.mime_type

    def metadata(
        self,
        version: str,
        *,
        data_sha512: str | None,
        attachment_sha512: Mapping[str, str],
    ) -> MetadataBuilder:
        """A :class:`MetadataBuilder` with every input applied for metadata ``version``."""
        builder = MetadataBuilder(version)
        builder.service(self.service.identifier, self.service.name)
        if self.data is not None:
            if data_sha512 is None:
                raise SubmissionError("internal error: the data hash is missing")
            builder.data(data_sha512, self.data.schema_uri, self.data.mime_type)
        for spec in self.attachments:
            builder.attachment(
                spec.attachment_id,
                attachment_sha512[spec.attachment_id],
                spec.purpose,
                spec.mime_type,
                filename=spec.filename,
                description=spec.description,
            )
        for name, args, kwargs in self.metadata_ops:
            getattr(builder, name)(*args, **kwargs)
        return builder

    def check_metadata(self, version: str) -> None:
        """Build the metadata with placeholder hashes to find input errors before sending."""
        try:
            self.metadata(
                version,
                data_sha512=_PLACEHOLDER_HASH,
                attachment_sha512={a.attachment_id: _PLACEHOLDER_HASH for a in self.attachments},
            ).build()
        except FitConnectError as exc:
            raise SubmissionError(
                f"the submission's metadata would be invalid for version {version}: {exc}"
            ) from exc


# --- builder ------------------------------------------------------------------------------------


def _mime_for(filename: str | None) -> str:
    if filename:
        guessed, _ = mimetypes.guess_type(filename, strict=False)
        if guessed:
            return guessed
    return DEFAULT_ATTACHMENT_MIME_TYPE


def _check_xml(content: bytes) -> None:
    parser = expat.ParserCreate()
    # Never resolve external entities; the document is our own caller's, but stay safe.
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    try:
        parser.Parse(content, True)
    except expat.ExpatError as exc:
        raise SubmissionError(f"XML data is not well-formed: {exc}") from None


def _stream_size(stream: BinaryIO) -> int | None:
    try:
        if not stream.seekable():
            return None
        here = stream.tell()
        end = stream.seek(0, io.SEEK_END)
        stream.seek(here)
        return end - here
    except (AttributeError, OSError, ValueError):
        return None


def _token_text(token: str | bytes, what: str) -> str:
    if isinstance(token, bytes | bytearray):
        try:
            token = bytes(token).decode("ascii")
        except UnicodeDecodeError:
            raise SubmissionError(f"{what} must be a JWE compact serialization (ASCII)") from None
    text = token.strip()
    if text.count(".") != 4:
        raise SubmissionError(
            f"{what} must be a JWE compact serialization (5 segments separated by '.')"
        )
    return text


def _sha512_hex(value: str, what: str) -> str:
    if (
        not isinstance(value, str)
        or len(value) != 128
        or any(c not in "0123456789abcdefABCDEF" for c in value)
    ):
        raise SubmissionError(f"{what} must be the SHA-512 of the plaintext as 128 hex characters")
    return value.lower()


class SubmissionBuilder:
    """Fluent builder of a :class:`Submission`.

    >>> submission = (
    ...     SubmissionBuilder("879ee109-a690-4db8-ab32-424284184d7d")
    ...     .service("99123456760610", "Antrag auf Wohngeld")
    ...     .json_data({"antrag": {"name": "Erika Mustermann"}},
    ...                schema_uri="https://schema.fitko.de/fim/s00000096_1.0.schema.json")
    ...     .attachment(b"%PDF-1.7 ...", filename="antrag.pdf", purpose="form")
    ...     .reply_email("erika@example.org")
    ...     .build()
    ... )
    """

    def __init__(self, destination_id: str | None = None) -> None:
        self._destination_id: str | None = None
        if destination_id is not None:
            self.destination(destination_id)
        self._service: tuple[str, str | None] | None = None
        self._data: DataPart | EncryptedDataPart | None = None
        self._attachments: list[AttachmentSpec] = []
        self._reply_channel: str | None = None
        self._ops: list[MetadataOp] = []
        self._callback: CallbackConfig | None = None
        self._case_id: str | None = None
        # Validates metadata inputs as they come, with the newest version we know.
        self._probe = MetadataBuilder(_VALIDATION_VERSION)

    def _op(self, name: str, *args: Any, **kwargs: Any) -> None:
        try:
            getattr(self._probe, name)(*args, **kwargs)
        except FitConnectError as exc:
            raise SubmissionError(str(exc)) from exc
        self._ops.append((name, args, kwargs))

    # --- addressing -------------------------------------------------------------------------

    def destination(self, destination_id: str) -> Self:
        """The destination (Zustellpunkt) to send to."""
        try:
            self._destination_id = ids.parse_uuid(destination_id, field="destination id")
        except FormatError as exc:
            raise SubmissionError(str(exc)) from None
        return self

    def service(self, identifier: str, name: str | None = None) -> Self:
        """The service (Leistung): a Leistungsschlüssel (``99…``) or a URN, and its name."""
        try:
            urn = ids.parse_service_identifier(identifier)
        except FormatError as exc:
            raise SubmissionError(str(exc)) from None
        self._service = (urn, name)
        return self

    def callback(self, url: str, secret: str) -> Self:
        """A callback for status changes of this submission (``callback`` on announce) [U]."""
        from pydantic import ValidationError

        from fitconnect_kit.protocol.api import describe_validation_error

        try:
            self._callback = CallbackConfig(url=url, secret=secret)
        except ValidationError as exc:
            raise SubmissionError(f"invalid callback: {describe_validation_error(exc)}") from None
        return self

    def case(self, case_id: str) -> Self:
        """Append the submission to an existing case (Vorgang) [U: may not be supported]."""
        try:
            self._case_id = ids.parse_uuid(case_id, field="case id")
        except FormatError as exc:
            raise SubmissionError(str(exc)) from None
        return self

    # --- Fachdaten --------------------------------------------------------------------------

    def _set_data(self, part: DataPart | EncryptedDataPart) -> Self:
        if self._data is not None:
            raise SubmissionError("the Fachdaten are already set; a submission has one data part")
        if not isinstance(part.schema_uri, str) or not part.schema_uri.strip():
            raise SubmissionError("the data schema URI must be a non-empty string")
        if part.mime_type not in DATA_MIME_TYPES:
            raise SubmissionError(
                f"Fachdaten must be application/json or application/xml, got {part.mime_type!r}"
            )
        self._data = part
        return self

    def json_data(self, data: Any, *, schema_uri: str) -> Self:
        """JSON Fachdaten: an object/list (serialised compactly) or the exact JSON bytes/text.

        The hash in the metadata covers exactly the bytes that are encrypted.
        """
        if isinstance(data, bytes | bytearray | memoryview | str):
            content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
            try:
                loads_strict(content, what="JSON data")
            except FormatError as exc:
                raise SubmissionError(str(exc)) from None
        else:
            try:
                content = dumps_compact(data)
            except (TypeError, ValueError) as exc:
                raise SubmissionError(f"data cannot be serialised as JSON: {exc}") from None
        return self._set_data(DataPart(content, schema_uri, JSON))

    def xml_data(self, data: bytes | str, *, schema_uri: str) -> Self:
        """XML Fachdaten (bytes as they are; text is encoded as UTF-8); checked well-formed."""
        content = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        _check_xml(content)
        return self._set_data(DataPart(content, schema_uri, XML))

    def data(self, content: bytes, *, schema_uri: str, mime_type: str) -> Self:
        """Fachdaten as exact bytes with an explicit MIME type (JSON or XML)."""
        if mime_type == JSON:
            return self.json_data(bytes(content), schema_uri=schema_uri)
        if mime_type == XML:
            return self.xml_data(bytes(content), schema_uri=schema_uri)
        return self._set_data(DataPart(bytes(content), schema_uri, mime_type))

    def encrypted_data(
        self,
        token: str | bytes,
        *,
        sha512_hex: str,
        schema_uri: str,
        mime_type: str = JSON,
    ) -> Self:
        """Fachdaten already encrypted (e.g. in the browser) for the destination's key.

        ``sha512_hex`` is the SHA-512 of the *plaintext*; the JWE must have been made with the
        destination's current ``encryptionKid`` (checked before sending).
        """
        part = EncryptedDataPart(
            _token_text(token, "encrypted data"),
            _sha512_hex(sha512_hex, "sha512_hex of the encrypted data"),
            schema_uri,
            mime_type,
        )
        return self._set_data(part)

    # --- attachments ----------------------------------------------------------------------------

    def _new_attachment_id(self, attachment_id: str | None) -> str:
        try:
            aid = ids.parse_uuid(
                attachment_id or ids.new_id(), field="attachment id", require_v4=True
            )
        except FormatError as exc:
            raise SubmissionError(str(exc)) from None
        if any(a.attachment_id == aid for a in self._attachments):
            raise SubmissionError(f"attachment id {aid} is used twice")
        return aid

    def _attachment_meta(
        self,
        purpose: AttachmentPurpose | str,
        mime_type: str,
        filename: str | None,
        description: str | None,
    ) -> AttachmentPurpose:
        probe = MetadataBuilder(_VALIDATION_VERSION)
        try:
            probe.attachment(
                ids.new_id(),
                _PLACEHOLDER_HASH,
                purpose,
                mime_type,
                filename=filename,
                description=description,
            )
            return AttachmentPurpose(purpose)
        except (FitConnectError, ValueError) as exc:
            raise SubmissionError(f"invalid attachment: {exc}") from None

    def attachment(
        self,
        source: AttachmentSource,
        *,
        purpose: AttachmentPurpose | str = AttachmentPurpose.ATTACHMENT,
        filename: str | None = None,
        mime_type: str | None = None,
        description: str | None = None,
        size: int | None = None,
        attachment_id: str | None = None,
    ) -> Self:
        """Add an attachment from bytes, a file path or a binary stream.

        ``purpose`` is ``form`` (the generated PDF of the whole application), ``attachment``
        (uploaded by the citizen) or ``report``. ``filename`` defaults to the file's name,
        ``mime_type`` is guessed from the filename. A stream is read from its current position;
        a non-seekable stream needs ``size`` (its number of bytes) and cannot be retried.
        """
        content: bytes | None = None
        path: Path | None = None
        stream: BinaryIO | None = None
        if isinstance(source, bytes | bytearray | memoryview):
            content = bytes(source)
            length = len(content)
        elif isinstance(source, str | os.PathLike):
            path = Path(source)
            try:
                stat = path.stat()
            except FileNotFoundError:
                raise SubmissionError(f"attachment file not found: {path}") from None
            except OSError as exc:
                raise SubmissionError(f"cannot read attachment file {path}: {exc}") from None
            if not path.is_file():
                raise SubmissionError(f"attachment {path} is not a regular file")
            length = stat.st_size
            filename = filename if filename is not None else path.name
        elif hasattr(source, "read"):
            stream = source
            known = _stream_size(source)
            if size is None and known is None:
                raise SubmissionError(
                    "the size of a non-seekable attachment stream must be given (size=...)"
                )
            length = size if size is not None else known  # type: ignore[assignment]
            if size is not None and known is not None and known < size:
                raise SubmissionError(
                    f"the attachment stream holds {known} bytes but size={size} was given"
                )
            if filename is None:
                name = getattr(source, "name", None)
                if isinstance(name, str) and name and not name.startswith("<"):
                    filename = Path(name).name
        else:
            raise SubmissionError(
                f"attachment source must be bytes, a path or a binary stream, got "
                f"{type(source).__name__}"
            )
        if size is not None and content is not None and size != len(content):
            raise SubmissionError(f"size={size} does not match the {len(content)} bytes given")
        mime = mime_type or _mime_for(filename)
        checked_purpose = self._attachment_meta(purpose, mime, filename, description)
        self._attachments.append(
            AttachmentSpec(
                attachment_id=self._new_attachment_id(attachment_id),
                purpose=checked_purpose,
                mime_type=mime,
                filename=filename,
                description=description,
                content=content,
                path=path,
                stream=stream,
                size=length,
            )
        )
        return self

    def encrypted_attachment(
        self,
        token: str | bytes | os.PathLike[str],
        *,
        sha512_hex: str,
        mime_type: str,
        purpose: AttachmentPurpose | str = AttachmentPurpose.ATTACHMENT,
        filename: str | None = None,
        description: str | None = None,
        attachment_id: str | None = None,
    ) -> Self:
        """Add an attachment already encrypted elsewhere (token text/bytes or a file holding it).

        ``sha512_hex`` is the SHA-512 of the attachment's *plaintext*.
        """
        digest = _sha512_hex(sha512_hex, "sha512_hex of the encrypted attachment")
        encrypted_token: str | None = None
        encrypted_path: Path | None = None
        if isinstance(token, os.PathLike):
            encrypted_path = Path(token)
            if not encrypted_path.is_file():
                raise SubmissionError(f"encrypted attachment file not found: {encrypted_path}")
        else:
            encrypted_token = _token_text(token, "encrypted attachment")
        checked_purpose = self._attachment_meta(purpose, mime_type, filename, description)
        self._attachments.append(
            AttachmentSpec(
                attachment_id=self._new_attachment_id(attachment_id),
                purpose=checked_purpose,
                mime_type=mime_type,
                filename=filename,
                description=description,
                encrypted_token=encrypted_token,
                encrypted_path=encrypted_path,
                sha512_hex=digest,
            )
        )
        return self

    # --- reply channel (exactly one) ------------------------------------------------------------

    def _reply(self, kind: ReplyChannelKind, method: str, *args: Any, **kwargs: Any) -> Self:
        if self._reply_channel is not None:
            raise SubmissionError(
                f"a reply channel ({self._reply_channel}) is already set; metadata carries one"
            )
        self._op(method, *args, **kwargs)
        self._reply_channel = kind.value
        return self

    def reply_email(self, address: str, pgp_public_key: str | None = None) -> Self:
        """Answer by e-mail (optionally PGP-encrypted)."""
        return self._reply(ReplyChannelKind.EMAIL, "reply_channel_email", address, pgp_public_key)

    def reply_demail(self, address: str) -> Self:
        """Answer by De-Mail."""
        return self._reply(ReplyChannelKind.DEMAIL, "reply_channel_demail", address)

    def reply_fink(self, postfach_ref: str, host: str | None = None) -> Self:
        """Answer into a FINK Postfach."""
        return self._reply(ReplyChannelKind.FINK, "reply_channel_fink", postfach_ref, host)

    def reply_elster(
        self,
        account_id: str,
        liefer_ticket: str | None = None,
        geschaeftszeichen: str | None = None,
    ) -> Self:
        """Answer via ELSTER (10-digit account id)."""
        return self._reply(
            ReplyChannelKind.ELSTER,
            "reply_channel_elster",
            account_id,
            liefer_ticket,
            geschaeftszeichen,
        )

    def reply_fitconnect(
        self,
        process_standards: Sequence[str],
        encryption_public_key: Mapping[str, Any] | None = None,
    ) -> Self:
        """Answer via FIT-Connect (metadata ≥ 1.1.0; member names [U])."""
        return self._reply(
            ReplyChannelKind.FIT_CONNECT,
            "reply_channel_fitconnect",
            list(process_standards),
            dict(encryption_public_key) if encryption_public_key is not None else None,
        )

    # --- further metadata -------------------------------------------------------------------------

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
        """``paymentInformation`` as reported by the payment service."""
        self._op(
            "payment",
            transaction_reference,
            transaction_id,
            payment_method,
            status,
            transaction_url=transaction_url,
            transaction_timestamp=transaction_timestamp,
            payment_method_detail=payment_method_detail,
            gross_amount=gross_amount,
        )
        return self

    def authentication(
        self, version: str, content: str, type_: str = "identificationReport"
    ) -> Self:
        """An identification report (``authenticationInformation``), e.g. from BundID."""
        self._op("authentication", version, content, type_)
        return self

    def reference(
        self, sender_reference: str | None = None, application_date: date | str | None = None
    ) -> Self:
        """``additionalReferenceInfo``: the sender's own reference and the application date."""
        self._op("reference", sender_reference, application_date)
        return self

    def extra(self, key: str, value: Any) -> Self:
        """A vendor extension member of the metadata (e.g. ``x-sender``)."""
        self._op("extra", key, value)
        return self

    # --- result ---------------------------------------------------------------------------------

    def build(self) -> Submission:
        """The finished :class:`Submission`; raises :class:`SubmissionError` if incomplete."""
        if self._destination_id is None:
            raise SubmissionError("no destination: call .destination(destination_id)")
        if self._service is None:
            raise SubmissionError("no service: call .service(identifier, name)")
        identifier, name = self._service
        if not name:
            raise SubmissionError(
                f"the service {identifier} needs a name (serviceType.name is required)"
            )
        if self._data is None and not self._attachments:
            raise SubmissionError("the submission is empty: add Fachdaten and/or attachments")
        submission = Submission(
            destination_id=self._destination_id,
            service=ServiceType(name=name, identifier=identifier),
            data=self._data,
            attachments=tuple(self._attachments),
            reply_channel=self._reply_channel,
            callback=self._callback,
            case_id=self._case_id,
            metadata_ops=tuple(self._ops),
        )
        submission.check_metadata(_VALIDATION_VERSION)
        return submission


ProgressCallback = Callable[[str, int, int], None]
"""``(attachment_id, bytes_done, bytes_total)`` — encrypted bytes handed to the transport."""


__all__ = [
    "DATA_MIME_TYPES",
    "AttachmentSource",
    "AttachmentSpec",
    "DataPart",
    "EncryptedDataPart",
    "ProgressCallback",
    "Submission",
    "SubmissionBuilder",
]
