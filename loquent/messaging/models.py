"""Messages. The enrichment job's state lives on the row itself (body_* columns), written in
the same transaction as the message, so no queued work can be lost to a crash.

``MessageSend`` is the bookkeeping of a reply sent from the inbox: the Idempotency-Key and
the answer a retry gets back, and, while Twilio has not answered yet, the in-flight marker
that lets an early status event find the row it belongs to (see ``messaging/send.py``)."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loquent.db import Base, UtcDateTime, utcnow


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageSource(enum.StrEnum):
    """Who put the row there (``message.source``; null for rows older than the column)."""

    LOQUENT = "loquent"  # sent from, or received live by, this inbox
    EXTERNAL = "external"  # captured from a status event for a message sent elsewhere
    IMPORT = "import"  # history import


class BodyState(enum.StrEnum):
    PENDING = "pending"  # to be fetched from Twilio (the job's state lives in body_*)
    READY = "ready"
    EMPTY = "empty"
    FAILED = "failed"  # gave up; service.requeue_failed_bodies puts it back to pending


class Message(Base):
    __tablename__ = "message"
    __table_args__ = (
        # Exactly one row per Twilio SID per organization: the arbiter of every race.
        UniqueConstraint("organization_id", "external_id"),
        Index("ix_message_feed", "organization_id", "contact_id", "created_at"),
        Index("ix_message_body_due", "body_state", "body_next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contact.id", ondelete="CASCADE"))
    phone_number_id: Mapped[int | None] = mapped_column(
        ForeignKey("phone_number.id", ondelete="SET NULL")
    )
    channel: Mapped[str] = mapped_column(String(16), default="sms")
    direction: Mapped[str] = mapped_column(String(16))  # inbound | outbound
    from_address: Mapped[str] = mapped_column(String(64))
    to_address: Mapped[str] = mapped_column(String(64))
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(16))
    source: Mapped[str | None] = mapped_column(String(16))  # loquent | external | import
    external_id: Mapped[str | None] = mapped_column(String(34))
    num_media: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)

    # Body enrichment: pending | ready | empty | failed, and the job bookkeeping.
    body_state: Mapped[str] = mapped_column(String(16), default="ready")
    body_attempts: Mapped[int] = mapped_column(Integer, default=0)
    body_next_attempt_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    body_locked_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    body_error: Mapped[str | None] = mapped_column(Text)
    # When the worker first took the body up (stamped by the claim, cleared by a requeue):
    # transient failures are retried until enrich_deadline_seconds after it, however many
    # attempts that takes.
    body_pending_since: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Consecutive 404 answers; any other answer resets it. 404 ends in `failed` after a few.
    body_not_found: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class MessageMedia(Base):
    __tablename__ = "message_media"
    __table_args__ = (UniqueConstraint("message_id", "media_sid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), index=True
    )
    media_sid: Mapped[str] = mapped_column(String(34))
    content_type: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class MessageSend(Base):
    """One reply sent from the inbox, from before Twilio is called until long after.

    - ``idempotency_key`` (per organization, unique) with ``fingerprint`` (a hash of the
      request) and, once known, ``response_status`` / ``response_body``: a client retry with
      the same key gets that first answer back instead of a second text.
    - ``inflight_line_id`` / ``inflight_to`` are set only while Twilio's answer is awaited;
      their unique pair allows one send in flight per (line, recipient), so a status event
      for a SID we have not learnt yet names exactly one row it can belong to. NULLs never
      collide, so finished sends do not hold the pair.
    - ``lease_until``: when a send still in flight is presumed dead (its process crashed),
      so the pair can be taken over.
    """

    __tablename__ = "message_send"
    __table_args__ = (
        UniqueConstraint("organization_id", "idempotency_key"),
        UniqueConstraint("inflight_line_id", "inflight_to"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(
        ForeignKey("message.id", ondelete="CASCADE"), unique=True
    )
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    inflight_line_id: Mapped[int | None] = mapped_column(
        ForeignKey("phone_number.id", ondelete="CASCADE")
    )
    inflight_to: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(UtcDateTime)
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
