"""Blob stores for attachment ciphertexts: streamed in and out, never held in memory whole.

Two implementations of :class:`BlobStore`:

* :class:`FileBlobStore` — files under a directory, sharded by a hash of the key. A write goes to a
  temp file in the target directory, is fsynced, renamed into place and the directory fsynced, so
  a blob is visible only when complete and survives a crash once ``write`` returned.
* :class:`PostgresBlobStore` — ~1 MiB chunks in ``blob_chunks`` and a ``blobs`` row marking
  completion, all written in one transaction; for several nodes sharing one PostgreSQL.

A failed write (exception, cancellation, ``max_size`` exceeded) leaves nothing behind.

``read`` returns an async iterator at once; a missing blob raises :class:`BlobNotFoundError` on
the first iteration. Handlers that stream a blob to a client should check :meth:`BlobStore.size`
first so they can still answer 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from sqlalchemy import delete, func, insert, select

from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.server.storage.db import Database
from fitconnect_kit.server.storage.models import Blob, BlobChunk

DEFAULT_CHUNK_SIZE = 1024 * 1024
MAX_KEY_LENGTH = 255
_TEMP_SUFFIX = ".part"


class BlobError(FitConnectError):
    """Base class of blob store errors."""


class BlobNotFoundError(BlobError, KeyError):
    def __init__(self, key: str) -> None:
        super().__init__(f"blob {key!r} not found")
        self.key = key

    def __str__(self) -> str:  # KeyError would quote the message again
        return str(self.args[0])


class BlobTooLargeError(BlobError):
    """A write exceeded its ``max_size``; nothing was stored."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(f"blob {key!r} exceeds the limit of {limit} bytes")
        self.key = key
        self.limit = limit


def check_key(key: str) -> str:
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"blob key must be 1–{MAX_KEY_LENGTH} characters")
    if any(ord(c) < 0x20 for c in key):
        raise ValueError("blob key must not contain control characters")
    return key


def attachment_blob_key(submission_id: str, attachment_id: str) -> str:
    """The conventional key of an attachment ciphertext."""
    return f"submissions/{submission_id}/attachments/{attachment_id}"


@runtime_checkable
class BlobStore(Protocol):
    """Where attachment ciphertexts live."""

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None
    ) -> int:
        """Store ``chunks`` under ``key`` (replacing an existing blob) and return the size.

        Atomic: the blob is visible only once complete. When ``max_size`` would be exceeded,
        :class:`BlobTooLargeError` is raised and nothing is stored (an older blob under the same
        key stays as it was).
        """
        ...

    def read(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; :class:`BlobNotFoundError` on first iteration if missing."""
        ...

    async def delete(self, key: str) -> None:
        """Remove the blob; deleting a missing blob is not an error."""
        ...

    async def exists(self, key: str) -> bool: ...

    async def size(self, key: str) -> int:
        """Size in bytes; raises :class:`BlobNotFoundError`."""
        ...


# --- file system ---------------------------------------------------------------------------------


class FileBlobStore:
    """Blobs as files ``<root>/<h[0:2]>/<h[2:4]>/<h>`` with ``h`` = SHA-256 of the key."""

    def __init__(self, root: Path, *, write_buffer_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self.root = Path(root)
        self._write_buffer_size = write_buffer_size

    def path_for(self, key: str) -> Path:
        digest = hashlib.sha256(check_key(key).encode("utf-8")).hexdigest()
        return self.root / digest[:2] / digest[2:4] / digest

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None
    ) -> int:
        target = self.path_for(key)
        await asyncio.to_thread(target.parent.mkdir, parents=True, exist_ok=True)
        temp = target.with_name(f".{target.name}.{os.urandom(8).hex()}{_TEMP_SUFFIX}")
        handle: BinaryIO = await asyncio.to_thread(open, temp, "xb")
        total = 0
        buffer = bytearray()
        try:
            async for chunk in chunks:
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise BlobTooLargeError(key, max_size)
                buffer += chunk
                # Collect small network chunks so the thread hop happens per MiB, not per 64 KiB.
                if len(buffer) >= self._write_buffer_size:
                    await asyncio.to_thread(handle.write, bytes(buffer))
                    buffer.clear()
            if buffer:
                await asyncio.to_thread(handle.write, bytes(buffer))
            await asyncio.to_thread(_flush_and_close, handle)
            await asyncio.to_thread(os.replace, temp, target)
            await asyncio.to_thread(_fsync_directory, target.parent)
        except BaseException:
            # Also on cancellation: the temp file must not stay behind. Cleanup is synchronous
            # because awaiting inside a cancelled task is not reliable.
            handle.close()
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
            raise
        return total

    async def read(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        path = self.path_for(key)
        try:
            handle: BinaryIO = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None
        try:
            while True:
                chunk = await asyncio.to_thread(handle.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            handle.close()

    async def delete(self, key: str) -> None:
        path = self.path_for(key)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(path.unlink)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self.path_for(key).is_file)

    async def size(self, key: str) -> int:
        try:
            stat = await asyncio.to_thread(self.path_for(key).stat)
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None
        return stat.st_size

    async def remove_stale_temp_files(self, older_than_seconds: float = 24 * 3600) -> int:
        """Delete temp files left by crashed processes; returns how many were removed."""
        return await asyncio.to_thread(self._remove_stale_temp_files, older_than_seconds)

    def _remove_stale_temp_files(self, older_than_seconds: float) -> int:
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for temp in self.root.glob(f"*/*/.*{_TEMP_SUFFIX}"):
            with contextlib.suppress(FileNotFoundError):
                if temp.stat().st_mtime < cutoff:
                    temp.unlink()
                    removed += 1
        return removed

    async def remove_unreferenced(
        self, referenced_keys: Collection[str], *, older_than_seconds: float
    ) -> int:
        """Delete blobs older than ``older_than_seconds`` (mtime) whose key is not in
        ``referenced_keys``; returns how many. File names are hashes, so the keys are hashed."""
        keep = {hashlib.sha256(key.encode("utf-8")).hexdigest() for key in referenced_keys}
        return await asyncio.to_thread(self._remove_unreferenced, keep, older_than_seconds)

    def _remove_unreferenced(self, keep: set[str], older_than_seconds: float) -> int:
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_seconds
        removed = 0
        for path in self.root.glob("*/*/*"):
            name = path.name
            if len(name) != 64 or name in keep or name.startswith("."):
                continue
            if path.parent.name != name[2:4] or path.parent.parent.name != name[:2]:
                continue  # not a blob of this store's layout
            with contextlib.suppress(FileNotFoundError):
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
        return removed


def _flush_and_close(handle: BinaryIO) -> None:
    try:
        handle.flush()
        os.fsync(handle.fileno())
    finally:
        handle.close()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- PostgreSQL ----------------------------------------------------------------------------------


class PostgresBlobStore:
    """Blobs in the database, in chunks of ``chunk_size`` bytes (one transaction per write).

    Works on any database SQLAlchemy supports, but is meant for PostgreSQL (multi-node setups):
    on SQLite a long upload would hold the database's write lock for its whole duration.
    """

    def __init__(self, database: Database, *, chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        self._db = database
        self._chunk_size = chunk_size

    async def write(
        self, key: str, chunks: AsyncIterator[bytes], *, max_size: int | None = None
    ) -> int:
        check_key(key)
        total = 0
        seq = 0
        buffer = bytearray()
        async with self._db.sessions() as session, session.begin():
            # Replacing: the old chunks go in the same transaction, so readers see old or new.
            await session.execute(delete(Blob).where(Blob.blob_key == key))
            await session.execute(delete(BlobChunk).where(BlobChunk.blob_key == key))
            async for chunk in chunks:
                total += len(chunk)
                if max_size is not None and total > max_size:
                    raise BlobTooLargeError(key, max_size)  # rolls the transaction back
                buffer += chunk
                while len(buffer) >= self._chunk_size:
                    piece = bytes(buffer[: self._chunk_size])
                    del buffer[: self._chunk_size]
                    await session.execute(
                        insert(BlobChunk).values(blob_key=key, seq=seq, data=piece)
                    )
                    seq += 1
            if buffer or seq == 0:
                await session.execute(
                    insert(BlobChunk).values(blob_key=key, seq=seq, data=bytes(buffer))
                )
                seq += 1
            await session.execute(
                insert(Blob).values(
                    blob_key=key, size=total, chunk_count=seq, created_at=datetime.now(UTC)
                )
            )
        return total

    async def read(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
        # Stored chunks are yielded as they are; ``chunk_size`` is only a hint here.
        async with self._db.sessions() as session:
            count = await session.scalar(select(Blob.chunk_count).where(Blob.blob_key == key))
        if count is None:
            raise BlobNotFoundError(key)
        # One short query per chunk: no transaction or connection stays open while the client
        # is slow to receive.
        for seq in range(count):
            async with self._db.sessions() as session:
                data = await session.scalar(
                    select(BlobChunk.data).where(BlobChunk.blob_key == key, BlobChunk.seq == seq)
                )
            if data is None:  # deleted while being read
                raise BlobNotFoundError(key)
            if data:
                yield bytes(data)

    async def delete(self, key: str) -> None:
        async with self._db.sessions() as session, session.begin():
            await session.execute(delete(Blob).where(Blob.blob_key == key))
            await session.execute(delete(BlobChunk).where(BlobChunk.blob_key == key))

    async def exists(self, key: str) -> bool:
        async with self._db.sessions() as session:
            found = await session.scalar(
                select(func.count()).select_from(Blob).where(Blob.blob_key == key)
            )
        return bool(found)

    async def size(self, key: str) -> int:
        async with self._db.sessions() as session:
            size = await session.scalar(select(Blob.size).where(Blob.blob_key == key))
        if size is None:
            raise BlobNotFoundError(key)
        return int(size)

    async def remove_unreferenced(
        self, referenced_keys: Collection[str], *, older_than_seconds: float
    ) -> int:
        """Delete blobs created more than ``older_than_seconds`` ago whose key is not in
        ``referenced_keys``; returns how many (one short transaction per blob)."""
        cutoff = datetime.now(UTC) - timedelta(seconds=older_than_seconds)
        async with self._db.sessions() as session:
            candidates = list(
                await session.scalars(select(Blob.blob_key).where(Blob.created_at < cutoff))
            )
        removed = 0
        for key in candidates:
            if key not in referenced_keys:
                await self.delete(key)
                removed += 1
        return removed
