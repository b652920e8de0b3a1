"""``/readyz``: can this process do its work right now?

Checked on each call, cheaply and with short timeouts so a probe never hangs:

- the database answers a query; for SQLite also that a write could start now — a
  ``BEGIN IMMEDIATE`` with a small busy timeout, rolled back at once — because a reader
  succeeds while another process holds the write lock, and every webhook would then wait
  for the busy timeout and answer 503;
- Redis answers a PING, when configured. Redis only carries wake-ups (streams and workers
  poll the database too), so by default Redis down is reported as ``degraded`` with 200:
  every instance shares the one Redis, and a 503 would take the whole service out of the
  load balancer for the loss of a latency optimisation. ``LOQUENT_READYZ_REQUIRE_REDIS``
  makes it a 503 for deployments that prefer that.
"""

from __future__ import annotations

import asyncio
import sqlite3
from enum import StrEnum
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url

from loquent.context import AppContext

PROBE_TIMEOUT_SECONDS = 2.0
SQLITE_WRITE_PROBE_BUSY_SECONDS = 0.2


class Part(StrEnum):
    OK = "ok"
    DOWN = "down"
    LOCKED = "locked"  # SQLite: reachable, but another writer holds the file


def _sqlite_write_probe(path: str) -> Part:
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_WRITE_PROBE_BUSY_SECONDS, isolation_level=None)
    except sqlite3.Error:
        return Part.DOWN
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
        return Part.OK
    except sqlite3.OperationalError as exc:
        return Part.LOCKED if "locked" in str(exc) or "busy" in str(exc) else Part.DOWN
    finally:
        conn.close()


async def _database(ctx: AppContext) -> Part:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_SECONDS):
            async with ctx.db.reader() as session:
                await session.execute(text("SELECT 1"))
    except Exception:
        return Part.DOWN
    if ctx.db.is_sqlite:
        path = make_url(ctx.settings.database_url).database
        if path and path != ":memory:":
            return await asyncio.to_thread(_sqlite_write_probe, path)
    return Part.OK


async def readiness(ctx: AppContext) -> tuple[bool, dict[str, Any]]:
    database, redis = await asyncio.gather(_database(ctx), ctx.notifier.ping())
    parts: dict[str, Any] = {"database": str(database)}
    ready = database is Part.OK
    status = "ok" if ready else "unavailable"
    if redis is not None:
        parts["redis"] = str(Part.OK if redis else Part.DOWN)
        if not redis and ready:
            ready = not ctx.settings.readyz_require_redis
            status = "degraded" if ready else "unavailable"
    return ready, {"status": status, **parts}
