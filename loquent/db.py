"""Engine, sessions and the declarative base.

SQLite (the embedded default) runs in WAL mode with a busy timeout, and every write
transaction starts with ``BEGIN IMMEDIATE`` so that read-then-write flows (capture, claim)
take the write lock up front instead of failing with "database is locked" on upgrade.
Read-only work goes through a second engine whose transactions stay deferred, so readers
never queue behind writers.

This module is also the one place that decides what a storage error means: an outage
("retry later", HTTP 503), a conflict worth retrying in-process (serialization failure,
deadlock), or neither (a bug, or bad data that validation should have refused).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

import stamina
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.types import TypeDecorator

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive strings)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class StorageUnavailable(Exception):
    """The database could not be reached or a lock timed out: retry later (HTTP 503)."""


def dialect_insert(session: AsyncSession) -> Any:
    """``insert`` of the session's dialect, the one that has ``on_conflict_do_nothing``:
    the project's get-or-create is ``INSERT … ON CONFLICT DO NOTHING`` on both backends."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert
    return sqlite.insert


def is_unique_violation(exc: IntegrityError) -> bool:
    orig = getattr(exc, "orig", None)
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate == "23505":
        return True
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return bool(code == sqlite3.SQLITE_CONSTRAINT_UNIQUE)
    return "UNIQUE constraint failed" in str(orig) or "duplicate key" in str(orig)


# PostgreSQL SQLSTATEs that mean "the server cannot serve this now", not "this input is bad".
# Classes: 08 connection exception, 53 insufficient resources (disk full, out of memory, too
# many connections), 58 system error (I/O). Single codes: 57P01/57P02 administrator or crash
# shutdown, 57P03 cannot connect now (starting up / shutting down), 57P04 database dropped,
# 57014 statement timeout, 55P03 lock not available, and 40001/40P01 once their in-process
# retries are spent.
_OUTAGE_SQLSTATE_CLASSES = frozenset({"08", "53", "58"})
_OUTAGE_SQLSTATES = frozenset(
    {"57P01", "57P02", "57P03", "57P04", "57014", "55P03", "40001", "40P01"}
)
_CONFLICT_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock
# SQLite primary result codes of the same kind: busy/locked, I/O, disk full, cannot open.
_SQLITE_OUTAGE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_PROTOCOL,
        sqlite3.SQLITE_NOMEM,
    }
)


def _causes(exc: BaseException) -> list[BaseException]:
    """The exception, the driver error SQLAlchemy wraps, and their causes (bounded)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 6 and current not in seen:
        seen.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    return seen


def sqlstate_of(exc: BaseException) -> str | None:
    for item in _causes(exc):
        code = getattr(item, "sqlstate", None) or getattr(item, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def _sqlite_code(exc: BaseException) -> int | None:
    for item in _causes(exc):
        code = getattr(item, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF  # extended codes carry the primary code in the low byte
    return None


def is_storage_outage(exc: BaseException) -> bool:
    """Errors that mean "try again later" rather than "this input is bad"."""
    if isinstance(exc, IntegrityError):
        return False
    if isinstance(exc, (StorageUnavailable, sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return True  # our own deadline, pool checkout timeout, a dropped pooled connection
    if isinstance(exc, (OSError, TimeoutError)):
        return True  # ConnectionError is an OSError: refused, reset, unreachable
    sqlstate = sqlstate_of(exc)
    if sqlstate is not None:
        return sqlstate in _OUTAGE_SQLSTATES or sqlstate[:2] in _OUTAGE_SQLSTATE_CLASSES
    code = _sqlite_code(exc)
    if code is not None:
        return code in _SQLITE_OUTAGE_CODES
    if isinstance(exc, DBAPIError):
        # No code at all: a driver-level failure to talk to the server (asyncpg's
        # InterfaceError "connection is closed", a connect that failed before any SQLSTATE).
        return bool(exc.connection_invalidated) or isinstance(exc, sa_exc.InterfaceError)
    return any(isinstance(item, (OSError, TimeoutError)) for item in _causes(exc)[1:])


def is_retryable_conflict(exc: BaseException) -> bool:
    """Serialization failures and deadlocks: the same transaction may well succeed now."""
    return isinstance(exc, DBAPIError) and sqlstate_of(exc) in _CONFLICT_SQLSTATES


T = TypeVar("T")


async def retry_conflicts(work: Callable[[], Awaitable[T]]) -> T:
    """Run one transaction, retrying serialization failures/deadlocks briefly (jittered)."""
    async for attempt in stamina.retry_context(
        on=is_retryable_conflict, attempts=3, timeout=2.0, wait_initial=0.05, wait_max=0.5
    ):
        with attempt:
            return await work()
    raise AssertionError("unreachable")  # pragma: no cover - stamina re-raises the last error


# When the current task must have its write lock by (time.monotonic() seconds); set by
# Database.session() and read by the BEGIN hook, which shortens SQLite's busy timeout to it.
_write_deadline: ContextVar[float | None] = ContextVar("loquent_write_deadline", default=None)

# A write transaction waits at most this long in total for the in-process writer queue and
# SQLite's file lock, so a webhook gets its 503 well inside Twilio's 5 s.
DEFAULT_WRITE_WAIT_MS = 2_500
# Once a write found the database busy, writers in the next second only probe briefly: while
# another process holds the file, every request answers 503 at once instead of each using up
# the whole budget; when the file is free again the probe succeeds and nothing is refused.
BUSY_PROBE_SECONDS = 0.25
BUSY_MEMORY_SECONDS = 1.0


def _sqlite_engine(url: str, *, immediate: bool, busy_timeout_ms: int) -> AsyncEngine:
    engine = create_async_engine(url, connect_args={"timeout": busy_timeout_ms / 1000})

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so BEGIN is ours to emit.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        deadline = _write_deadline.get()
        if immediate and deadline is not None:
            # What is left of this request's budget, not the full busy timeout: one writer
            # held outside the process must not make every queued request wait 10 s each.
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                raise StorageUnavailable("timed out waiting for the database write lock")
            conn.exec_driver_sql(f"PRAGMA busy_timeout={min(remaining_ms, busy_timeout_ms)}")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


class Database:
    """Owns the engines; hand out sessions with ``db.session()`` (writes) or ``db.reader()``."""

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 10_000,
        pool_size: int = 10,
        write_wait_ms: int = DEFAULT_WRITE_WAIT_MS,
    ) -> None:
        self.url = url
        self.write_wait_seconds = min(write_wait_ms, busy_timeout_ms) / 1000
        self.is_sqlite = url.startswith("sqlite")
        if self.is_sqlite:
            self.engine = _sqlite_engine(url, immediate=True, busy_timeout_ms=busy_timeout_ms)
            self.read_engine = _sqlite_engine(url, immediate=False, busy_timeout_ms=busy_timeout_ms)
        else:
            self.engine = create_async_engine(
                url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
                pool_timeout=5,
            )
            self.read_engine = self.engine
        self._write_lock = asyncio.Lock() if self.is_sqlite else None
        self._busy_until = 0.0  # time.monotonic() until which the file is presumed busy
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._readers = async_sessionmaker(self.read_engine, expire_on_commit=False)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for a write transaction.

        On SQLite, writers in this process queue on an asyncio lock instead of all
        contending for the database lock: SQLite's busy handler sleeps and polls, which
        under a burst of webhooks turns into multi-second waits. The wait for the queue and
        for the file lock together is bounded by ``write_wait_seconds``; past it the
        session raises ``StorageUnavailable`` (503) instead of queueing behind a writer
        that holds the file from outside the process.
        """
        if self._write_lock is None:
            async with self._sessions() as session:
                yield session
            return
        now = time.monotonic()
        budget = self.write_wait_seconds
        if now < self._busy_until:
            budget = min(budget, BUSY_PROBE_SECONDS)
        try:
            async with asyncio.timeout(budget):
                await self._write_lock.acquire()
        except TimeoutError:
            self._busy_until = time.monotonic() + BUSY_MEMORY_SECONDS
            raise StorageUnavailable("timed out waiting for the database write lock") from None
        token = _write_deadline.set(now + budget)
        try:
            async with self._sessions() as session:
                yield session
        except Exception as exc:
            if is_storage_outage(exc):
                self._busy_until = time.monotonic() + BUSY_MEMORY_SECONDS
            raise
        finally:
            _write_deadline.reset(token)
            self._write_lock.release()

    @asynccontextmanager
    async def reader(self) -> AsyncIterator[AsyncSession]:
        async with self._readers() as session:
            yield session

    async def dispose(self) -> None:
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()
