"""Submissions in a :class:`~tests.support.live.LiveServer`, made through the domain functions.

These mirror what the Submission API endpoints do (announce → upload → submit → fetch →
accept/reject) on the server's own loop and database, with real JWEs for the destination's key,
real blobs and real SETs — for tests of the event log, callbacks and deadlines that must not
depend on the HTTP layer. Reading helpers verify every SET against the keys published over HTTP.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import select

from fitconnect_kit.protocol.events import (
    AuthenticationTags,
    Event,
    NotifyType,
    SecurityEventToken,
    build_set_claims,
    parse_set,
    sign_set,
    submission_subject,
    verify_set,
    verify_set_with_jwks,
)
from fitconnect_kit.protocol.ids import new_id
from fitconnect_kit.protocol.jose import jwe
from fitconnect_kit.server.domain.eventlog import (
    append_posted_event,
    append_zd_event,
    read_event_log,
)
from fitconnect_kit.server.domain.outbox import enqueue_new_events, enqueue_new_submissions
from fitconnect_kit.server.storage.blobs import attachment_blob_key
from fitconnect_kit.server.storage.models import (
    Attachment,
    CallbackDelivery,
    Case,
    Submission,
)

if TYPE_CHECKING:
    from tests.support.live import LiveServer
    from tests.support.seed import SeededDestination

SERVICE_TYPE = {
    "name": "Testleistung",
    "identifier": "urn:de:fim:leika:leistung:99123456760610",
}


@dataclass(frozen=True)
class SeededSubmission:
    submission_id: str
    case_id: str
    destination_id: str
    attachment_ids: tuple[str, ...]
    tags: AuthenticationTags | None = field(default=None, repr=False)

    @property
    def blob_keys(self) -> list[str]:
        return [attachment_blob_key(self.submission_id, a) for a in self.attachment_ids]


async def _announce(
    live: LiveServer,
    destination: SeededDestination,
    *,
    attachments: int,
    sender_callback: tuple[str, str] | None,
    case_id: str | None,
) -> SeededSubmission:
    zd = live.zd
    now = zd.clock.now()
    submission_id = new_id()
    attachment_ids = tuple(new_id() for _ in range(attachments))
    async with zd.sessions() as session, session.begin():
        if case_id is None:
            case_id = new_id()
            session.add(
                Case(
                    case_id=case_id,
                    destination_id=destination.destination_id,
                    created_at=now,
                    last_event_at=now,
                )
            )
        session.add(
            Submission(
                submission_id=submission_id,
                case_id=case_id,
                destination_id=destination.destination_id,
                service_type=dict(SERVICE_TYPE),
                announced_attachments=list(attachment_ids),
                status="incomplete",
                sender_callback_url=sender_callback[0] if sender_callback else None,
                sender_callback_secret=sender_callback[1] if sender_callback else None,
                created_at=now,
                updated_at=now,
                reminders_sent=0,
            )
        )
        await session.flush()
        await append_zd_event(
            session,
            zd,
            case_id=case_id,
            submission_id=submission_id,
            event=Event.CREATE_SUBMISSION,
            dedup_key=f"create-submission:{submission_id}",
        )
    key = destination.keys.encryption_public
    for attachment_id in attachment_ids:
        part = jwe.encrypt(f"attachment {attachment_id}".encode(), key)
        blob_key = attachment_blob_key(submission_id, attachment_id)

        async def chunks(data: bytes = part.token.encode("ascii")) -> Any:
            yield data

        size = await zd.blobs.write(blob_key, chunks())
        async with zd.sessions() as session, session.begin():
            session.add(
                Attachment(
                    submission_id=submission_id,
                    attachment_id=attachment_id,
                    blob_key=blob_key,
                    size=size,
                    authentication_tag=part.authentication_tag,
                    uploaded_at=zd.clock.now(),
                )
            )
    return SeededSubmission(submission_id, case_id, destination.destination_id, attachment_ids)


async def _submit(
    live: LiveServer, destination: SeededDestination, seeded: SeededSubmission
) -> SeededSubmission:
    zd = live.zd
    key = destination.keys.encryption_public
    metadata = jwe.encrypt(b'{"contentStructure":{}}', key, cty="application/json")
    data = jwe.encrypt(b'{"antrag":true}', key, cty="application/json")
    async with zd.sessions() as session, session.begin():
        submission = await session.get(Submission, seeded.submission_id)
        assert submission is not None
        attachment_tags = {
            a.attachment_id: a.authentication_tag
            for a in await session.scalars(
                select(Attachment).where(Attachment.submission_id == seeded.submission_id)
            )
        }
        tags = AuthenticationTags(
            metadata=metadata.authentication_tag,
            data=data.authentication_tag,
            attachments=attachment_tags,
        )
        now = zd.clock.now()
        submission.encrypted_metadata = metadata.token
        submission.encrypted_data = data.token
        submission.status = "submitted"
        submission.submitted_at = now
        submission.updated_at = now
        await append_zd_event(
            session,
            zd,
            case_id=seeded.case_id,
            submission_id=seeded.submission_id,
            event=Event.SUBMIT_SUBMISSION,
            payload={"authenticationTags": tags},
            dedup_key=f"submit-submission:{seeded.submission_id}",
        )
        await enqueue_new_submissions(session, zd, submission)
    return SeededSubmission(
        seeded.submission_id, seeded.case_id, seeded.destination_id, seeded.attachment_ids, tags
    )


def create_submission(
    live: LiveServer,
    destination: SeededDestination,
    *,
    attachments: int = 1,
    submit: bool = True,
    sender_callback: tuple[str, str] | None = None,
    case_id: str | None = None,
) -> SeededSubmission:
    """Announce (create-submission), upload ``attachments`` and — if ``submit`` — submit
    (submit-submission with tags, NEW_SUBMISSIONS to the destination's callback)."""

    async def run() -> SeededSubmission:
        seeded = await _announce(
            live,
            destination,
            attachments=attachments,
            sender_callback=sender_callback,
            case_id=case_id,
        )
        if submit:
            seeded = await _submit(live, destination, seeded)
        return seeded

    return live.run(run())


def fetch_submission(live: LiveServer, submission_id: str) -> None:
    """First pickup by the subscriber: ``first_fetched_at`` + notify-submission (polling)."""

    async def run() -> None:
        zd = live.zd
        async with zd.sessions() as session, session.begin():
            submission = await session.get(Submission, submission_id)
            assert submission is not None
            if submission.first_fetched_at is None:
                submission.first_fetched_at = zd.clock.now()
            record = await append_zd_event(
                session,
                zd,
                case_id=submission.case_id,
                submission_id=submission_id,
                event=Event.NOTIFY_SUBMISSION,
                payload={"notifyType": NotifyType.POLLING.value},
                dedup_key=f"notify-submission:{submission_id}:polling",
            )
            if record is not None:
                await enqueue_new_events(session, zd, submission, to_sender=True)

    live.run(run())


def decide_submission(
    live: LiveServer,
    destination: SeededDestination,
    seeded: SeededSubmission,
    *,
    accept: bool = True,
) -> str:
    """The receiver posts accept (or reject) signed with the destination's signing key."""
    payload: dict[str, Any] = {"authenticationTags": seeded.tags}
    if not accept:
        payload["problems"] = [
            {
                "type": "https://schema.fitko.de/fit-connect/events/problems/technical-error",
                "title": "Technischer Fehler",
            }
        ]
    claims = build_set_claims(
        Event.ACCEPT_SUBMISSION if accept else Event.REJECT_SUBMISSION,
        issuer=destination.destination_id,
        subject=submission_subject(seeded.submission_id),
        case_id=seeded.case_id,
        payload=payload,
        clock=live.clock,
    )
    token = sign_set(claims, destination.signing_private_key, destination.signing_kid)

    async def run() -> None:
        zd = live.zd
        async with zd.sessions() as session, session.begin():
            submission = await session.get(Submission, seeded.submission_id)
            assert submission is not None
            await append_posted_event(
                session,
                zd,
                case_id=seeded.case_id,
                submission_id=seeded.submission_id,
                token=parse_set(token),
            )
            now = zd.clock.now()
            submission.status = "accepted" if accept else "rejected"
            submission.decided_at = now
            submission.updated_at = now
            await enqueue_new_events(session, zd, submission, to_sender=True)

    live.run(run())
    return token


# --- reading ------------------------------------------------------------------------------------


def zd_jwks(live: LiveServer) -> dict[str, Any]:
    response = httpx.get(live.url("/.well-known/jwks.json"), timeout=30)
    response.raise_for_status()
    jwks: dict[str, Any] = response.json()
    return jwks


def event_tokens(
    live: LiveServer, *, case_id: str | None = None, submission_id: str | None = None
) -> list[str]:
    async def run() -> tuple[list[str], int]:
        async with live.zd.sessions() as session:
            return await read_event_log(
                session, case_id=case_id, submission_id=submission_id, offset=0, limit=10_000
            )

    tokens, total = live.run(run())
    assert total == len(tokens)
    return tokens


def verified_log(
    live: LiveServer,
    case_id: str,
    destination: SeededDestination | None = None,
) -> list[SecurityEventToken]:
    """The case's event log, every SET verified: ZD SETs with the JWKS served over HTTP (and
    ``iss`` = base URL), receiver SETs with the destination's signing key."""
    jwks = zd_jwks(live)
    result = []
    for token in event_tokens(live, case_id=case_id):
        st = parse_set(token)
        if st.issued_by_zustelldienst:
            result.append(
                verify_set_with_jwks(
                    token, jwks, expected_case_id=case_id, expected_issuer=live.base_url
                )
            )
        else:
            assert destination is not None, "a receiver SET needs the destination's key"
            result.append(
                verify_set(
                    token,
                    destination.keys.signing_public,
                    expected_case_id=case_id,
                    expected_issuer=destination.destination_id,
                )
            )
    return result


def event_names(events: Sequence[SecurityEventToken]) -> list[str]:
    return [st.event.short_name for st in events]


def load_submission(live: LiveServer, submission_id: str) -> Submission | None:
    async def run() -> Submission | None:
        async with live.zd.sessions() as session:
            return await session.get(Submission, submission_id)

    return live.run(run())


def load_deliveries(live: LiveServer) -> list[CallbackDelivery]:
    async def run() -> list[CallbackDelivery]:
        async with live.zd.sessions() as session:
            rows = await session.scalars(select(CallbackDelivery).order_by(CallbackDelivery.id))
            return list(rows)

    return live.run(run())


def stored_blob_keys(live: LiveServer, submission_id: str) -> list[str]:
    """Blob keys of a submission's uploaded attachments, as recorded in ``attachments``."""

    async def run() -> list[str]:
        async with live.zd.sessions() as session:
            rows = await session.scalars(
                select(Attachment.blob_key)
                .where(Attachment.submission_id == submission_id)
                .order_by(Attachment.attachment_id)
            )
            return list(rows)

    return live.run(run())


def blob_exists(live: LiveServer, key: str) -> bool:
    return live.run(live.zd.blobs.exists(key))


def case_exists(live: LiveServer, case_id: str) -> bool:
    async def run() -> bool:
        async with live.zd.sessions() as session:
            return await session.get(Case, case_id) is not None

    return live.run(run())


def at(live: LiveServer) -> datetime:
    return live.clock.now()
