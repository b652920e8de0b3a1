"""Organizations, their people, their credentials and their own phone lines."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint, false
from sqlalchemy.orm import Mapped, mapped_column

from loquent.db import Base, UtcDateTime, utcnow


class Role(enum.StrEnum):
    """A member's role in an organization (``member.role``)."""

    OWNER = "owner"  # connects Twilio, imports numbers and history, retries bodies
    MEMBER = "member"  # reads and answers conversations


class Organization(Base):
    __tablename__ = "organization"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)

    # BYO Twilio. The token column holds Fernet ciphertext, never the token itself.
    twilio_account_sid: Mapped[str | None] = mapped_column(String(34), unique=True)
    twilio_auth_token: Mapped[str | None] = mapped_column(Text)
    twilio_webhook_shared_key: Mapped[str | None] = mapped_column(Text)
    twilio_credentials_valid: Mapped[bool] = mapped_column(Boolean, default=True)
    twilio_credentials_error: Mapped[str | None] = mapped_column(Text)
    twilio_credentials_checked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    # Event Streams sink state
    sink_sid: Mapped[str | None] = mapped_column(String(34))
    subscription_sid: Mapped[str | None] = mapped_column(String(34))
    sms_events_active: Mapped[bool] = mapped_column(Boolean, default=False)
    sink_verified_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # Whether this organization created the sink / subscription at Twilio (rather than reusing
    # ones that already existed): removing the sink tears down only what we created.
    sink_created_here: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    subscription_created_here: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )

    # Health counters shown in settings: a rotated auth token shows up here first.
    signature_failures: Mapped[int] = mapped_column(Integer, default=0)
    last_signature_failure_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    unmatched_events: Mapped[int] = mapped_column(Integer, default=0)


class User(Base):
    __tablename__ = "user_account"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Member(Base):
    __tablename__ = "member"
    __table_args__ = (UniqueConstraint("user_id", "organization_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organization.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20), default="member")  # owner | member
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiToken(Base):
    """Bearer tokens for scripts. Only a SHA-256 of the token is kept."""

    __tablename__ = "api_token"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class UserSession(Base):
    """Browser sessions, server-side so that logout really ends them. Keyed by a hash."""

    __tablename__ = "user_session"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("user_account.id", ondelete="CASCADE"))
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # Indexed for the periodic prune of expired sessions.
    expires_at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)


class PhoneNumber(Base):
    """One of the organization's own Twilio lines: the basis of "phone ownership"."""

    __tablename__ = "phone_number"
    __table_args__ = (UniqueConstraint("organization_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organization.id", ondelete="CASCADE"))
    number: Mapped[str] = mapped_column(String(20))
    twilio_sid: Mapped[str | None] = mapped_column(String(34))
    friendly_name: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
