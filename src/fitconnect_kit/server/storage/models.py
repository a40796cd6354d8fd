"""ORM models of the whole Zustelldienst (SQLAlchemy 2, SQLite and PostgreSQL).

Conventions: ids are lowercase UUID text; every time column is an aware UTC datetime
(:class:`UtcDateTime`); JSON columns hold the camelCase wire form of the Submission API so
handlers can return them without reshaping. Every schema change needs an Alembic revision in
``migrations/versions`` (``tests/integration/test_server_storage.py`` compares models and
migrations).
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite stores naive UTC, PostgreSQL timestamptz)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; use an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact), plain JSON text elsewhere.
JsonType = JSON().with_variant(JSONB(), "postgresql")
# SQLite only autoincrements an INTEGER PRIMARY KEY.
AutoIncrementId = BigInteger().with_variant(Integer(), "sqlite")

ID_LENGTH = 36
#: Longest client or destination name (``name`` columns); longer names are refused as input.
NAME_MAX_LENGTH = 200


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- enumerations (stored as text) ---------------------------------------------------------------


class ClientKind(enum.StrEnum):
    SENDER = "sender"
    SUBSCRIBER = "subscriber"


class DestinationStatus(enum.StrEnum):
    CREATED = "created"
    ACTIVE = "active"
    INACTIVE = "inactive"
    DECOMMISSIONED = "decommissioned"


class SubmissionStatus(enum.StrEnum):
    INCOMPLETE = "incomplete"
    SUBMITTED = "submitted"
    FORWARDED = "forwarded"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    #: Removed by the ZD (incomplete too long, or retention over); only the event log remains.
    DELETED = "deleted"


class DeliveryStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ServerKeyPurpose(enum.StrEnum):
    SET_SIGNING = "zd-set-signing"
    TOKEN_SIGNING = "token-signing"  # noqa: S105 - a purpose name, not a secret


def _in(column: str, values: type[enum.StrEnum]) -> str:
    listed = ", ".join(f"'{v.value}'" for v in values)
    return f"{column} IN ({listed})"


# --- clients and destinations --------------------------------------------------------------------


class Client(Base):
    """An OAuth client: an Onlinedienst (sender) or a Fachverfahren (subscriber)."""

    __tablename__ = "clients"
    __table_args__ = (CheckConstraint(_in("kind", ClientKind), name="kind"),)

    client_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    #: ``scrypt$<params>$<salt>$<hash>`` (see ``server/auth.py``); the secret itself is never kept.
    secret_hash: Mapped[str] = mapped_column(String(255))
    scopes: Mapped[list[str]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)


class Destination(Base):
    """A Zustellpunkt. ``callback_secret`` stays readable: the ZD signs callbacks with it."""

    __tablename__ = "destinations"
    __table_args__ = (CheckConstraint(_in("status", DestinationStatus), name="status"),)

    destination_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    status: Mapped[str] = mapped_column(String(20))
    name: Mapped[str | None] = mapped_column(String(NAME_MAX_LENGTH))
    #: ``[{"identifier", "submissionSchemas": [{"schemaUri","mimeType"}], "regions",
    #: "replyChannels"?}]`` in wire form.
    services: Mapped[list[dict[str, Any]]] = mapped_column(JsonType)
    metadata_versions: Mapped[list[str]] = mapped_column(JsonType)
    reply_channels: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    encryption_kid: Mapped[str | None] = mapped_column(String(64))
    callback_url: Mapped[str | None] = mapped_column(Text)
    callback_secret: Mapped[str | None] = mapped_column(Text)  # never returned by the API
    contact_information: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: For the 30-day wait between ``inactive`` and ``decommissioned``.
    status_changed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ClientDestination(Base):
    """Link of a subscriber client to a destination (what the SSP does)."""

    __tablename__ = "client_destinations"

    client_id: Mapped[str] = mapped_column(
        ForeignKey("clients.client_id", ondelete="CASCADE"), primary_key=True
    )
    destination_id: Mapped[str] = mapped_column(
        ForeignKey("destinations.destination_id", ondelete="CASCADE"), primary_key=True, index=True
    )
    #: The client may change the destination (manage scope still required in the token).
    can_manage: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class DestinationKey(Base):
    """A public JWK registered on a destination (encryption or signature verification)."""

    __tablename__ = "destination_keys"

    destination_id: Mapped[str] = mapped_column(
        ForeignKey("destinations.destination_id", ondelete="CASCADE"), primary_key=True
    )
    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``encryption`` or ``signature`` (values of ``protocol.keys.KeyPurpose``).
    purpose: Mapped[str] = mapped_column(String(32))
    jwk: Mapped[dict[str, Any]] = mapped_column(JsonType)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- cases, submissions, attachments -------------------------------------------------------------


class Case(Base):
    """A Vorgang: groups submissions (and later replies); the event log is per case."""

    __tablename__ = "cases"
    __table_args__ = (Index("ix_cases_last_event_at", "last_event_at"),)

    case_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    destination_id: Mapped[str] = mapped_column(
        ForeignKey("destinations.destination_id", ondelete="CASCADE"), index=True
    )
    sender_client_id: Mapped[str | None] = mapped_column(
        ForeignKey("clients.client_id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Drives the 730-day retention of the event log.
    last_event_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (
        CheckConstraint(_in("status", SubmissionStatus), name="status"),
        # Subscriber polling: submitted submissions of a destination in arrival order.
        Index("ix_submissions_destination_status", "destination_id", "status", "submitted_at"),
        # Deadline workers: by status and the relevant timestamp.
        Index("ix_submissions_status_created", "status", "created_at"),
        Index("ix_submissions_status_submitted", "status", "submitted_at"),
        Index("ix_submissions_first_fetched", "first_fetched_at"),
    )

    submission_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    case_id: Mapped[str] = mapped_column(
        ForeignKey("cases.case_id", ondelete="CASCADE"), index=True
    )
    destination_id: Mapped[str] = mapped_column(
        ForeignKey("destinations.destination_id", ondelete="CASCADE")
    )
    sender_client_id: Mapped[str | None] = mapped_column(
        ForeignKey("clients.client_id", ondelete="SET NULL"), index=True
    )
    #: ``{"name", "identifier"}`` as posted.
    service_type: Mapped[dict[str, Any]] = mapped_column(JsonType)
    announced_attachments: Mapped[list[str]] = mapped_column(JsonType)
    status: Mapped[str] = mapped_column(String(16))
    sender_callback_url: Mapped[str | None] = mapped_column(Text)
    sender_callback_secret: Mapped[str | None] = mapped_column(Text)
    #: JWE compact text; ``None`` once the content is deleted.
    encrypted_metadata: Mapped[str | None] = mapped_column(Text)
    #: JWE compact text, or ``None`` when absent or kept in the blob store instead.
    encrypted_data: Mapped[str | None] = mapped_column(Text)
    encrypted_data_blob_key: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    submitted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: First retrieval by the subscriber (pickup): starts the 7-day deletion.
    first_fetched_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: accept/reject (by the subscriber or by the ZD at day 14).
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    #: Number of reminder e-mails (day 3 / day 9) already issued.
    reminders_sent: Mapped[int] = mapped_column(Integer, default=0)
    content_deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime)


class Attachment(Base):
    """An uploaded attachment ciphertext; the bytes live in the blob store under ``blob_key``."""

    __tablename__ = "attachments"

    submission_id: Mapped[str] = mapped_column(
        ForeignKey("submissions.submission_id", ondelete="CASCADE"), primary_key=True
    )
    attachment_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    blob_key: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    #: Last segment of the JWE (GCM tag, base64url), for ``submit-submission``.
    authentication_tag: Mapped[str] = mapped_column(String(64))
    uploaded_at: Mapped[datetime] = mapped_column(UtcDateTime)


# --- event log -----------------------------------------------------------------------------------


class Event(Base):
    """One SET in a case's event log; ``seq`` is the log order."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_case_seq", "case_id", "seq"),
        Index("ix_events_submission_seq", "submission_id", "seq"),
        Index("ix_events_reply_seq", "reply_id", "seq"),
    )

    seq: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.case_id", ondelete="CASCADE"))
    submission_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    reply_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    jti: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    event_uri: Mapped[str] = mapped_column(String(255))
    #: ZD base URL or destinationId.
    issuer: Mapped[str] = mapped_column(String(255))
    token: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Makes "at most once" events idempotent across processes, e.g.
    #: ``notify-submission:<submissionId>:polling`` or ``zd-reject:<submissionId>``.
    dedup_key: Mapped[str | None] = mapped_column(String(255), unique=True)


# --- callback outbox -----------------------------------------------------------------------------


class CallbackDelivery(Base):
    """A callback waiting to be (re)delivered; several nodes share the outbox via row locks."""

    __tablename__ = "callback_deliveries"
    __table_args__ = (
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index("ix_callback_deliveries_due", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(AutoIncrementId, primary_key=True, autoincrement=True)
    #: ``new-submissions`` | ``new-events`` | ``new-replies``.
    kind: Mapped[str] = mapped_column(String(32))
    target_url: Mapped[str] = mapped_column(Text)
    #: Whose callback secret signs the request: the destination's or the submission's sender's.
    destination_id: Mapped[str | None] = mapped_column(
        ForeignKey("destinations.destination_id", ondelete="CASCADE"), index=True
    )
    submission_id: Mapped[str | None] = mapped_column(
        ForeignKey("submissions.submission_id", ondelete="CASCADE"), index=True
    )
    #: Exact JSON body bytes; the HMAC is computed over them at send time.
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING.value)
    last_error: Mapped[str | None] = mapped_column(Text)
    locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# --- the ZD's own keys ---------------------------------------------------------------------------


class ServerKey(Base):
    """A private key of the ZD; shared by all nodes through the database.

    ``generation`` starts at 1; a rotation inserts ``generation + 1``. The unique
    (purpose, generation) pair makes concurrent first starts agree on one key.
    """

    __tablename__ = "server_keys"
    __table_args__ = (
        UniqueConstraint("purpose", "generation", name="uq_server_keys_purpose_generation"),
    )

    kid: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(32))
    generation: Mapped[int] = mapped_column(Integer)
    private_key_pem: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)
    #: Retired keys stay published (SETs signed with them remain verifiable) but sign nothing.
    retired_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


# --- blob store on PostgreSQL ---------------------------------------------------------------


class Blob(Base):
    """Completion marker of a blob in :class:`~.blobs.PostgresBlobStore`."""

    __tablename__ = "blobs"

    blob_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_count: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime)


class BlobChunk(Base):
    __tablename__ = "blob_chunks"

    blob_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


# --- Core tables of the hot paths ----------------------------------------------------------------
#
# The request handlers and workers of a submission's round trip work on these with SQLAlchemy
# Core (statements built once at module level, plain rows back): no identity map, no unit of
# work, no ORM compile step — a fraction of the ORM's CPU per statement.

CASES = cast(Table, Case.__table__)
SUBMISSIONS = cast(Table, Submission.__table__)
ATTACHMENTS = cast(Table, Attachment.__table__)
EVENTS = cast(Table, Event.__table__)
DESTINATIONS = cast(Table, Destination.__table__)
DESTINATION_KEYS = cast(Table, DestinationKey.__table__)
CALLBACK_DELIVERIES = cast(Table, CallbackDelivery.__table__)
