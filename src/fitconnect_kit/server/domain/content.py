"""Deleting the content of a submission: metadata, data and every attachment ciphertext.

The event log, the submission row (status, timestamps, callback settings) and the attachment rows
(ids, sizes, authentication tags — no content) stay; ``content_deleted_at`` marks the deletion.
Handlers must answer "gone" for content of a submission with ``content_deleted_at`` set.

The blobs are removed from the blob store **for real** (files unlinked, PostgreSQL chunks
deleted) *before* the caller's transaction commits: if the transaction then rolls back, the row
still says "content present" and the next deletion attempt removes whatever is left (deleting a
missing blob is not an error). The opposite order could leave orphaned blobs forever.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.server.storage.models import Attachment, Submission

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState

logger = logging.getLogger("fitconnect_kit.server.content")


async def submission_blob_keys(session: AsyncSession, submission: Submission) -> list[str]:
    """Every blob key that holds content of ``submission`` (attachments, data blob)."""
    keys = list(
        await session.scalars(
            select(Attachment.blob_key)
            .where(Attachment.submission_id == submission.submission_id)
            .order_by(Attachment.attachment_id)
        )
    )
    if submission.encrypted_data_blob_key:
        keys.append(submission.encrypted_data_blob_key)
    return keys


async def delete_submission_content(
    session: AsyncSession, zd: ZdState, submission: Submission
) -> None:
    """Remove metadata, data and all attachment blobs of ``submission``; idempotent.

    Sets ``content_deleted_at`` (kept from the first deletion) and ``updated_at``; commit the
    caller's transaction afterwards. Issuing ``delete-submission`` is the caller's business.
    """
    keys = await submission_blob_keys(session, submission)
    for key in keys:
        await zd.blobs.delete(key)
    now = zd.clock.now()
    submission.encrypted_metadata = None
    submission.encrypted_data = None
    submission.encrypted_data_blob_key = None
    if submission.content_deleted_at is None:
        submission.content_deleted_at = now
        logger.info(
            "content of submission %s deleted (%d blobs)",
            submission.submission_id,
            len(keys),
            extra={"submission_id": submission.submission_id, "blobs_deleted": len(keys)},
        )
    submission.updated_at = now
    await session.flush()
