"""The event log: every published event is a row written in the same transaction as the
change it describes, so "publish after commit" holds by construction and replay after a
reconnect is a range read."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from loquent.db import Base, UtcDateTime, utcnow

# BIGINT on PostgreSQL; SQLite only gives AUTOINCREMENT semantics to INTEGER primary keys.
EventId = BigInteger().with_variant(Integer(), "sqlite")


class EventLogEntry(Base):
    __tablename__ = "event_log"
    __table_args__ = (
        Index("ix_event_log_org_id", "organization_id", "id"),
        {"sqlite_autoincrement": True},  # ids never reused, even after pruning
    )

    id: Mapped[int] = mapped_column(EventId, primary_key=True, autoincrement=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)


class EventLogWatermark(Base):
    """One row: the newest id pruning has removed.

    Ids are not dense (PostgreSQL derives them from transaction ids, rollbacks leave holes),
    so "older than the oldest retained row" cannot tell a pruned gap from ids that never
    existed; a client resuming below this mark may have lost events and must resync.
    """

    __tablename__ = "event_log_watermark"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pruned_through: Mapped[int] = mapped_column(BigInteger, default=0)
