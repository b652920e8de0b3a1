"""Append to and read from the event log.

``append_event`` writes in the caller's transaction; ``commit`` then commits and wakes the
listeners of every organization that got events.

Readers must never skip an event: a stream that has delivered id N must not later find a
committed id below N. Ids are taken at insert but transactions commit in any order, so on
PostgreSQL an event's id is derived from its writer's transaction id::

    id = (pg_current_xact_id() << 16) + n      -- n counts the transaction's own events

and a reader only returns ids below ``pg_snapshot_xmin(pg_current_snapshot()) << 16``.
Every transaction older than the snapshot's xmin has finished, and every transaction still
running or yet to start has an xid at or above it, so every id below that horizon is final:
committed and visible, or rolled back for good. Writers take no lock and wait for nobody;
the cost is that an event becomes readable only once every write transaction that started
before its own has finished (docs/realtime-and-bench.md). On SQLite writers are serialized
by the database lock, so ids already commit in increasing order and the plain
AUTOINCREMENT id is used.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    bindparam,
    case,
    delete,
    func,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.db import UtcDateTime, utcnow
from loquent.realtime.models import EventLogEntry, EventLogWatermark
from loquent.realtime.notifier import JOBS_TOPIC, Notifier, org_topic

_PENDING_TOPICS = "loquent.pending_topics"

# Event ids per transaction on PostgreSQL; far above what one transaction ever appends.
XACT_SLOTS = 1 << 16

# The next id of this transaction's range; NULL (refused by the primary key) if the range
# is exhausted, so a runaway transaction fails instead of borrowing another one's ids.
# Only the constant XACT_SLOTS is formatted into the statement.
_PG_APPEND = text(
    f"""
    INSERT INTO event_log (id, organization_id, type, payload, created_at)
    SELECT CASE WHEN mine.next < mine.base + {XACT_SLOTS} THEN mine.next END,
           :org_id, :type, :payload, :created_at
    FROM (
        SELECT base, COALESCE(
            (SELECT max(id) + 1 FROM event_log WHERE id >= base AND id < base + {XACT_SLOTS}),
            base) AS next
        FROM (SELECT pg_current_xact_id()::text::bigint * {XACT_SLOTS} AS base) AS xact
    ) AS mine
    """  # noqa: S608
).bindparams(bindparam("payload", type_=JSON()), bindparam("created_at", type_=UtcDateTime()))

# Ids below this are final for the statement's snapshot (see the module docstring).
_PG_HORIZON: ColumnElement[int] = literal_column(
    f"(pg_snapshot_xmin(pg_current_snapshot())::text::bigint * {XACT_SLOTS})", BigInteger()
)


def _is_postgresql(session: AsyncSession) -> bool:
    return session.bind is not None and session.bind.dialect.name == "postgresql"


async def append_event(
    session: AsyncSession, org_id: int, event_type: str, payload: dict[str, Any]
) -> None:
    if _is_postgresql(session):
        await session.execute(
            _PG_APPEND,
            {"org_id": org_id, "type": event_type, "payload": payload, "created_at": utcnow()},
        )
    else:
        session.add(EventLogEntry(organization_id=org_id, type=event_type, payload=payload))
    wake_after_commit(session, org_topic(org_id))


def wake_after_commit(session: AsyncSession, topic: str) -> None:
    session.info.setdefault(_PENDING_TOPICS, set()).add(topic)


def wake_jobs_after_commit(session: AsyncSession) -> None:
    wake_after_commit(session, JOBS_TOPIC)


async def commit(session: AsyncSession, notifier: Notifier | None) -> None:
    """Commit, then wake whoever listens for what this transaction wrote."""
    topics: set[str] = session.info.pop(_PENDING_TOPICS, set())
    await session.commit()
    if notifier is not None:
        for topic in topics:
            await notifier.notify(topic)


def discard_pending_wakeups(session: AsyncSession) -> None:
    session.info.pop(_PENDING_TOPICS, None)


def _final(session: AsyncSession) -> list[ColumnElement[bool]]:
    """Conditions keeping a read to ids no running transaction can still add below."""
    return [EventLogEntry.id < _PG_HORIZON] if _is_postgresql(session) else []


@dataclass(frozen=True)
class Batch:
    rows: list[EventLogEntry]  # final, in id order
    held_back: bool  # newer committed rows wait for an older transaction to finish


async def read_batch(session: AsyncSession, org_id: int, after_id: int, limit: int) -> Batch:
    """The organization's next final events after ``after_id``, in one query.

    Also says whether committed rows were held back below the horizon: nobody will notify
    when the older transaction holding them finishes (it may not write events at all), so
    the reader should look again soon rather than wait for the next wake-up.
    """
    query = (
        select(EventLogEntry)
        .where(EventLogEntry.organization_id == org_id, EventLogEntry.id > after_id)
        .order_by(EventLogEntry.id)
        .limit(limit)
    )
    if not _is_postgresql(session):
        return Batch(list((await session.execute(query)).scalars()), False)
    result = await session.execute(query.add_columns(_PG_HORIZON.label("horizon")))
    rows: list[EventLogEntry] = []
    for row, horizon in result:
        if row.id >= horizon:
            return Batch(rows, True)
        rows.append(row)
    return Batch(rows, False)


async def read_after(
    session: AsyncSession, org_id: int, after_id: int, limit: int
) -> list[EventLogEntry]:
    """The organization's next events after ``after_id``, only ids that are final."""
    return (await read_batch(session, org_id, after_id, limit)).rows


async def read_range(
    session: AsyncSession, org_id: int, after_id: int, up_to: int, limit: int
) -> list[EventLogEntry]:
    """Events in (after_id, up_to]; ``up_to`` must be an id some reader already found final."""
    result = await session.execute(
        select(EventLogEntry)
        .where(
            EventLogEntry.organization_id == org_id,
            EventLogEntry.id > after_id,
            EventLogEntry.id <= up_to,
        )
        .order_by(EventLogEntry.id)
        .limit(limit)
    )
    return list(result.scalars())


async def bounds(session: AsyncSession) -> tuple[int | None, int | None]:
    """(oldest retained id, newest id) over the whole log."""
    row = (
        await session.execute(select(func.min(EventLogEntry.id), func.max(EventLogEntry.id)))
    ).one()
    return row[0], row[1]


async def latest_id(session: AsyncSession, org_id: int) -> int:
    """The newest final id of the organization: a safe place for a new stream to start."""
    result = await session.execute(
        select(func.max(EventLogEntry.id))
        .where(EventLogEntry.organization_id == org_id)
        .where(*_final(session))
    )
    return int(result.scalar() or 0)


async def prune(session: AsyncSession, older_than: datetime) -> int:
    """Drop old events, always keeping the newest row so ids never restart below it, and
    raise the watermark past what was dropped (see ``pruned_through``)."""
    newest = (await session.execute(select(func.max(EventLogEntry.id)))).scalar()
    if newest is None:
        return 0
    doomed = (EventLogEntry.created_at < older_than, EventLogEntry.id < newest)
    through = (await session.execute(select(func.max(EventLogEntry.id)).where(*doomed))).scalar()
    if through is None:
        return 0
    result = await session.execute(delete(EventLogEntry).where(*doomed))
    # In SQL, so two pruners at once keep the larger mark.
    column = EventLogWatermark.pruned_through
    raised = await session.execute(
        update(EventLogWatermark)
        .where(EventLogWatermark.id == 1)
        .values(pruned_through=case((column < through, through), else_=column))
    )
    if not getattr(raised, "rowcount", 0):
        session.add(EventLogWatermark(id=1, pruned_through=through))
    return int(getattr(result, "rowcount", 0) or 0)


async def pruned_through(session: AsyncSession) -> int:
    """The newest id pruning has removed: a client resuming below it may have lost events."""
    result = await session.execute(
        select(EventLogWatermark.pruned_through).where(EventLogWatermark.id == 1)
    )
    return int(result.scalar() or 0)
