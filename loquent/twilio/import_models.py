"""Runs that copy messages from Twilio's ``Messages.json`` into the inbox.

A row is both the record the API shows (counts, error) and the job itself: its cursor
(``next_page_uri``) and counts are written in the same transaction as each page's messages,
so a run whose process died resumes at the first page it had not committed, with counts
that match what is in the database. ``lease_until``/``lease_token`` let exactly one worker
process run it at a time; an expired lease hands it to the next worker that looks.

Two kinds share the table and the code: a ``history`` import an owner asked for, and the
periodic ``catchup`` that recovers what arrived while the app was down. A partial unique
index allows one *running* row per organization and kind, across every process.
"""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from loquent.db import Base, UtcDateTime, utcnow


class ImportKind(enum.StrEnum):
    HISTORY = "history"
    CATCHUP = "catchup"


class ImportState(enum.StrEnum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


_RUNNING = text("state = 'running'")


class MessageImport(Base):
    __tablename__ = "message_import"
    __table_args__ = (
        Index(
            "uq_message_import_running",
            "organization_id",
            "kind",
            unique=True,
            sqlite_where=_RUNNING,
            postgresql_where=_RUNNING,
        ),
        Index("ix_message_import_org_created", "organization_id", "created_at"),
        Index("ix_message_import_state_lease", "state", "lease_until"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # ImportKind
    state: Mapped[str] = mapped_column(String(16))  # ImportState
    # Messages sent before this instant are not recorded (None: the whole history).
    since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The page to fetch next; None before the first page and after the last.
    next_page_uri: Mapped[str | None] = mapped_column(Text)
    pages: Mapped[int] = mapped_column(Integer, default=0)
    imported: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_token: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
