"""The ``cleanup`` worker: leftovers of crashes in the blob store.

An upload streams into the blob store first and is recorded in ``attachments`` afterwards
(``domain/submissions.py``); a process that dies in between leaves a complete but unreferenced
blob, one that dies while writing leaves a temp file (file blob store). One pass
(:func:`run_cleanup_pass`, every ``workers.cleanup_interval`` seconds) removes

* **stale temp files** of the file blob store (``FileBlobStore.remove_stale_temp_files``), and
* **orphan blobs**: blobs that no ``attachments.blob_key`` and no
  ``submissions.encrypted_data_blob_key`` refers to,

each only once it is older than ``workers.cleanup_grace`` (default 1 hour, by the blob store's
own wall-clock time: file mtime, ``blobs.created_at``). The grace keeps the pass away from uploads
in progress (their temp file is written to at least once per MiB) and from blobs whose row is
about to be committed (milliseconds after the write).

**Several nodes** may run the pass at the same time: it only deletes what is old *and*
unreferenced, the referenced keys are read before the blobs are listed (a blob recorded after that
read is younger than the grace), deleting a blob that is already gone is not an error, and
nothing is deleted when reading the references fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import select

from fitconnect_kit.server.storage.blobs import FileBlobStore, PostgresBlobStore
from fitconnect_kit.server.storage.models import Attachment, Submission

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

logger = logging.getLogger("fitconnect_kit.server.cleanup")

WORKER_NAME = "cleanup"


@dataclass
class CleanupPassResult:
    """What one pass removed."""

    temp_files: int = 0
    orphan_blobs: int = 0


async def referenced_blob_keys(zd: ZdState) -> set[str]:
    """Every blob key the database still refers to (attachments and data blobs)."""
    async with zd.sessions() as session:
        attachments = await session.scalars(select(Attachment.blob_key))
        keys = set(attachments)
        data = await session.scalars(
            select(Submission.encrypted_data_blob_key).where(
                Submission.encrypted_data_blob_key.is_not(None)
            )
        )
        keys.update(key for key in data if key)
    return keys


async def run_cleanup_pass(zd: ZdState) -> CleanupPassResult:
    """Remove stale temp files and orphan blobs older than ``workers.cleanup_grace``."""
    result = CleanupPassResult()
    grace = zd.config.workers.cleanup_grace.total_seconds()
    store = zd.blobs
    if isinstance(store, FileBlobStore):
        result.temp_files = await store.remove_stale_temp_files(older_than_seconds=grace)
    if isinstance(store, FileBlobStore | PostgresBlobStore):
        referenced = await referenced_blob_keys(zd)
        result.orphan_blobs = await store.remove_unreferenced(referenced, older_than_seconds=grace)
    if result.temp_files or result.orphan_blobs:
        logger.info(
            "cleanup: removed %d stale temp file(s) and %d orphan blob(s)",
            result.temp_files,
            result.orphan_blobs,
        )
    return result
