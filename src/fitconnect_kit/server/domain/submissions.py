"""Submissions: the state machine from announcement to pickup (reference §3.1, §3.2, §7).

Sender side: :func:`announce_submission` (→ ``incomplete`` + ``create-submission``),
:func:`upload_attachment` (streamed into the blob store), :func:`submit_submission`
(→ ``submitted`` + ``submit-submission`` with the authentication tags + NEW_SUBMISSIONS).
Subscriber side: :func:`list_waiting_submissions`, :func:`fetch_submission`,
:func:`open_attachment` (each listing/fetch counts as notification: ``notify-submission``
``polling``, at most once per submission).

Every function is one unit of work on the given session and ends its transaction (commit, or
rollback when it only read) — on SQLite a transaction holds the database's write lock, so none
stays open while a body streams in or out. Status changes and their events are written in the
same transaction; state transitions lock the submission row (``SELECT … FOR UPDATE`` on
PostgreSQL; SQLite serializes writers) so concurrent requests, also on several nodes, cannot
double-submit or lose uploads.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from fitconnect_kit.protocol.api import AnnounceSubmission, SubmitSubmission
from fitconnect_kit.protocol.events import AuthenticationTags, Event, NotifyType
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.problems import ApiProblems
from fitconnect_kit.server.admin import AdminInputError, check_callback_target
from fitconnect_kit.server.compat import (
    FETCHABLE_STATUSES,
    NOTIFY_ON_POLLING,
    REGION_OF_SERVICE_WITHOUT_REGIONS,
)
from fitconnect_kit.server.domain.eventlog import append_zd_event
from fitconnect_kit.server.domain.jwe_checks import InvalidJweError, StreamedJwe, check_jwe
from fitconnect_kit.server.domain.outbox import enqueue_new_events, enqueue_new_submissions
from fitconnect_kit.server.problems import ApiError, PayloadTooLarge
from fitconnect_kit.server.storage.blobs import BlobTooLargeError, attachment_blob_key
from fitconnect_kit.server.storage.models import (
    Attachment,
    Case,
    Destination,
    DestinationStatus,
    Submission,
    SubmissionStatus,
)
from fitconnect_kit.server.storage.models import Event as EventRow

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.state import ZdState


def notify_dedup_key(submission_id: str, notify_type: NotifyType = NotifyType.POLLING) -> str:
    """``notify-submission:<id>:<type>`` — the event exists at most once per type."""
    return f"notify-submission:{submission_id}:{notify_type.value}"


def _not_found(submission_id: str) -> ApiError:
    return ApiError(ApiProblems.SUBMISSION_NOT_FOUND, f"submission {submission_id} not found")


async def _locked(session: AsyncSession, submission_id: str) -> Submission | None:
    """The submission row, locked for this transaction (PostgreSQL), freshly read."""
    result = await session.scalar(
        select(Submission)
        .where(Submission.submission_id == submission_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result


async def _owned(session: AsyncSession, principal: Principal, submission_id: str) -> Submission:
    """The sender's own submission, locked; 404 for unknown and foreign ones alike."""
    submission = await _locked(session, submission_id)
    if submission is None or submission.sender_client_id != principal.client_id:
        raise _not_found(submission_id)
    return submission


def _require_incomplete(submission: Submission, action: str) -> None:
    if submission.status != SubmissionStatus.INCOMPLETE.value:
        raise ApiError(
            ApiProblems.SUBMISSION_STATE_INVALID,
            f"submission {submission.submission_id} is {submission.status}; {action} is only "
            "possible while it is incomplete",
            submissionStatus=submission.status,
        )


async def _uploaded(session: AsyncSession, submission_id: str) -> list[Attachment]:
    return list(
        await session.scalars(select(Attachment).where(Attachment.submission_id == submission_id))
    )


# --- announce ------------------------------------------------------------------------------------


async def announce_submission(
    session: AsyncSession, zd: ZdState, principal: Principal, body: AnnounceSubmission
) -> Submission:
    """``POST /v1/submissions``: a new ``incomplete`` submission (in a new or given case)."""
    limits = zd.config.limits
    announced = list(body.announced_attachments)
    if len(announced) > limits.max_attachments:
        raise ApiError(
            ApiProblems.TOO_MANY_ATTACHMENTS,
            f"{len(announced)} attachments announced; at most {limits.max_attachments} are "
            "allowed per submission",
        )
    callback_url = callback_secret = None
    if body.callback is not None:
        try:
            callback_url = await check_callback_target(body.callback.url, zd.config)
        except AdminInputError as exc:
            raise ApiError(ApiProblems.INVALID_CALLBACK, f"callback.url: {exc}") from None
        callback_secret = body.callback.secret.get_secret_value()

    destination = await session.get(Destination, body.destination_id)
    if destination is None:
        raise ApiError(
            ApiProblems.DESTINATION_NOT_FOUND, f"destination {body.destination_id} not found"
        )
    if destination.status != DestinationStatus.ACTIVE.value:
        raise ApiError(
            ApiProblems.DESTINATION_STATE_INVALID,
            f"destination {destination.destination_id} is {destination.status}; submissions "
            "can only be sent to active destinations",
        )
    identifier = body.service_type.identifier
    service = next((s for s in destination.services if s.get("identifier") == identifier), None)
    if service is None:
        offered = ", ".join(str(s.get("identifier")) for s in destination.services)
        raise ApiError(
            ApiProblems.SERVICE_TYPE_MISMATCH,
            f"destination {destination.destination_id} does not offer the service "
            f"{identifier} (offered: {offered})",
        )
    regions = list(service.get("regions") or [REGION_OF_SERVICE_WITHOUT_REGIONS])
    if not principal.may_send_to_any(regions):
        granted = ", ".join(principal.region_scopes) or "none"
        raise ApiError(
            ApiProblems.FORBIDDEN,
            f"the token's send:region scopes ({granted}) cover none of the regions of "
            f"{identifier} at this destination ({', '.join(regions)})",
        )

    now = zd.clock.now()
    if body.case_id is not None:
        case = await session.get(Case, body.case_id)
        if (
            case is None
            or case.destination_id != destination.destination_id
            or case.sender_client_id != principal.client_id
        ):
            raise ApiError(
                ApiProblems.CASE_NOT_FOUND,
                f"case {body.case_id} not found (a submission can only be added to a case of "
                "the same destination that this sender opened)",
            )
        case_id = case.case_id
    else:
        case_id = new_id()
        session.add(
            Case(
                case_id=case_id,
                destination_id=destination.destination_id,
                sender_client_id=principal.client_id,
                created_at=now,
                last_event_at=now,
            )
        )
    submission = Submission(
        submission_id=new_id(),
        case_id=case_id,
        destination_id=destination.destination_id,
        sender_client_id=principal.client_id,
        service_type=body.service_type.to_json(),
        announced_attachments=announced,
        status=SubmissionStatus.INCOMPLETE.value,
        sender_callback_url=callback_url,
        sender_callback_secret=callback_secret,
        created_at=now,
        reminders_sent=0,
        updated_at=now,
    )
    session.add(submission)
    await session.flush()
    await append_zd_event(
        session,
        zd,
        case_id=case_id,
        submission_id=submission.submission_id,
        event=Event.CREATE_SUBMISSION,
        payload={},
        dedup_key=f"create-submission:{submission.submission_id}",
    )
    await session.commit()
    return submission


# --- upload --------------------------------------------------------------------------------------


def _too_large(attachment_limit: bool, limit: int, submission_id: str) -> ApiError:
    if attachment_limit:
        return ApiError(
            ApiProblems.ATTACHMENT_TOO_LARGE,
            f"an encrypted attachment may have at most {limit} bytes",
        )
    return ApiError(
        ApiProblems.SUBMISSION_TOO_LARGE,
        f"the encrypted attachments of submission {submission_id} may have at most {limit} "
        "bytes together",
    )


async def _check_upload_allowed(
    session: AsyncSession, principal: Principal, submission_id: str, attachment_id: str
) -> int:
    """Checks before the body is read; returns the bytes already uploaded for the submission."""
    submission = await _owned(session, principal, submission_id)
    _require_incomplete(submission, "uploading attachments")
    if attachment_id not in submission.announced_attachments:
        raise ApiError(
            ApiProblems.ATTACHMENT_NOT_FOUND,
            f"attachment {attachment_id} was not announced for submission {submission_id}",
        )
    uploaded = await _uploaded(session, submission_id)
    if any(a.attachment_id == attachment_id for a in uploaded):
        raise ApiError(
            ApiProblems.ATTACHMENT_ALREADY_UPLOADED,
            f"attachment {attachment_id} of submission {submission_id} was already uploaded",
        )
    return sum(a.size for a in uploaded)


async def upload_attachment(
    session: AsyncSession,
    zd: ZdState,
    principal: Principal,
    submission_id: str,
    attachment_id: str,
    body: AsyncIterator[bytes],
    *,
    content_length: int | None,
) -> None:
    """``PUT …/attachments/{attachmentId}``: stream a JWE into the blob store and record it.

    Each upload writes its own blob key, so concurrent uploads of the same attachment never
    overwrite each other; the ``attachments`` row (primary key submission + attachment) decides
    which one wins, the loser's blob is deleted and it gets 409. Nothing is stored for invalid,
    oversized or refused uploads.
    """
    limits = zd.config.limits
    try:
        used = await _check_upload_allowed(session, principal, submission_id, attachment_id)
    finally:
        await session.rollback()  # no transaction (SQLite: write lock) while the body streams
    room = limits.max_submission_size - used
    if content_length is not None:
        if content_length > limits.max_attachment_size:
            raise _too_large(True, limits.max_attachment_size, submission_id)
        if content_length > room:
            raise _too_large(False, limits.max_submission_size, submission_id)
    max_size = min(limits.max_attachment_size, room)
    by_attachment_limit = max_size == limits.max_attachment_size

    jwe = StreamedJwe(body)
    key = f"{attachment_blob_key(submission_id, attachment_id)}/{new_id()}"
    try:
        size = await zd.blobs.write(key, jwe.chunks(), max_size=max(max_size, 0))
    except InvalidJweError as exc:
        raise ApiError(
            ApiProblems.INVALID_JWE,
            f"the attachment body is not a valid JWE compact serialization: {exc}",
        ) from None
    except BlobTooLargeError:
        raise _too_large(
            by_attachment_limit,
            limits.max_attachment_size if by_attachment_limit else limits.max_submission_size,
            submission_id,
        ) from None
    except PayloadTooLarge:  # the body limit of the route (= max_attachment_size) cut it off
        raise _too_large(True, limits.max_attachment_size, submission_id) from None
    assert jwe.info is not None

    try:
        await _record_upload(
            session, zd, submission_id, attachment_id, key, size, jwe.info.authentication_tag
        )
    except BaseException:
        await session.rollback()
        await zd.blobs.delete(key)
        raise


async def _record_upload(
    session: AsyncSession,
    zd: ZdState,
    submission_id: str,
    attachment_id: str,
    key: str,
    size: int,
    tag: str,
) -> None:
    limits = zd.config.limits
    submission = await _locked(session, submission_id)
    if submission is None:
        raise _not_found(submission_id)
    _require_incomplete(submission, "uploading attachments")
    uploaded = await _uploaded(session, submission_id)
    if any(a.attachment_id == attachment_id for a in uploaded):
        raise ApiError(
            ApiProblems.ATTACHMENT_ALREADY_UPLOADED,
            f"attachment {attachment_id} of submission {submission_id} was already uploaded",
        )
    if sum(a.size for a in uploaded) + size > limits.max_submission_size:
        raise _too_large(False, limits.max_submission_size, submission_id)
    now = zd.clock.now()
    session.add(
        Attachment(
            submission_id=submission_id,
            attachment_id=attachment_id,
            blob_key=key,
            size=size,
            authentication_tag=tag,
            uploaded_at=now,
        )
    )
    submission.updated_at = now
    try:
        await session.flush()
    except IntegrityError:
        raise ApiError(
            ApiProblems.ATTACHMENT_ALREADY_UPLOADED,
            f"attachment {attachment_id} of submission {submission_id} was already uploaded",
        ) from None
    await session.commit()


# --- submit --------------------------------------------------------------------------------------


async def submit_submission(
    session: AsyncSession,
    zd: ZdState,
    principal: Principal,
    submission_id: str,
    body: SubmitSubmission,
) -> Submission:
    """``PUT /v1/submissions/{submissionId}``: ``incomplete`` → ``submitted``."""
    submission = await _owned(session, principal, submission_id)
    _require_incomplete(submission, "submitting")
    uploaded = {a.attachment_id: a for a in await _uploaded(session, submission_id)}
    missing = [a for a in submission.announced_attachments if a not in uploaded]
    if missing:
        raise ApiError(
            ApiProblems.MISSING_ATTACHMENTS,
            f"{len(missing)} announced attachment(s) not uploaded yet: {', '.join(missing)}",
            missingAttachments=missing,
        )
    try:
        metadata_tag = check_jwe(body.encrypted_metadata, "encryptedMetadata").authentication_tag
        data_tag = (
            check_jwe(body.encrypted_data, "encryptedData").authentication_tag
            if body.encrypted_data is not None
            else None
        )
    except InvalidJweError as exc:
        raise ApiError(ApiProblems.INVALID_JWE, str(exc)) from None
    tags = AuthenticationTags(
        metadata=metadata_tag,
        data=data_tag,
        attachments={
            attachment_id: uploaded[attachment_id].authentication_tag
            for attachment_id in submission.announced_attachments
        },
    )
    now = zd.clock.now()
    submission.status = SubmissionStatus.SUBMITTED.value
    submission.submitted_at = now
    submission.encrypted_metadata = body.encrypted_metadata
    submission.encrypted_data = body.encrypted_data
    submission.updated_at = now
    await session.flush()
    await append_zd_event(
        session,
        zd,
        case_id=submission.case_id,
        submission_id=submission.submission_id,
        event=Event.SUBMIT_SUBMISSION,
        payload={"authenticationTags": tags},
        dedup_key=f"submit-submission:{submission.submission_id}",
    )
    await enqueue_new_submissions(session, zd, submission)
    await session.commit()
    return submission


# --- subscriber: list, fetch, download --------------------------------------------------------


def _waiting(destination_ids: Collection[str]) -> Any:
    return (
        Submission.destination_id.in_(sorted(destination_ids)),
        Submission.status == SubmissionStatus.SUBMITTED.value,
        Submission.content_deleted_at.is_(None),
        Submission.encrypted_metadata.is_not(None),
    )


async def notify_polling(
    session: AsyncSession, zd: ZdState, submissions: Sequence[Submission]
) -> None:
    """``notify-submission`` ``polling`` for each still ``submitted`` submission that has none
    yet, plus NEW_EVENTS to its sender (only when this call wrote the event)."""
    if not NOTIFY_ON_POLLING:
        return
    candidates = {
        notify_dedup_key(s.submission_id): s
        for s in submissions
        if s.status == SubmissionStatus.SUBMITTED.value
    }
    if not candidates:
        return
    done = set(
        await session.scalars(
            select(EventRow.dedup_key).where(EventRow.dedup_key.in_(sorted(candidates)))
        )
    )
    for key, submission in candidates.items():
        if key in done:
            continue
        record = await append_zd_event(
            session,
            zd,
            case_id=submission.case_id,
            submission_id=submission.submission_id,
            event=Event.NOTIFY_SUBMISSION,
            payload={"notifyType": NotifyType.POLLING.value},
            dedup_key=key,
        )
        if record is not None:
            await enqueue_new_events(session, zd, submission, to_sender=True)


async def list_waiting_submissions(
    session: AsyncSession,
    zd: ZdState,
    destination_ids: Collection[str],
    *,
    offset: int,
    limit: int,
) -> tuple[list[Submission], int]:
    """Submissions waiting for pickup at ``destination_ids``, in arrival order, and the total."""
    if not destination_ids:
        await session.rollback()
        return [], 0
    conditions = _waiting(destination_ids)
    total = await session.scalar(select(func.count()).select_from(Submission).where(*conditions))
    page = list(
        await session.scalars(
            select(Submission)
            .where(*conditions)
            .order_by(Submission.submitted_at, Submission.submission_id)
            .offset(offset)
            .limit(limit)
        )
    )
    await notify_polling(session, zd, page)
    await session.commit()
    return page, int(total or 0)


async def _for_subscriber(
    session: AsyncSession, principal: Principal, submission_id: str
) -> Submission:
    """A submitted submission of a destination the subscriber is linked to (else 404)."""
    submission = await session.get(Submission, submission_id)
    if (
        submission is None
        or submission.destination_id not in principal.linked_destination_ids
        or submission.status == SubmissionStatus.INCOMPLETE.value
    ):
        raise _not_found(submission_id)
    return submission


async def _require_fetchable(session: AsyncSession, zd: ZdState, submission: Submission) -> None:
    gone = ApiError(
        ApiProblems.SUBMISSION_STATE_INVALID,
        f"submission {submission.submission_id} can no longer be fetched: its content was deleted",
        submissionStatus=submission.status,
    )
    if (
        submission.content_deleted_at is not None
        or submission.encrypted_metadata is None
        or submission.status not in FETCHABLE_STATUSES
    ):
        raise gone
    if submission.status == SubmissionStatus.REJECTED.value:
        by_zd = await session.scalar(
            select(func.count())
            .select_from(EventRow)
            .where(
                EventRow.submission_id == submission.submission_id,
                EventRow.event_uri == Event.REJECT_SUBMISSION.value,
                EventRow.issuer == zd.config.base_url,
            )
        )
        if by_zd:
            raise ApiError(
                ApiProblems.SUBMISSION_STATE_INVALID,
                f"submission {submission.submission_id} was rejected by the Zustelldienst "
                "(not picked up in time) and can no longer be fetched",
                submissionStatus=submission.status,
            )


async def fetch_submission(
    session: AsyncSession, zd: ZdState, principal: Principal, submission_id: str
) -> tuple[Submission, list[str]]:
    """``GET /v1/submissions/{id}``: the submission and its attachment ids; the first fetch is
    the pickup (``first_fetched_at``) and counts as notification."""
    submission = await _for_subscriber(session, principal, submission_id)
    await _require_fetchable(session, zd, submission)
    if submission.first_fetched_at is None:
        now = zd.clock.now()
        await session.execute(
            update(Submission)
            .where(
                Submission.submission_id == submission_id,
                Submission.first_fetched_at.is_(None),
            )
            .values(first_fetched_at=now, updated_at=now)
        )
    await notify_polling(session, zd, [submission])
    await session.commit()
    return submission, list(submission.announced_attachments)


@dataclass(frozen=True)
class AttachmentContent:
    blob_key: str
    size: int


async def open_attachment(
    session: AsyncSession,
    zd: ZdState,
    principal: Principal,
    submission_id: str,
    attachment_id: str,
) -> AttachmentContent:
    """Where the ciphertext of an attachment lives (checked: linked, fetchable, uploaded)."""
    try:
        submission = await _for_subscriber(session, principal, submission_id)
        await _require_fetchable(session, zd, submission)
        attachment = await session.get(Attachment, (submission_id, attachment_id))
        if attachment is None:
            raise ApiError(
                ApiProblems.ATTACHMENT_NOT_FOUND,
                f"submission {submission_id} has no attachment {attachment_id}",
            )
        return AttachmentContent(attachment.blob_key, attachment.size)
    finally:
        await session.rollback()
