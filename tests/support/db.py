"""Database backends for tests: SQLite in a temp dir, or a fresh PostgreSQL database per test."""

from __future__ import annotations

import asyncio
import functools
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PG_HOST = "127.0.0.1"
PG_PORT = 5432
PG_USER = "postgres"
PG_ADMIN_DATABASE = "test"
DATABASE_PREFIX = "fck_"


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
def postgres_unavailable_reason() -> str | None:
    """``None`` when PostgreSQL answers at 127.0.0.1:5432, else why not (checked once)."""
    try:
        _pg_execute("SELECT 1")
    except Exception as exc:  # any failure means: skip PostgreSQL tests
        return (
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} as user {PG_USER!r} "
            f"(database {PG_ADMIN_DATABASE!r}): {type(exc).__name__}: {exc}"
        )
    return None


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
