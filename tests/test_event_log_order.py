"""Event-log order: a reader that has delivered id N never later finds a committed id below
N, although writers of one organization commit concurrently and in any order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import select

from loquent.db import Database
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.realtime import log as event_log
from loquent.realtime.models import EventLogEntry
from tests.conftest import SECRET


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    database = Database(database_url, pool_size=20)
    try:
        yield database
    finally:
        await database.dispose()


async def _org(db: Database) -> int:
    async with db.session() as session:
        org = await orgs.create_organization(session, SecretBox([SECRET]), name="Order")
        await session.commit()
        return org.id


async def _committed_ids(db: Database, org_id: int) -> list[int]:
    async with db.reader() as session:
        rows = await session.execute(
            select(EventLogEntry.id)
            .where(EventLogEntry.organization_id == org_id)
            .order_by(EventLogEntry.id)
        )
        return list(rows.scalars())


async def test_polling_reader_never_skips_an_event_of_concurrent_writers(db: Database) -> None:
    org_id = await _org(db)
    rng = random.Random(7)
    # SQLite serializes writers (one at a time holds the lock); keep its run short.
    writers, per_writer = (12, 15) if db.dialect == "postgresql" else (4, 8)
    done = asyncio.Event()

    async def writer(w: int) -> None:
        for n in range(per_writer):
            async with db.session() as session:
                await asyncio.sleep(rng.uniform(0, 0.01))
                events = rng.choice((1, 1, 2))
                for k in range(events):
                    await event_log.append_event(session, org_id, "t", {"w": w, "n": n, "k": k})
                await asyncio.sleep(rng.uniform(0, 0.03))  # commit late, in any order
                if rng.random() < 0.1:
                    await session.rollback()  # a rolled-back id leaves a hole for good
                else:
                    await session.commit()

    delivered: list[int] = []

    async def reader() -> None:
        cursor = 0
        while True:
            finished = done.is_set()
            async with db.reader() as session:
                rows = await event_log.read_after(session, org_id, cursor, 7)
            for row in rows:
                delivered.append(row.id)
                cursor = row.id
            # Once writers are done, read until the newest committed id has been reached
            # (another transaction on the server may hold the horizon back for a moment).
            if finished and not rows and cursor >= max(await _committed_ids(db, org_id)):
                return
            await asyncio.sleep(0.002)

    polling = asyncio.create_task(reader())
    await asyncio.gather(*(writer(w) for w in range(writers)))
    done.set()
    await asyncio.wait_for(polling, 60)

    committed = await _committed_ids(db, org_id)
    assert len(committed) > writers * per_writer // 2
    assert delivered == sorted(set(delivered)), "delivered out of order or twice"
    assert delivered == committed, f"skipped: {sorted(set(committed) - set(delivered))}"


@pytest.mark.postgres
async def test_a_writer_never_waits_for_another_writers_commit(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite serializes writers by design")
    db = Database(database_url)
    try:
        org_id = await _org(db)
        async with db.reader() as session:
            start = await event_log.latest_id(session, org_id)
        async with db.session() as slow:
            await event_log.append_event(slow, org_id, "t", {"who": "slow"})

            async def fast() -> None:
                async with db.session() as session:
                    await event_log.append_event(session, org_id, "t", {"who": "fast"})
                    await session.commit()

            # The slow writer's transaction is still open: the fast one commits anyway.
            await asyncio.wait_for(fast(), 5)
            async with db.reader() as session:
                # Committed, but a reader must not pass it while an older writer may still
                # commit an id below it.
                assert len(await _committed_ids(db, org_id)) == 1
                assert await event_log.read_after(session, org_id, start, 100) == []
                assert await event_log.latest_id(session, org_id) == start
            await slow.commit()
        rows: list[EventLogEntry] = []
        for _ in range(200):  # other transactions on the server may hold the horizon back
            async with db.reader() as session:
                rows = await event_log.read_after(session, org_id, start, 100)
            if len(rows) == 2:
                break
            await asyncio.sleep(0.05)
        assert [r.payload["who"] for r in rows] == ["slow", "fast"]
        assert rows[0].id < rows[1].id
    finally:
        await db.dispose()
