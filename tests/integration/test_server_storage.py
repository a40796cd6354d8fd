"""Storage: migrations, models, server keys and blob stores on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from fitconnect_kit.protocol.clock import ManualClock
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.server.server_keys import PresetServerKeys, ensure_server_keys
from fitconnect_kit.server.storage.blobs import (
    BlobNotFoundError,
    BlobStore,
    BlobTooLargeError,
    FileBlobStore,
    PostgresBlobStore,
)
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.migrate import current_revision, head_revision, upgrade_database
from fitconnect_kit.server.storage.models import (
    Base,
    Case,
    Client,
    Destination,
    Event,
    ServerKey,
)
from tests.keycache import rsa_key
from tests.support.db import DbBackend

EXPECTED_TABLES = {
    "alembic_version",
    "attachments",
    "blob_chunks",
    "blobs",
    "callback_deliveries",
    "cases",
    "client_destinations",
    "clients",
    "destination_keys",
    "destinations",
    "events",
    "server_keys",
    "submissions",
}


@pytest.fixture
async def database(db_backend: DbBackend) -> AsyncIterator[Database]:
    db = Database(db_backend.database_url)
    yield db
    await db.dispose()


async def migrated(db: Database) -> Database:
    await upgrade_database(db.engine)
    return db


# --- migrations ---------------------------------------------------------------------------------


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _schema_diff(connection: Connection) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_migrations_from_scratch_and_idempotent(database: Database) -> None:
    assert await current_revision(database.engine) is None
    await upgrade_database(database.engine)
    assert await current_revision(database.engine) == head_revision()
    async with database.engine.connect() as connection:
        assert await connection.run_sync(_table_names) == EXPECTED_TABLES
    await upgrade_database(database.engine)  # second run: nothing to do, no error
    assert await current_revision(database.engine) == head_revision()


async def test_models_match_migrations(database: Database) -> None:
    """Every model change needs a migration: the migrated schema equals the models."""
    await upgrade_database(database.engine)
    async with database.engine.connect() as connection:
        diff = await connection.run_sync(_schema_diff)
    assert diff == []


async def test_concurrent_migrations(db_backend: DbBackend) -> None:
    databases = [Database(db_backend.database_url) for _ in range(3)]
    try:
        await asyncio.gather(*(upgrade_database(db.engine) for db in databases))
        assert await current_revision(databases[0].engine) == head_revision()
    finally:
        for db in databases:
            await db.dispose()


async def test_engines_opening_a_new_sqlite_file_together_all_get_wal(tmp_path: Path) -> None:
    # Switching a brand-new file to WAL is refused at once ("database is locked") while another
    # connection creates it; the connect hook retries. Without that, this failed ~1 in 10.
    for attempt in range(25):
        url = f"sqlite+aiosqlite:///{tmp_path / f'new-{attempt}.db'}"
        databases = [Database(url) for _ in range(3)]
        try:
            await asyncio.gather(*(upgrade_database(db.engine) for db in databases))
            async with databases[1].engine.connect() as connection:
                mode = (await connection.exec_driver_sql("PRAGMA journal_mode")).scalar()
            assert mode == "wal"
        finally:
            for db in databases:
                await db.dispose()


async def test_times_are_aware_utc_and_constraints_hold(database: Database) -> None:
    await migrated(database)
    moment = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)
    destination_id, case_id = new_id(), new_id()
    async with database.sessions() as session:
        session.add(
            Destination(
                destination_id=destination_id,
                status="active",
                services=[{"identifier": "urn:x:y"}],
                metadata_versions=["1.0.0"],
                created_at=moment,
                updated_at=moment,
                status_changed_at=moment,
            )
        )
        await session.flush()
        session.add(
            Case(
                case_id=case_id,
                destination_id=destination_id,
                created_at=moment,
                last_event_at=moment,
            )
        )
        await session.flush()
        for jti in (new_id(), new_id()):
            session.add(
                Event(
                    case_id=case_id,
                    jti=jti,
                    event_uri="https://schema.fitko.de/fit-connect/events/create-submission",
                    issuer="http://zd",
                    token="x.y.z",
                    issued_at=moment,
                    recorded_at=moment,
                )
            )
        await session.commit()
    async with database.sessions() as session:
        case = await session.get(Case, case_id)
        assert case is not None
        assert case.created_at == moment
        assert case.created_at.tzinfo is not None
        seqs = list(await session.scalars(select(Event.seq).order_by(Event.seq)))
        assert len(seqs) == 2
        assert seqs[0] < seqs[1]

    # dedup_key makes "at most once" events idempotent.
    async def add_event(dedup_key: str) -> None:
        async with database.sessions() as session:
            session.add(
                Event(
                    case_id=case_id,
                    jti=new_id(),
                    event_uri="https://schema.fitko.de/fit-connect/events/notify-submission",
                    issuer="http://zd",
                    token="x.y.z",
                    issued_at=moment,
                    recorded_at=moment,
                    dedup_key=dedup_key,
                )
            )
            await session.commit()

    await add_event("notify-submission:1:polling")
    with pytest.raises(IntegrityError):
        await add_event("notify-submission:1:polling")

    # Client kind is constrained; naive datetimes are refused.
    async def add(row: object) -> None:
        async with database.sessions() as session:
            session.add(row)
            await session.commit()

    bad_client = Client(
        client_id=new_id(),
        kind="admin",
        secret_hash="x",
        scopes=[],
        created_at=moment,
        disabled=False,
    )
    with pytest.raises(IntegrityError):
        await add(bad_client)
    naive_case = Case(
        case_id=new_id(),
        destination_id=destination_id,
        created_at=datetime(2026, 1, 1),
        last_event_at=moment,
    )
    with pytest.raises(Exception, match="naive"):
        await add(naive_case)

    # Deleting a destination cascades to cases and events.
    async with database.sessions() as session:
        destination = await session.get(Destination, destination_id)
        await session.delete(destination)
        await session.commit()
    async with database.sessions() as session:
        assert await session.get(Case, case_id) is None
        assert list(await session.scalars(select(Event))) == []


# --- server keys --------------------------------------------------------------------------------


async def test_server_keys_created_once_and_shared(db_backend: DbBackend) -> None:
    clock = ManualClock()
    databases = [Database(db_backend.database_url) for _ in range(2)]
    try:
        for db in databases:
            await upgrade_database(db.engine)
        # Two "nodes" start at once with different candidate keys: one set wins for both.
        first, second = await asyncio.gather(
            ensure_server_keys(
                databases[0],
                clock,
                preset=PresetServerKeys(set_signing=rsa_key(100), token_signing=rsa_key(101)),
            ),
            ensure_server_keys(
                databases[1],
                clock,
                preset=PresetServerKeys(set_signing=rsa_key(102), token_signing=rsa_key(103)),
            ),
        )
        assert first.set_signing.kid == second.set_signing.kid
        assert first.token_signing.kid == second.token_signing.kid
        assert first.set_signing.kid != first.token_signing.kid
        again = await ensure_server_keys(databases[0], clock)
        assert again.jwks() == first.jwks()
        async with databases[0].sessions() as session:
            rows = list(await session.scalars(select(ServerKey)))
        assert len(rows) == 2
        assert {row.purpose for row in rows} == {"zd-set-signing", "token-signing"}
    finally:
        for db in databases:
            await db.dispose()


# --- blob stores --------------------------------------------------------------------------------


@pytest.fixture(params=["file", pytest.param("postgres", marks=pytest.mark.postgres)])
async def blob_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobStore]:
    if request.param == "file":
        yield FileBlobStore(tmp_path / "blobs")
        return
    backend: DbBackend = request.getfixturevalue("postgres_backend")
    db = Database(backend.database_url)
    await upgrade_database(db.engine)
    # Small chunks so that chunk boundaries are exercised.
    yield PostgresBlobStore(db, chunk_size=1000)
    await db.dispose()


async def _chunks(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield part


async def _read_all(store: BlobStore, key: str, chunk_size: int = 777) -> bytes:
    return b"".join([chunk async for chunk in store.read(key, chunk_size)])


async def test_blob_round_trip(blob_store: BlobStore) -> None:
    key = "submissions/a/attachments/b"
    payload = bytes(range(256)) * 40  # 10 240 bytes
    parts = [payload[i : i + 3000] for i in range(0, len(payload), 3000)]
    assert await blob_store.write(key, _chunks(*parts)) == len(payload)
    assert await blob_store.exists(key)
    assert await blob_store.size(key) == len(payload)
    assert await _read_all(blob_store, key) == payload

    # Overwrite, then delete (twice: idempotent).
    assert await blob_store.write(key, _chunks(b"new")) == 3
    assert await _read_all(blob_store, key) == b"new"
    await blob_store.delete(key)
    await blob_store.delete(key)
    assert not await blob_store.exists(key)
    with pytest.raises(BlobNotFoundError):
        await blob_store.size(key)
    with pytest.raises(BlobNotFoundError):
        await _read_all(blob_store, key)


async def test_empty_blob(blob_store: BlobStore) -> None:
    assert await blob_store.write("empty", _chunks()) == 0
    assert await blob_store.size("empty") == 0
    assert await _read_all(blob_store, "empty") == b""


async def test_failed_write_leaves_nothing(blob_store: BlobStore) -> None:
    with pytest.raises(ConnectionResetError):
        await blob_store.write("broken", _chunks(b"a" * 5000, b"b" * 5000, fail_after=1))
    assert not await blob_store.exists("broken")

    with pytest.raises(BlobTooLargeError):
        await blob_store.write("big", _chunks(b"a" * 3000, b"b" * 3000), max_size=5000)
    assert not await blob_store.exists("big")
    assert await blob_store.write("fits", _chunks(b"a" * 3000, b"b" * 2000), max_size=5000) == 5000

    # A failed overwrite keeps the previous blob.
    with pytest.raises(BlobTooLargeError):
        await blob_store.write("fits", _chunks(b"c" * 6000), max_size=5000)
    assert await blob_store.size("fits") == 5000

    if isinstance(blob_store, FileBlobStore):
        leftovers = [p for p in blob_store.root.rglob("*") if p.is_file()]
        assert len(leftovers) == 1  # only "fits"; no temp files


async def test_cancelled_write_leaves_nothing(blob_store: BlobStore) -> None:
    started = asyncio.Event()

    async def slow() -> AsyncIterator[bytes]:
        yield b"x" * 4000
        started.set()
        await asyncio.sleep(30)
        yield b"never"

    task = asyncio.create_task(blob_store.write("cancelled", slow()))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not await blob_store.exists("cancelled")
    if isinstance(blob_store, FileBlobStore):
        assert [p for p in blob_store.root.rglob("*") if p.is_file()] == []


async def test_file_store_removes_stale_temp_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    await store.write("kept", _chunks(b"data"))
    stale = store.path_for("kept").with_name(".abc.123.part")
    stale.write_bytes(b"junk")
    assert await store.remove_stale_temp_files(older_than_seconds=3600) == 0
    old = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    os.utime(stale, (old, old))
    assert await store.remove_stale_temp_files(older_than_seconds=3600) == 1
    assert not stale.exists()
    assert await _read_all(store, "kept") == b"data"
