"""Append to and read from the event log.

``append_event`` writes in the caller's transaction; ``commit`` then commits and wakes the
listeners of every organization that got events. On PostgreSQL an advisory lock per
organization makes that org's event ids commit in increasing order, so a reader that has
seen id N can never later miss an id below N (ids are taken at insert, commits can land in
any order otherwise).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.realtime.models import EventLogEntry
from loquent.realtime.notifier import JOBS_TOPIC, Notifier, org_topic

_PENDING_TOPICS = "loquent.pending_topics"
_ADVISORY_NAMESPACE = 0x4C51  # "LQ": keeps our advisory keys apart from anyone else's


async def append_event(
    session: AsyncSession, org_id: int, event_type: str, payload: dict[str, Any]
) -> None:
    if session.bind is not None and session.bind.dialect.name == "postgresql":
        await session.execute(
            text("SELECT pg_advisory_xact_lock(:ns, :org)"),
            {"ns": _ADVISORY_NAMESPACE, "org": org_id},
        )
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


async def read_after(
    session: AsyncSession, org_id: int, after_id: int, limit: int
) -> list[EventLogEntry]:
    result = await session.execute(
        select(EventLogEntry)
        .where(EventLogEntry.organization_id == org_id, EventLogEntry.id > after_id)
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
    result = await session.execute(
        select(func.max(EventLogEntry.id)).where(EventLogEntry.organization_id == org_id)
    )
    return int(result.scalar() or 0)


async def prune(session: AsyncSession, older_than: datetime) -> int:
    """Drop old events, always keeping the newest row so ids never restart below it."""
    newest = (await session.execute(select(func.max(EventLogEntry.id)))).scalar()
    if newest is None:
        return 0
    result = await session.execute(
        delete(EventLogEntry).where(
            EventLogEntry.created_at < older_than, EventLogEntry.id < newest
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)
