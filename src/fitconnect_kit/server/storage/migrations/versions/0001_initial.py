"""Initial schema of the Zustelldienst.

Column types are spelled out here (not imported from models) so that this revision stays
fixed when the models change.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26 15:14:05.212085
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

TIMESTAMP = sa.DateTime(timezone=True)
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
AUTOINCREMENT_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blob_chunks",
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("blob_key", "seq", name="pk_blob_chunks"),
    )
    op.create_table(
        "blobs",
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("blob_key", name="pk_blobs"),
    )
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("secret_hash", sa.String(length=255), nullable=False),
        sa.Column("scopes", JSON_TYPE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.CheckConstraint("kind IN ('sender', 'subscriber')", name="ck_clients_kind"),
        sa.PrimaryKeyConstraint("client_id", name="pk_clients"),
    )
    op.create_table(
        "destinations",
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("services", JSON_TYPE, nullable=False),
        sa.Column("metadata_versions", JSON_TYPE, nullable=False),
        sa.Column("reply_channels", JSON_TYPE, nullable=True),
        sa.Column("encryption_kid", sa.String(length=64), nullable=True),
        sa.Column("callback_url", sa.Text(), nullable=True),
        sa.Column("callback_secret", sa.Text(), nullable=True),
        sa.Column("contact_information", JSON_TYPE, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("status_changed_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "status IN ('created', 'active', 'inactive', 'decommissioned')",
            name="ck_destinations_status",
        ),
        sa.PrimaryKeyConstraint("destination_id", name="pk_destinations"),
    )
    op.create_table(
        "server_keys",
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("private_key_pem", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("retired_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_server_keys"),
        sa.UniqueConstraint("purpose", "generation", name="uq_server_keys_purpose_generation"),
    )
    op.create_table(
        "cases",
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("sender_client_id", sa.String(length=36), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("last_event_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.destination_id"],
            name="fk_cases_destination_id_destinations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sender_client_id"],
            ["clients.client_id"],
            name="fk_cases_sender_client_id_clients",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("case_id", name="pk_cases"),
    )
    op.create_index("ix_cases_destination_id", "cases", ["destination_id"], unique=False)
    op.create_index("ix_cases_last_event_at", "cases", ["last_event_at"], unique=False)
    op.create_index("ix_cases_sender_client_id", "cases", ["sender_client_id"], unique=False)

    op.create_table(
        "client_destinations",
        sa.Column("client_id", sa.String(length=36), nullable=False),
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("can_manage", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["clients.client_id"],
            name="fk_client_destinations_client_id_clients",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.destination_id"],
            name="fk_client_destinations_destination_id_destinations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("client_id", "destination_id", name="pk_client_destinations"),
    )
    op.create_index(
        "ix_client_destinations_destination_id",
        "client_destinations",
        ["destination_id"],
        unique=False,
    )

    op.create_table(
        "destination_keys",
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("kid", sa.String(length=64), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("jwk", JSON_TYPE, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.destination_id"],
            name="fk_destination_keys_destination_id_destinations",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("destination_id", "kid", name="pk_destination_keys"),
    )
    op.create_table(
        "events",
        sa.Column("seq", AUTOINCREMENT_ID, autoincrement=True, nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("submission_id", sa.String(length=36), nullable=True),
        sa.Column("reply_id", sa.String(length=36), nullable=True),
        sa.Column("jti", sa.String(length=36), nullable=False),
        sa.Column("event_uri", sa.String(length=255), nullable=False),
        sa.Column("issuer", sa.String(length=255), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("issued_at", TIMESTAMP, nullable=False),
        sa.Column("recorded_at", TIMESTAMP, nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=True),
        sa.ForeignKeyConstraint(
            ["case_id"], ["cases.case_id"], name="fk_events_case_id_cases", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("dedup_key", name="uq_events_dedup_key"),
        sa.UniqueConstraint("jti", name="uq_events_jti"),
    )
    op.create_index("ix_events_case_seq", "events", ["case_id", "seq"], unique=False)
    op.create_index("ix_events_reply_seq", "events", ["reply_id", "seq"], unique=False)
    op.create_index("ix_events_submission_seq", "events", ["submission_id", "seq"], unique=False)

    op.create_table(
        "submissions",
        sa.Column("submission_id", sa.String(length=36), nullable=False),
        sa.Column("case_id", sa.String(length=36), nullable=False),
        sa.Column("destination_id", sa.String(length=36), nullable=False),
        sa.Column("sender_client_id", sa.String(length=36), nullable=True),
        sa.Column("service_type", JSON_TYPE, nullable=False),
        sa.Column("announced_attachments", JSON_TYPE, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("sender_callback_url", sa.Text(), nullable=True),
        sa.Column("sender_callback_secret", sa.Text(), nullable=True),
        sa.Column("encrypted_metadata", sa.Text(), nullable=True),
        sa.Column("encrypted_data", sa.Text(), nullable=True),
        sa.Column("encrypted_data_blob_key", sa.String(length=255), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("submitted_at", TIMESTAMP, nullable=True),
        sa.Column("first_fetched_at", TIMESTAMP, nullable=True),
        sa.Column("decided_at", TIMESTAMP, nullable=True),
        sa.Column("reminders_sent", sa.Integer(), nullable=False),
        sa.Column("content_deleted_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.CheckConstraint(
            "status IN ('incomplete', 'submitted', 'forwarded', 'accepted', 'rejected', 'deleted')",
            name="ck_submissions_status",
        ),
        sa.ForeignKeyConstraint(
            ["case_id"],
            ["cases.case_id"],
            name="fk_submissions_case_id_cases",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.destination_id"],
            name="fk_submissions_destination_id_destinations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["sender_client_id"],
            ["clients.client_id"],
            name="fk_submissions_sender_client_id_clients",
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("submission_id", name="pk_submissions"),
    )
    op.create_index("ix_submissions_case_id", "submissions", ["case_id"], unique=False)
    op.create_index(
        "ix_submissions_destination_status",
        "submissions",
        ["destination_id", "status", "submitted_at"],
        unique=False,
    )
    op.create_index(
        "ix_submissions_first_fetched", "submissions", ["first_fetched_at"], unique=False
    )
    op.create_index(
        "ix_submissions_sender_client_id", "submissions", ["sender_client_id"], unique=False
    )
    op.create_index(
        "ix_submissions_status_created", "submissions", ["status", "created_at"], unique=False
    )
    op.create_index(
        "ix_submissions_status_submitted", "submissions", ["status", "submitted_at"], unique=False
    )

    op.create_table(
        "attachments",
        sa.Column("submission_id", sa.String(length=36), nullable=False),
        sa.Column("attachment_id", sa.String(length=36), nullable=False),
        sa.Column("blob_key", sa.String(length=255), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("authentication_tag", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.submission_id"],
            name="fk_attachments_submission_id_submissions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("submission_id", "attachment_id", name="pk_attachments"),
    )
    op.create_table(
        "callback_deliveries",
        sa.Column("id", AUTOINCREMENT_ID, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("target_url", sa.Text(), nullable=False),
        sa.Column("destination_id", sa.String(length=36), nullable=True),
        sa.Column("submission_id", sa.String(length=36), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("locked_until", TIMESTAMP, nullable=True),
        sa.Column("locked_by", sa.String(length=100), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("delivered_at", TIMESTAMP, nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'delivered', 'failed')", name="ck_callback_deliveries_status"
        ),
        sa.ForeignKeyConstraint(
            ["destination_id"],
            ["destinations.destination_id"],
            name="fk_callback_deliveries_destination_id_destinations",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["submission_id"],
            ["submissions.submission_id"],
            name="fk_callback_deliveries_submission_id_submissions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_callback_deliveries"),
    )
    op.create_index(
        "ix_callback_deliveries_destination_id",
        "callback_deliveries",
        ["destination_id"],
        unique=False,
    )
    op.create_index(
        "ix_callback_deliveries_due",
        "callback_deliveries",
        ["status", "next_attempt_at"],
        unique=False,
    )
    op.create_index(
        "ix_callback_deliveries_submission_id",
        "callback_deliveries",
        ["submission_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_callback_deliveries_submission_id", table_name="callback_deliveries")
    op.drop_index("ix_callback_deliveries_due", table_name="callback_deliveries")
    op.drop_index("ix_callback_deliveries_destination_id", table_name="callback_deliveries")

    op.drop_table("callback_deliveries")
    op.drop_table("attachments")
    op.drop_index("ix_submissions_status_submitted", table_name="submissions")
    op.drop_index("ix_submissions_status_created", table_name="submissions")
    op.drop_index("ix_submissions_sender_client_id", table_name="submissions")
    op.drop_index("ix_submissions_first_fetched", table_name="submissions")
    op.drop_index("ix_submissions_destination_status", table_name="submissions")
    op.drop_index("ix_submissions_case_id", table_name="submissions")

    op.drop_table("submissions")
    op.drop_index("ix_events_submission_seq", table_name="events")
    op.drop_index("ix_events_reply_seq", table_name="events")
    op.drop_index("ix_events_case_seq", table_name="events")

    op.drop_table("events")
    op.drop_table("destination_keys")
    op.drop_index("ix_client_destinations_destination_id", table_name="client_destinations")

    op.drop_table("client_destinations")
    op.drop_index("ix_cases_sender_client_id", table_name="cases")
    op.drop_index("ix_cases_last_event_at", table_name="cases")
    op.drop_index("ix_cases_destination_id", table_name="cases")

    op.drop_table("cases")
    op.drop_table("server_keys")
    op.drop_table("destinations")
    op.drop_table("clients")
    op.drop_table("blobs")
    op.drop_table("blob_chunks")
