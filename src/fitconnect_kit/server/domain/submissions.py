"""Submissions: the state machine from announcement to pickup (reference §3.1, §3.2, §7).

Sender side: :func:`announce_submission` (→ ``incomplete`` + ``create-submission``),
:func:`upload_attachment` (streamed into the blob store), :func:`submit_submission`
(→ ``submitted`` + ``submit-submission`` with the authentication tags + NEW_SUBMISSIONS).
Subscriber side: :func:`list_waiting_submissions`, :func:`fetch_submission`,
:func:`open_attachment` (each listing/fetch counts as notification: ``notify-submission``
``polling``, at most once per submission).

Every function is one unit of work on the given session and ends its transaction (commit, or
rollback when it only read) — on SQLite a transaction holds the database's write lock, so none
stays open while a body streams in or out; what only reads (the upload pre-check, attachment
downloads) uses a read-only connection instead. Status changes and their events are written in
the same transaction; state transitions lock the submission row (PostgreSQL: the conditional
``UPDATE … RETURNING`` that makes the change, or ``SELECT … FOR UPDATE``; SQLite serializes
writers) so concurrent requests, also on several nodes, cannot double-submit or lose uploads.

The hot paths use SQLAlchemy Core statements built once at module level (plain rows, no ORM
unit of work) and fold what one request needs into as few statements as the locking allows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

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
    ATTACHMENTS,
    CASES,
    DESTINATIONS,
    EVENTS,
    SUBMISSIONS,
    DestinationStatus,
    SubmissionStatus,
    UtcDateTime,
)

if TYPE_CHECKING:
    from fitconnect_kit.server.auth import Principal
    from fitconnect_kit.server.state import ZdState

_S = SUBMISSIONS.c
_INCOMPLETE = SubmissionStatus.INCOMPLETE.value
_SUBMITTED = SubmissionStatus.SUBMITTED.value


def notify_dedup_key(submission_id: str, notify_type: NotifyType = NotifyType.POLLING) -> str:
    """``notify-submission:<id>:<type>`` — the event exists at most once per type."""
    return f"notify-submission:{submission_id}:{notify_type.value}"


def _polling_notified(submission_id: ColumnElement[str]) -> ColumnElement[bool]:
    """``notify-submission`` ``polling`` is in the log (the key of :func:`notify_dedup_key`,
    built by the database; the UNIQUE index on ``dedup_key`` answers it)."""
    prefix, suffix = notify_dedup_key("\0").split("\0")
    key = literal(prefix) + submission_id + literal(suffix)
    return exists().where(EVENTS.c.dedup_key == key)


@dataclass(frozen=True)
class SubmissionIds:
    """Where a submission belongs (what the API answers after announce, submit and list)."""

    submission_id: str
    case_id: str
    destination_id: str


def _not_found(submission_id: str) -> ApiError:
    return ApiError(ApiProblems.SUBMISSION_NOT_FOUND, f"submission {submission_id} not found")


def _state_invalid(submission_id: str, status: str, action: str) -> ApiError:
    return ApiError(
        ApiProblems.SUBMISSION_STATE_INVALID,
        f"submission {submission_id} is {status}; {action} is only possible while it is incomplete",
        submissionStatus=status,
    )


def _already_uploaded(submission_id: str, attachment_id: str) -> ApiError:
    return ApiError(
        ApiProblems.ATTACHMENT_ALREADY_UPLOADED,
        f"attachment {attachment_id} of submission {submission_id} was already uploaded",
    )


# Statements are built once (a reused statement keeps its cache key); bound values by name.
# In UPDATEs the names of bound values are never column names: SQLAlchemy would read such a
# key as one more column to SET.
_OWNER_AND_STATUS = select(_S.sender_client_id, _S.status).where(
    _S.submission_id == bindparam("submission_id")
)
_UPLOADED = select(ATTACHMENTS.c.attachment_id, ATTACHMENTS.c.size).where(
    ATTACHMENTS.c.submission_id == bindparam("submission_id")
)
_UPLOADED_TAGS = select(ATTACHMENTS.c.attachment_id, ATTACHMENTS.c.authentication_tag).where(
    ATTACHMENTS.c.submission_id == bindparam("submission_id")
)


async def _refusal_for(
    session: AsyncSession, principal: Principal, submission_id: str, action: str
) -> ApiError:
    """Why a sender's state change found no incomplete submission of its own to change: 404
    for unknown and foreign submissions alike, else the state conflict. Rolls back."""
    await session.rollback()
    row = (await session.execute(_OWNER_AND_STATUS, {"submission_id": submission_id})).first()
    await session.rollback()
    if row is None or row.sender_client_id != principal.client_id:
        return _not_found(submission_id)
    return _state_invalid(submission_id, row.status, action)


# --- announce ------------------------------------------------------------------------------------

_DESTINATION_OFFER = select(DESTINATIONS.c.status, DESTINATIONS.c.services).where(
    DESTINATIONS.c.destination_id == bindparam("destination_id")
)
_CASE_OWNER = select(CASES.c.destination_id, CASES.c.sender_client_id).where(
    CASES.c.case_id == bindparam("case_id")
)
_INSERT_CASE = insert(CASES)
_INSERT_SUBMISSION = insert(SUBMISSIONS)


async def announce_submission(
    session: AsyncSession, zd: ZdState, principal: Principal, body: AnnounceSubmission
) -> SubmissionIds:
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

    destination_id = body.destination_id
    destination = (
        await session.execute(_DESTINATION_OFFER, {"destination_id": destination_id})
    ).first()
    if destination is None:
        raise ApiError(ApiProblems.DESTINATION_NOT_FOUND, f"destination {destination_id} not found")
    if destination.status != DestinationStatus.ACTIVE.value:
        raise ApiError(
            ApiProblems.DESTINATION_STATE_INVALID,
            f"destination {destination_id} is {destination.status}; submissions "
            "can only be sent to active destinations",
        )
    services: list[dict[str, Any]] = destination.services
    identifier = body.service_type.identifier
    service = next((s for s in services if s.get("identifier") == identifier), None)
    if service is None:
        offered = ", ".join(str(s.get("identifier")) for s in services)
        raise ApiError(
            ApiProblems.SERVICE_TYPE_MISMATCH,
            f"destination {destination_id} does not offer the service "
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
    new_case = body.case_id is None
    if body.case_id is not None:
        case = (await session.execute(_CASE_OWNER, {"case_id": body.case_id})).first()
        if (
            case is None
            or case.destination_id != destination_id
            or case.sender_client_id != principal.client_id
        ):
            raise ApiError(
                ApiProblems.CASE_NOT_FOUND,
                f"case {body.case_id} not found (a submission can only be added to a case of "
                "the same destination that this sender opened)",
            )
        case_id = body.case_id
    else:
        case_id = new_id()
        await session.execute(
            _INSERT_CASE,
            {
                "case_id": case_id,
                "destination_id": destination_id,
                "sender_client_id": principal.client_id,
                "created_at": now,
                "last_event_at": now,
            },
        )
    submission_id = new_id()
    await session.execute(
        _INSERT_SUBMISSION,
        {
            "submission_id": submission_id,
            "case_id": case_id,
            "destination_id": destination_id,
            "sender_client_id": principal.client_id,
            "service_type": body.service_type.to_json(),
            "announced_attachments": announced,
            "status": _INCOMPLETE,
            "sender_callback_url": callback_url,
            "sender_callback_secret": callback_secret,
            "encrypted_metadata": None,
            "encrypted_data": None,
            "encrypted_data_blob_key": None,
            "created_at": now,
            "submitted_at": None,
            "first_fetched_at": None,
            "decided_at": None,
            "reminders_sent": 0,
            "content_deleted_at": None,
            "updated_at": now,
        },
    )
    await append_zd_event(
        session,
        zd,
        case_id=case_id,
        submission_id=submission_id,
        event=Event.CREATE_SUBMISSION,
        payload={},
        dedup_key=f"create-submission:{submission_id}",
        # A new case was inserted above with last_event_at = now: nothing to bump.
        recorded_at=now,
        bump_case=not new_case,
    )
    await session.commit()
    return SubmissionIds(submission_id, case_id, destination_id)


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


#: The pre-check of an upload in one statement: the submission and what is uploaded already.
_UPLOAD_PRECHECK = (
    select(
        _S.sender_client_id,
        _S.status,
        _S.announced_attachments,
        exists()
        .where(
            ATTACHMENTS.c.submission_id == _S.submission_id,
            ATTACHMENTS.c.attachment_id == bindparam("attachment_id"),
        )
        .label("already_uploaded"),
        select(func.coalesce(func.sum(ATTACHMENTS.c.size), 0))
        .where(ATTACHMENTS.c.submission_id == _S.submission_id)
        .scalar_subquery()
        .label("uploaded_bytes"),
    )
    .where(_S.submission_id == bindparam("submission_id"))
    .with_for_update()
)


async def _check_upload_allowed(
    zd: ZdState, principal: Principal, submission_id: str, attachment_id: str
) -> int:
    """Checks before the body is read; returns the bytes already uploaded for the submission.

    Only an early answer: :func:`_record_upload` checks again under the lock. So a read-only
    connection (no write lock on SQLite; the row lock on PostgreSQL, as before) and one
    statement."""
    async with zd.database.read_connection() as connection:
        row = (
            await connection.execute(
                _UPLOAD_PRECHECK, {"submission_id": submission_id, "attachment_id": attachment_id}
            )
        ).first()
    if row is None or row.sender_client_id != principal.client_id:
        raise _not_found(submission_id)
    if row.status != _INCOMPLETE:
        raise _state_invalid(submission_id, row.status, "uploading attachments")
    if attachment_id not in row.announced_attachments:
        raise ApiError(
            ApiProblems.ATTACHMENT_NOT_FOUND,
            f"attachment {attachment_id} was not announced for submission {submission_id}",
        )
    if row.already_uploaded:
        raise _already_uploaded(submission_id, attachment_id)
    return int(row.uploaded_bytes)


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
    # No transaction (SQLite: write lock) stays open while the body streams.
    used = await _check_upload_allowed(zd, principal, submission_id, attachment_id)
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


#: Locks the submission row for the upload (like ``SELECT … FOR UPDATE`` on PostgreSQL; the
#: rows uploads and state changes lock are the same) and bumps ``updated_at`` in one statement.
_LOCK_FOR_UPLOAD = (
    update(SUBMISSIONS)
    .where(_S.submission_id == bindparam("match_submission_id"))
    .values(updated_at=bindparam("now", type_=UtcDateTime()))
    .returning(_S.status)
)
_INSERT_ATTACHMENT = insert(ATTACHMENTS)


async def _record_upload(
    session: AsyncSession,
    zd: ZdState,
    submission_id: str,
    attachment_id: str,
    key: str,
    size: int,
    tag: str,
) -> None:
    """Record the stored upload; the caller rolls back on any error (the bump included)."""
    limits = zd.config.limits
    now = zd.clock.now()
    status = (
        await session.execute(_LOCK_FOR_UPLOAD, {"match_submission_id": submission_id, "now": now})
    ).scalar_one_or_none()
    if status is None:
        raise _not_found(submission_id)
    if status != _INCOMPLETE:
        raise _state_invalid(submission_id, status, "uploading attachments")
    # A statement of its own after the lock: on PostgreSQL it sees uploads committed meanwhile.
    uploaded = (await session.execute(_UPLOADED, {"submission_id": submission_id})).all()
    if any(a.attachment_id == attachment_id for a in uploaded):
        raise _already_uploaded(submission_id, attachment_id)
    if sum(a.size for a in uploaded) + size > limits.max_submission_size:
        raise _too_large(False, limits.max_submission_size, submission_id)
    try:
        await session.execute(
            _INSERT_ATTACHMENT,
            {
                "submission_id": submission_id,
                "attachment_id": attachment_id,
                "blob_key": key,
                "size": size,
                "authentication_tag": tag,
                "uploaded_at": now,
            },
        )
    except IntegrityError:
        raise _already_uploaded(submission_id, attachment_id) from None
    await session.commit()


# --- submit --------------------------------------------------------------------------------------

#: ``incomplete`` → ``submitted`` in one statement that also locks the row (PostgreSQL) and
#: returns what the event and the callback need; the checks that follow roll it back.
_SUBMIT = (
    update(SUBMISSIONS)
    .where(
        _S.submission_id == bindparam("match_submission_id"),
        _S.sender_client_id == bindparam("match_sender_client_id"),
        _S.status == _INCOMPLETE,
    )
    .values(
        status=_SUBMITTED,
        submitted_at=bindparam("now", type_=UtcDateTime()),
        encrypted_metadata=bindparam("new_metadata"),
        encrypted_data=bindparam("new_data"),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
    .returning(
        _S.submission_id,
        _S.case_id,
        _S.destination_id,
        _S.announced_attachments,
        _S.sender_callback_url,
        _S.sender_callback_secret,
    )
)


async def submit_submission(
    session: AsyncSession,
    zd: ZdState,
    principal: Principal,
    submission_id: str,
    body: SubmitSubmission,
) -> SubmissionIds:
    """``PUT /v1/submissions/{submissionId}``: ``incomplete`` → ``submitted``."""
    now = zd.clock.now()
    submission = (
        await session.execute(
            _SUBMIT,
            {
                "match_submission_id": submission_id,
                "match_sender_client_id": principal.client_id,
                "now": now,
                "new_metadata": body.encrypted_metadata,
                "new_data": body.encrypted_data,
            },
        )
    ).first()
    if submission is None:
        raise await _refusal_for(session, principal, submission_id, "submitting")
    try:
        tags = _authentication_tags(
            body,
            submission.announced_attachments,
            # A statement of its own after the lock: on PostgreSQL it sees uploads committed
            # meanwhile.
            await session.execute(_UPLOADED_TAGS, {"submission_id": submission_id}),
        )
    except ApiError:
        await session.rollback()
        raise
    await append_zd_event(
        session,
        zd,
        case_id=submission.case_id,
        submission_id=submission_id,
        event=Event.SUBMIT_SUBMISSION,
        payload={"authenticationTags": tags},
        dedup_key=f"submit-submission:{submission_id}",
    )
    await enqueue_new_submissions(session, zd, submission)
    await session.commit()
    return SubmissionIds(submission_id, submission.case_id, submission.destination_id)


def _authentication_tags(
    body: SubmitSubmission, announced: list[str], uploaded_rows: Iterable[Row[Any]]
) -> AuthenticationTags:
    """The tags for ``submit-submission``; refuses missing attachments, then invalid JWEs."""
    uploaded: dict[str, str] = {row.attachment_id: row.authentication_tag for row in uploaded_rows}
    missing = [a for a in announced if a not in uploaded]
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
    return AuthenticationTags(
        metadata=metadata_tag,
        data=data_tag,
        attachments={attachment_id: uploaded[attachment_id] for attachment_id in announced},
    )


# --- subscriber: list, fetch, download --------------------------------------------------------

#: What notifying a submission needs (its event, the sender's NEW_EVENTS callback).
_NOTIFY_BASE = (
    _S.submission_id,
    _S.case_id,
    _S.destination_id,
    _S.status,
    _S.sender_callback_url,
    _S.sender_callback_secret,
)
_NOTIFY_COLUMNS = (*_NOTIFY_BASE, _polling_notified(_S.submission_id).label("notified"))
#: Submitted, with content, to one of the destinations: what a subscriber's list shows.
_IS_WAITING = (
    _S.destination_id.in_(bindparam("destination_ids", expanding=True)),
    _S.status == _SUBMITTED,
    _S.content_deleted_at.is_(None),
    _S.encrypted_metadata.is_not(None),
)
_WAITING_PAGE = (
    select(*_NOTIFY_BASE, _S.submitted_at, func.count().over().label("total"))
    .where(*_IS_WAITING)
    .order_by(_S.submitted_at, _S.submission_id)
    .offset(bindparam("offset", type_=Integer))
    .limit(bindparam("limit", type_=Integer))
    .subquery("waiting")
)
#: One page of the waiting submissions, the total (a window count) and whether each was
#: notified by polling already — the ``notified`` lookup only for the rows of the page.
_WAITING: Select[Any] = select(
    *(_WAITING_PAGE.c[column.name] for column in _NOTIFY_BASE),
    _WAITING_PAGE.c.total,
    _polling_notified(_WAITING_PAGE.c.submission_id).label("notified"),
).order_by(_WAITING_PAGE.c.submitted_at, _WAITING_PAGE.c.submission_id)
_WAITING_TOTAL = select(func.count()).select_from(SUBMISSIONS).where(*_IS_WAITING)


async def _notify_polling(session: AsyncSession, zd: ZdState, submission: Row[Any]) -> None:
    """``notify-submission`` ``polling`` for a still ``submitted`` submission that has none yet
    (``submission.notified``, read with it), plus NEW_EVENTS to its sender (only when this call
    wrote the event: the dedup key decides a race)."""
    if not NOTIFY_ON_POLLING or submission.notified or submission.status != _SUBMITTED:
        return
    record = await append_zd_event(
        session,
        zd,
        case_id=submission.case_id,
        submission_id=submission.submission_id,
        event=Event.NOTIFY_SUBMISSION,
        payload={"notifyType": NotifyType.POLLING.value},
        dedup_key=notify_dedup_key(submission.submission_id),
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
) -> tuple[list[SubmissionIds], int]:
    """Submissions waiting for pickup at ``destination_ids``, in arrival order, and the total."""
    if not destination_ids:
        await session.rollback()
        return [], 0
    linked = sorted(destination_ids)
    page = (
        await session.execute(
            _WAITING, {"destination_ids": linked, "offset": offset, "limit": limit}
        )
    ).all()
    if page:
        total = int(page[0].total)
    else:  # a page past the end: the window count came with no row
        total = int(await session.scalar(_WAITING_TOTAL, {"destination_ids": linked}) or 0)
    for submission in page:
        await _notify_polling(session, zd, submission)
    await session.commit()
    return [SubmissionIds(s.submission_id, s.case_id, s.destination_id) for s in page], total


_FOR_SUBSCRIBER = select(
    *_NOTIFY_COLUMNS,
    _S.service_type,
    _S.announced_attachments,
    _S.encrypted_metadata,
    _S.encrypted_data,
    _S.content_deleted_at,
    _S.first_fetched_at,
).where(_S.submission_id == bindparam("submission_id"))
_REJECTED_BY_ZD = select(
    exists().where(
        EVENTS.c.submission_id == bindparam("submission_id"),
        EVENTS.c.event_uri == Event.REJECT_SUBMISSION.value,
        EVENTS.c.issuer == bindparam("issuer"),
    )
)
_FIRST_FETCH = (
    update(SUBMISSIONS)
    .where(_S.submission_id == bindparam("match_submission_id"), _S.first_fetched_at.is_(None))
    .values(
        first_fetched_at=bindparam("now", type_=UtcDateTime()),
        updated_at=bindparam("now", type_=UtcDateTime()),
    )
)


def _for_subscriber(principal: Principal, submission_id: str, row: Row[Any] | None) -> Row[Any]:
    """``row`` if it is a submitted submission of a destination the subscriber is linked to
    (else 404)."""
    if (
        row is None
        or row.destination_id not in principal.linked_destination_ids
        or row.status == _INCOMPLETE
    ):
        raise _not_found(submission_id)
    return row


async def _require_fetchable(
    db: AsyncSession | AsyncConnection,
    zd: ZdState,
    submission_id: str,
    status: str,
    *,
    content_present: bool,
) -> None:
    if not content_present or status not in FETCHABLE_STATUSES:
        raise ApiError(
            ApiProblems.SUBMISSION_STATE_INVALID,
            f"submission {submission_id} can no longer be fetched: its content was deleted",
            submissionStatus=status,
        )
    if status == SubmissionStatus.REJECTED.value:
        by_zd = await db.scalar(
            _REJECTED_BY_ZD, {"submission_id": submission_id, "issuer": zd.config.base_url}
        )
        if by_zd:
            raise ApiError(
                ApiProblems.SUBMISSION_STATE_INVALID,
                f"submission {submission_id} was rejected by the Zustelldienst "
                "(not picked up in time) and can no longer be fetched",
                submissionStatus=status,
            )


@dataclass(frozen=True)
class FetchedSubmission:
    """What ``GET /v1/submissions/{id}`` returns."""

    submission_id: str
    case_id: str
    destination_id: str
    service_type: dict[str, Any]
    attachments: list[str]
    encrypted_metadata: str
    encrypted_data: str | None


async def fetch_submission(
    session: AsyncSession, zd: ZdState, principal: Principal, submission_id: str
) -> FetchedSubmission:
    """``GET /v1/submissions/{id}``: the submission and its attachment ids; the first fetch is
    the pickup (``first_fetched_at``) and counts as notification."""
    row = _for_subscriber(
        principal,
        submission_id,
        (await session.execute(_FOR_SUBSCRIBER, {"submission_id": submission_id})).first(),
    )
    await _require_fetchable(
        session,
        zd,
        submission_id,
        row.status,
        content_present=row.content_deleted_at is None and row.encrypted_metadata is not None,
    )
    if row.first_fetched_at is None:
        await session.execute(
            _FIRST_FETCH, {"match_submission_id": submission_id, "now": zd.clock.now()}
        )
    await _notify_polling(session, zd, row)
    await session.commit()
    return FetchedSubmission(
        submission_id=row.submission_id,
        case_id=row.case_id,
        destination_id=row.destination_id,
        service_type=row.service_type,
        attachments=list(row.announced_attachments),
        encrypted_metadata=row.encrypted_metadata,
        encrypted_data=row.encrypted_data,
    )


@dataclass(frozen=True)
class AttachmentContent:
    blob_key: str
    size: int


#: The submission (checks) and the attachment (where it lives) in one read.
_ATTACHMENT_FOR_SUBSCRIBER = (
    select(
        _S.destination_id,
        _S.status,
        and_(_S.content_deleted_at.is_(None), _S.encrypted_metadata.is_not(None)).label(
            "content_present"
        ),
        ATTACHMENTS.c.blob_key,
        ATTACHMENTS.c.size,
    )
    .select_from(
        SUBMISSIONS.outerjoin(
            ATTACHMENTS,
            and_(
                ATTACHMENTS.c.submission_id == _S.submission_id,
                ATTACHMENTS.c.attachment_id == bindparam("attachment_id"),
            ),
        )
    )
    .where(_S.submission_id == bindparam("submission_id"))
)


async def open_attachment(
    zd: ZdState,
    principal: Principal,
    submission_id: str,
    attachment_id: str,
) -> AttachmentContent:
    """Where the ciphertext of an attachment lives (checked: linked, fetchable, uploaded).

    Only reads: a read-only connection (no write lock on SQLite), one statement."""
    async with zd.database.read_connection() as connection:
        row = _for_subscriber(
            principal,
            submission_id,
            (
                await connection.execute(
                    _ATTACHMENT_FOR_SUBSCRIBER,
                    {"submission_id": submission_id, "attachment_id": attachment_id},
                )
            ).first(),
        )
        await _require_fetchable(
            connection, zd, submission_id, row.status, content_present=bool(row.content_present)
        )
    if row.blob_key is None:
        raise ApiError(
            ApiProblems.ATTACHMENT_NOT_FOUND,
            f"submission {submission_id} has no attachment {attachment_id}",
        )
    return AttachmentContent(row.blob_key, row.size)
