"""Contacts and their numbers. One contact per number per organization."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from loquent.db import Base, UtcDateTime, utcnow


class ContactSource(enum.StrEnum):
    """How a contact came to exist (``contact.source``)."""

    INBOUND_SMS = "inbound_sms"  # texted one of the organization's lines
    EXTERNAL_SMS = "external_sms"  # in a message sent elsewhere (external capture, catch-up)
    IMPORT = "import"  # history import
    MANUAL = "manual"  # created by a person (the demo's seed)


class Contact(Base):
    __tablename__ = "contact"
    __table_args__ = (
        Index("ix_contact_org_last_contacted", "organization_id", "last_contacted_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    first_name: Mapped[str] = mapped_column(String(200), default="")
    last_name: Mapped[str] = mapped_column(String(200), default="")
    source: Mapped[str] = mapped_column(String(32))  # inbound_sms | external_sms | import | manual
    last_contacted_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, onupdate=utcnow)


class ContactPhone(Base):
    __tablename__ = "contact_phone"
    # The unique pair is what makes resolve-or-create race-safe across processes.
    __table_args__ = (UniqueConstraint("organization_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    contact_id: Mapped[int] = mapped_column(
        ForeignKey("contact.id", ondelete="CASCADE"), index=True
    )
    # E.164 where the address is a phone number; an alphanumeric sender id otherwise.
    number: Mapped[str] = mapped_column(String(64))
    is_preferred: Mapped[bool] = mapped_column(Boolean, default=True)
