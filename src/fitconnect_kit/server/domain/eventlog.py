"""The event log of the Zustelldienst: SETs per case, in log order (reference §8).

* :func:`append_zd_event` — build, sign (ZD SET key) and store an event the ZD issues itself
  (``create``/``submit``/``notify``/``reject`` (day 14)/``delete-submission``). With a
  ``dedup_key`` the event exists at most once, across transactions and nodes: the insert is
  ``INSERT … ON CONFLICT (dedup_key) DO NOTHING`` and relies on the UNIQUE constraint, so two
  nodes racing for the same key end with one row (the loser gets ``None`` and must skip the
  side effects that belong to the event).
* :func:`append_posted_event` — store a receiver's SET (already verified by the caller) as is.
* :func:`read_event_log` — the tokens of a case or a submission in log order, paged.

Every append runs in the caller's session and transaction (nothing is committed here) and bumps
``cases.last_event_at`` (the 730-day retention counts from there). Log order is ``events.seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from fitconnect_kit.protocol.errors import FitConnectError
from fitconnect_kit.protocol.events import (
    Event,
    SecurityEventToken,
    build_set_claims,
    parse_set,
    reply_subject,
    submission_subject,
)
from fitconnect_kit.server.storage.models import Case
from fitconnect_kit.server.storage.models import Event as EventRow

if TYPE_CHECKING:
    from fitconnect_kit.server.state import ZdState


class DuplicateEventError(FitConnectError):
    """A posted SET's ``jti`` is already in the log (the same token was posted twice)."""


@dataclass(frozen=True)
class EventRecord:
    """One stored event (a row of ``events``)."""

    seq: int
    case_id: str
    submission_id: str | None
    reply_id: str | None
    jti: str
    event: Event
    issuer: str
    token: str = field(repr=False)
    issued_at: datetime
    recorded_at: datetime
    dedup_key: str | None


def _insert_statement(
    session: AsyncSession, values: Mapping[str, Any], conflict_column: str
) -> Any:
    """``INSERT … ON CONFLICT (<column>) DO NOTHING RETURNING seq`` for the session's dialect."""
    dialect = session.get_bind().dialect.name
    module: Any = postgresql if dialect == "postgresql" else sqlite
    if dialect not in ("postgresql", "sqlite"):  # pragma: no cover - Database refuses others
        raise RuntimeError(f"unsupported database dialect {dialect!r}")
    statement = module.insert(EventRow).values(**values)
    return statement.on_conflict_do_nothing(index_elements=[conflict_column]).returning(
        EventRow.seq
    )


async def _bump_case(session: AsyncSession, case_id: str, moment: datetime) -> None:
    await session.execute(
        update(Case)
        .where(Case.case_id == case_id, Case.last_event_at < moment)
        .values(last_event_at=moment)
    )


async def append_zd_event(
    session: AsyncSession,
    zd: ZdState,
    *,
    case_id: str,
    submission_id: str | None,
    event: Event,
    payload: Mapping[str, Any] | None = None,
    dedup_key: str | None = None,
    reply_id: str | None = None,
) -> EventRecord | None:
    """Sign and append a ZD-issued event; ``None`` when ``dedup_key`` is already in the log.

    Claims: ``iss`` = ``zd.config.base_url``, ``sub`` = ``submission:<id>`` (or
    ``reply:<reply_id>`` when ``submission_id`` is ``None``), ``txn`` = ``case:<case_id>``,
    ``iat`` from ``zd.clock``; ``payload`` may hold ``AuthenticationTags``/``Problem`` objects.
    Raises :class:`~fitconnect_kit.protocol.errors.SetError` for a payload the event forbids.
    The insert happens in the caller's transaction; commit it to make the event visible.
    """
    if submission_id is not None:
        subject = submission_subject(submission_id)
    elif reply_id is not None:
        subject = reply_subject(reply_id)
    else:
        raise ValueError("an event needs a submission_id or a reply_id")
    now = zd.clock.now()
    claims = build_set_claims(
        event,
        issuer=zd.config.base_url,
        subject=subject,
        case_id=case_id,
        payload=payload,
        clock=zd.clock,
    )
    # RSA-4096 signing takes ~1.5 ms of CPU; ``cryptography`` releases the GIL meanwhile, so
    # in a thread it runs on another core while the event loop serves other requests.
    token = await asyncio.to_thread(zd.keys.set_signing.sign_set, claims)
    issued_at = datetime.fromtimestamp(claims["iat"], UTC)
    values: dict[str, Any] = {
        "case_id": case_id,
        "submission_id": submission_id,
        "reply_id": reply_id if submission_id is None else None,
        "jti": claims["jti"],
        "event_uri": Event(event).value,
        "issuer": zd.config.base_url,
        "token": token,
        "issued_at": issued_at,
        "recorded_at": now,
        "dedup_key": dedup_key,
    }
    if dedup_key is None:
        # jti is a fresh UUID: a conflict is impossible, a plain insert is enough.
        statement: Any = insert(EventRow).values(**values).returning(EventRow.seq)
    else:
        statement = _insert_statement(session, values, "dedup_key")
    seq = (await session.execute(statement)).scalar_one_or_none()
    if seq is None:
        return None
    await _bump_case(session, case_id, now)
    return EventRecord(
        seq=int(seq),
        case_id=case_id,
        submission_id=values["submission_id"],
        reply_id=values["reply_id"],
        jti=claims["jti"],
        event=Event(event),
        issuer=zd.config.base_url,
        token=token,
        issued_at=issued_at,
        recorded_at=now,
        dedup_key=dedup_key,
    )


async def append_posted_event(
    session: AsyncSession,
    zd: ZdState,
    *,
    case_id: str,
    submission_id: str,
    token: SecurityEventToken,
) -> EventRecord:
    """Store a receiver's SET exactly as posted (the caller verified signature and state).

    Raises :class:`DuplicateEventError` when a SET with the same ``jti`` is already stored
    (the transaction stays usable).
    """
    now = zd.clock.now()
    issued_at = datetime.fromtimestamp(token.issued_at, UTC)
    values: dict[str, Any] = {
        "case_id": case_id,
        "submission_id": submission_id,
        "reply_id": token.reply_id,
        "jti": token.jti,
        "event_uri": token.event.value,
        "issuer": token.issuer,
        "token": token.token,
        "issued_at": issued_at,
        "recorded_at": now,
        "dedup_key": None,
    }
    seq = (await session.execute(_insert_statement(session, values, "jti"))).scalar_one_or_none()
    if seq is None:
        raise DuplicateEventError(f"an event with jti {token.jti} is already in the log")
    await _bump_case(session, case_id, now)
    return EventRecord(
        seq=int(seq),
        case_id=case_id,
        submission_id=submission_id,
        reply_id=token.reply_id,
        jti=token.jti,
        event=token.event,
        issuer=token.issuer,
        token=token.token,
        issued_at=issued_at,
        recorded_at=now,
        dedup_key=None,
    )


async def read_event_log(
    session: AsyncSession | AsyncConnection,
    *,
    case_id: str | None = None,
    submission_id: str | None = None,
    offset: int,
    limit: int,
) -> tuple[list[str], int]:
    """SET tokens of a case and/or a submission in log order (``offset``/``limit``) + total.

    One statement (the total as a window count next to each token); only a page past the end
    needs a second one for the total.
    """
    if case_id is None and submission_id is None:
        raise ValueError("read_event_log needs a case_id or a submission_id")
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    conditions = []
    if case_id is not None:
        conditions.append(EventRow.case_id == case_id)
    if submission_id is not None:
        conditions.append(EventRow.submission_id == submission_id)
    rows = (
        await session.execute(
            select(EventRow.token, func.count().over().label("total"))
            .where(*conditions)
            .order_by(EventRow.seq)
            .offset(offset)
            .limit(limit)
        )
    ).all()
    if rows:
        return [row.token for row in rows], int(rows[0].total)
    total = await session.scalar(select(func.count()).select_from(EventRow).where(*conditions))
    return [], int(total or 0)


async def zd_events_of(
    session: AsyncSession, zd: ZdState, submission_id: str, event: Event
) -> list[SecurityEventToken]:
    """The ZD's own SETs of one type for a submission, parsed (our signature is not re-checked)."""
    tokens = await session.scalars(
        select(EventRow.token)
        .where(
            EventRow.submission_id == submission_id,
            EventRow.event_uri == Event(event).value,
            EventRow.issuer == zd.config.base_url,
        )
        .order_by(EventRow.seq)
    )
    return [parse_set(token) for token in tokens]
