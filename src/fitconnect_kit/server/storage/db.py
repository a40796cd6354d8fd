"""Async SQLAlchemy engine and sessions for SQLite (aiosqlite) and PostgreSQL (asyncpg).

SQLite runs in WAL mode with a busy timeout and foreign keys on. Every SQLite transaction starts
with ``BEGIN IMMEDIATE``: a deferred transaction that reads and later writes can fail at once with
``SQLITE_BUSY`` when another connection committed in between, whatever the busy timeout; taking
the write lock up front makes concurrent requests wait instead. The one exception are
:meth:`Database.read_connection` connections, which never write: no ``BEGIN`` at all, each of
their statements reads its own consistent snapshot (in WAL mode a reader neither takes nor waits
for the write lock). PostgreSQL is the choice for real concurrency and several nodes.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

SQLITE_BUSY_TIMEOUT_MS = 30_000
#: Connection execution option of :meth:`Database.read_connection` (deferred BEGIN on SQLite).
READ_ONLY_OPTION = "fitconnect_kit_read_only"


def _enable_wal(cursor: Any) -> None:
    """Switch the database file to WAL mode (persistent: a no-op once done).

    Switching needs an exclusive lock, and SQLite answers "database is locked" at once instead
    of waiting when another connection is creating the same new file (several processes or
    engines starting together): retry within the busy timeout.
    """
    cursor.execute("PRAGMA journal_mode")
    if str(cursor.fetchone()[0]).lower() == "wal":
        return
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # only a brand-new file gets here, and only while it is created


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let us issue BEGIN ourselves (the driver's implicit BEGIN is deferred).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            return  # autocommit reads: every statement is its own snapshot, no write lock
        connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The engine plus a session factory; one per server process (or CLI invocation)."""

    def __init__(self, url: str, *, echo: bool = False) -> None:
        parsed = make_url(url)
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database backend {self.dialect!r}")
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_async_engine(url, echo=echo, connect_args={"timeout": 30})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True
            )
        #: ``async with db.sessions() as session: ...`` — objects stay usable after commit.
        self.sessions: async_sessionmaker[AsyncSession] = async_sessionmaker(
            self.engine, expire_on_commit=False
        )

    @contextlib.asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """A connection for statements that only read (no ORM session: cheaper), rolled
        back at the end. On SQLite there is no ``BEGIN IMMEDIATE`` (no ``BEGIN`` at all): each
        statement reads one consistent snapshot of its own and neither holds nor waits for the
        write lock — so put what must be consistent into one statement. Never write through
        it."""
        async with self.engine.connect() as connection:
            await connection.execution_options(**{READ_ONLY_OPTION: True})
            yield connection

    @property
    def is_postgres(self) -> bool:
        return self.dialect == "postgresql"

    @property
    def is_sqlite(self) -> bool:
        return self.dialect == "sqlite"

    async def dispose(self) -> None:
        await self.engine.dispose()
