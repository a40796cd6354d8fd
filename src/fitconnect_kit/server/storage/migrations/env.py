"""Alembic environment: runs on a connection handed in by ``storage.migrate`` (never a URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from fitconnect_kit.server.storage.models import Base

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):  # pragma: no cover - misuse guard
    raise RuntimeError("run migrations through fitconnect_kit.server.storage.migrate")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite can only ALTER by copying tables; batch mode does that for later revisions.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
