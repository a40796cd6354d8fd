"""Database backends for tests: SQLite in a temp dir, or a fresh PostgreSQL database per test.

PostgreSQL tests are skipped with the reason when the server does not answer — unless
``FITCONNECT_REQUIRE_POSTGRES=1`` is set (CI, ``.ci/run``): then they fail loudly instead, so a
missing database can never turn the PostgreSQL half of the suite into silent skips.
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fitconnect_kit.protocol.api import SubmissionStatus

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_ADMIN_DATABASE = "test"
DATABASE_PREFIX = "fck_"
#: Set to ``1`` to make an unreachable PostgreSQL an error instead of a skip.
REQUIRE_POSTGRES_ENV = "FITCONNECT_REQUIRE_POSTGRES"


@dataclass(frozen=True)
class DbBackend:
    """Where a test's server keeps its state."""

    name: str  # "sqlite" | "postgres"
    database_url: str
    data_dir: Path
    blob_store: str  # "filesystem" | "postgres"

    @property
    def is_postgres(self) -> bool:
        return self.name == "postgres"

    def config(self, **overrides: Any) -> dict[str, Any]:
        """Config mapping pieces for ``ServerConfig`` (merge ``overrides`` on top)."""
        return {
            "data_dir": str(self.data_dir),
            "database_url": self.database_url,
            "blob_store": self.blob_store,
            **overrides,
        }


async def _pg_execute_async(statement: str, database: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database=database, timeout=5
    )
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _pg_execute(statement: str, database: str = PG_ADMIN_DATABASE) -> None:
    """Run one statement on its own loop in a helper thread (callers may be inside a loop)."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, _pg_execute_async(statement, database)).result()


@functools.cache
def _probe_postgres() -> str | None:
    try:
        _pg_execute("SELECT 1")
    except Exception as exc:  # any failure means: PostgreSQL tests cannot run
        return (
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as user {PG_USER!r} "
            f"(database {PG_ADMIN_DATABASE!r}): {type(exc).__name__}: {exc}"
        )
    return None


def postgres_required() -> bool:
    return os.environ.get(REQUIRE_POSTGRES_ENV, "").strip() == "1"


def postgres_unavailable_reason() -> str | None:
    """``None`` when PostgreSQL answers at 127.0.0.1:5432, else why not (checked once).

    Callers skip with the reason. With ``FITCONNECT_REQUIRE_POSTGRES=1`` an unreachable
    PostgreSQL fails the calling test (``pytest.fail``) instead: CI must not skip it silently.
    """
    reason = _probe_postgres()
    if reason is not None and postgres_required():
        import pytest

        pytest.fail(f"{reason} — and {REQUIRE_POSTGRES_ENV}=1 requires it", pytrace=False)
    return reason


def stored_status(derived: SubmissionStatus) -> str:
    """The ``submissions.status`` the server must store for a status derived from the event log
    (:func:`fitconnect_kit.protocol.events.derive_state`): the same value, except ``notified``.

    A ``notify-submission`` changes nothing in processing, and the stored column has no
    ``notified`` (``storage.models.SubmissionStatus``): such a submission is stored ``submitted``.
    """
    if derived is SubmissionStatus.NOTIFIED:
        return SubmissionStatus.SUBMITTED.value
    return derived.value


def postgres_url(database: str) -> str:
    return f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create ``fck_<hex>``, yield its SQLAlchemy URL, drop it afterwards (even if in use)."""
    name = DATABASE_PREFIX + secrets.token_hex(6)
    _pg_execute(f'CREATE DATABASE "{name}"')
    try:
        yield postgres_url(name)
    finally:
        _pg_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def make_backend(name: str, tmp_path: Path) -> Iterator[DbBackend]:
    data_dir = tmp_path / "zd-data"
    if name == "sqlite":
        url = f"sqlite+aiosqlite:///{data_dir / 'zustelldienst.sqlite3'}"
        yield DbBackend("sqlite", url, data_dir, "filesystem")
        return
    if name != "postgres":
        raise ValueError(f"unknown backend {name!r}")
    with fresh_postgres_database() as url:
        # The PostgreSQL backend also exercises the PostgreSQL blob store.
        yield DbBackend("postgres", url, data_dir, "postgres")
