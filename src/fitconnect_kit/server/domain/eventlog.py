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
``cases.last_event_at`` (the 730-day retention counts from there; on PostgreSQL in the insert's
own statement). Log order is ``events.seq``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, and_, bindparam, exists, func, insert, select, update
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
from fitconnect_kit.server.storage.models import CASES, EVENTS, UtcDateTime

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


# Built once: a reused statement keeps its cache key, so executing it skips the key generation.
_INSERT = insert(EVENTS).returning(EVENTS.c.seq)
_INSERT_UNLESS_PRESENT = {
    # ``INSERT … ON CONFLICT (<column>) DO NOTHING RETURNING seq`` per dialect and column.
    (module.dialect.name, column): module.insert(EVENTS)
    .on_conflict_do_nothing(index_elements=[column])
    .returning(EVENTS.c.seq)
    for module in (postgresql, sqlite)
    for column in ("dedup_key", "jti")
}
_BUMP_CASE = (
    update(CASES)
    .where(
        CASES.c.case_id == bindparam("bump_case_id"),
        CASES.c.last_event_at < bindparam("bump_to", type_=UtcDateTime()),
    )
    .values(last_event_at=bindparam("bump_to", type_=UtcDateTime()))
)


_EVENT_COLUMNS = [column.name for column in EVENTS.c if column.name != "seq"]


def _insert_and_bump_on_postgres(conflict_column: str | None) -> Any:
    """PostgreSQL: the insert and the ``cases.last_event_at`` bump as one statement (two
    data-modifying CTEs); the bump only when a row was inserted. The values are bound as
    ``new_<column>`` (a column name would also be SET by the UPDATE)."""
    statement = postgresql.insert(EVENTS).values(
        {name: bindparam(f"new_{name}", type_=EVENTS.c[name].type) for name in _EVENT_COLUMNS}
    )
    if conflict_column is not None:
        statement = statement.on_conflict_do_nothing(index_elements=[conflict_column])
    inserted = statement.returning(EVENTS.c.seq).cte("inserted")
    bumped = _BUMP_CASE.where(exists(select(inserted.c.seq))).cte("bumped")
    return select(inserted.c.seq).add_cte(bumped)


_INSERT_AND_BUMP_ON_POSTGRES = {
    column: _insert_and_bump_on_postgres(column) for column in (None, "dedup_key", "jti")
}


async def _insert_event(
    session: AsyncSession,
    values: Mapping[str, Any],
    *,
    conflict_column: str | None,
    bump_case: bool = True,
) -> int | None:
    """Insert an event row (``ON CONFLICT (<conflict_column>) DO NOTHING`` if given) and bump
    its case's ``last_event_at`` to ``recorded_at``; the new ``seq``, or ``None`` on conflict
    (nothing bumped then)."""
    dialect = session.get_bind().dialect.name
    case_id, moment = values["case_id"], values["recorded_at"]
    if bump_case and dialect == "postgresql":
        parameters = {f"new_{name}": value for name, value in values.items()}
        parameters.update(bump_case_id=case_id, bump_to=moment)
        statement = _INSERT_AND_BUMP_ON_POSTGRES[conflict_column]
        seq = (await session.execute(statement, parameters)).scalar_one_or_none()
        return None if seq is None else int(seq)
    if conflict_column is None:
        statement = _INSERT
    else:
        try:
            statement = _INSERT_UNLESS_PRESENT[(dialect, conflict_column)]
        except KeyError:  # pragma: no cover - Database refuses other dialects
            raise RuntimeError(f"unsupported database dialect {dialect!r}") from None
    seq = (await session.execute(statement, values)).scalar_one_or_none()
    if seq is None:
        return None
    if bump_case:
        await session.execute(_BUMP_CASE, {"bump_case_id": case_id, "bump_to": moment})
    return int(seq)


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
    recorded_at: datetime | None = None,
    bump_case: bool = True,
) -> EventRecord | None:
    """Sign and append a ZD-issued event; ``None`` when ``dedup_key`` is already in the log.

    Claims: ``iss`` = ``zd.config.base_url``, ``sub`` = ``submission:<id>`` (or
    ``reply:<reply_id>`` when ``submission_id`` is ``None``), ``txn`` = ``case:<case_id>``,
    ``iat`` from ``zd.clock``; ``payload`` may hold ``AuthenticationTags``/``Problem`` objects.
    Raises :class:`~fitconnect_kit.protocol.errors.SetError` for a payload the event forbids.
    The insert happens in the caller's transaction; commit it to make the event visible.

    ``recorded_at`` defaults to now. ``bump_case=False`` skips the ``cases.last_event_at``
    update: only for a case the caller inserted in this transaction with ``last_event_at`` =
    ``recorded_at`` (the update could not change anything).
    """
    if submission_id is not None:
        subject = submission_subject(submission_id)
    elif reply_id is not None:
        subject = reply_subject(reply_id)
    else:
        raise ValueError("an event needs a submission_id or a reply_id")
    now = recorded_at if recorded_at is not None else zd.clock.now()
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
    # Without a dedup_key the jti (a fresh UUID) cannot conflict: a plain insert is enough.
    seq = await _insert_event(
        session,
        values,
        conflict_column=None if dedup_key is None else "dedup_key",
        bump_case=bump_case,
    )
    if seq is None:
        return None
    return EventRecord(
        seq=seq,
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
    seq = await _insert_event(session, values, conflict_column="jti")
    if seq is None:
        raise DuplicateEventError(f"an event with jti {token.jti} is already in the log")
    return EventRecord(
        seq=seq,
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


def _log_statements(condition: Any) -> tuple[Any, Any]:
    """(page with the total as a window count, total alone) of the events matching."""
    page = (
        select(EVENTS.c.token, func.count().over().label("total"))
        .where(condition)
        .order_by(EVENTS.c.seq)
        .offset(bindparam("offset", type_=Integer))
        .limit(bindparam("limit", type_=Integer))
    )
    return page, select(func.count()).select_from(EVENTS).where(condition)


_CASE_LOG = _log_statements(EVENTS.c.case_id == bindparam("case_id"))
_SUBMISSION_LOG = _log_statements(EVENTS.c.submission_id == bindparam("submission_id"))
_CASE_SUBMISSION_LOG = _log_statements(
    and_(
        EVENTS.c.case_id == bindparam("case_id"),
        EVENTS.c.submission_id == bindparam("submission_id"),
    )
)
_ZD_EVENTS_OF = (
    select(EVENTS.c.token)
    .where(
        EVENTS.c.submission_id == bindparam("submission_id"),
        EVENTS.c.event_uri == bindparam("event_uri"),
        EVENTS.c.issuer == bindparam("issuer"),
    )
    .order_by(EVENTS.c.seq)
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
    if offset < 0 or limit < 0:
        raise ValueError("offset and limit must not be negative")
    if case_id is not None and submission_id is not None:
        page, count = _CASE_SUBMISSION_LOG
    elif case_id is not None:
        page, count = _CASE_LOG
    elif submission_id is not None:
        page, count = _SUBMISSION_LOG
    else:
        raise ValueError("read_event_log needs a case_id or a submission_id")
    params = {"case_id": case_id, "submission_id": submission_id}
    rows = (await session.execute(page, {**params, "offset": offset, "limit": limit})).all()
    if rows:
        return [row.token for row in rows], int(rows[0].total)
    total = await session.scalar(count, params)
    return [], int(total or 0)


async def zd_events_of(
    session: AsyncSession, zd: ZdState, submission_id: str, event: Event
) -> list[SecurityEventToken]:
    """The ZD's own SETs of one type for a submission, parsed (our signature is not re-checked)."""
    tokens = await session.scalars(
        _ZD_EVENTS_OF,
        {
            "submission_id": submission_id,
            "event_uri": Event(event).value,
            "issuer": zd.config.base_url,
        },
    )
    return [parse_set(token) for token in tokens]
