"""Organizations, members, tokens, sessions and org lines.

Plain async functions taking a session; the caller owns the transaction.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.db import dialect_insert, utcnow
from loquent.orgs.crypto import SecretBox, token_digest
from loquent.orgs.models import ApiToken, Member, Organization, PhoneNumber, User, UserSession
from loquent.orgs.passwords import hash_password, verify_password

ROLES = ("owner", "member")
# An API token's last use is recorded to the minute: one write a minute per token at most,
# not one per request.
TOKEN_USE_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    """Who is calling: always scoped to exactly one organization."""

    user_id: int
    organization_id: int
    role: str
    via: str  # "session" | "token"
    csrf_token: str | None = None
    # The user_session or api_token row behind the call: a long-lived request (an SSE
    # stream) re-checks that it is still live.
    credential_id: int | None = None
    # Tokens only: when the token was last recorded as used (written at most once a minute).
    last_used_at: datetime | None = None


# --- organizations -----------------------------------------------------------------------


async def create_organization(
    session: AsyncSession,
    box: SecretBox,
    *,
    name: str,
    twilio_account_sid: str | None = None,
    twilio_auth_token: str | None = None,
) -> Organization:
    org = Organization(name=name)
    if twilio_account_sid:
        org.twilio_account_sid = twilio_account_sid
    if twilio_auth_token:
        org.twilio_auth_token = box.encrypt(twilio_auth_token)
    session.add(org)
    await session.flush()
    return org


async def set_twilio_credentials(
    session: AsyncSession, box: SecretBox, org: Organization, *, account_sid: str, auth_token: str
) -> None:
    """Store credentials Twilio has just accepted.

    Clears "credentials invalid" (paused enrichment resumes: claims skip only invalid orgs)
    and the signature-failure counter, which counted failures against the previous token.
    Switching to another account forgets the old account's sink: it is not ours to manage
    with these credentials.
    """
    if org.twilio_account_sid and org.twilio_account_sid != account_sid:
        clear_event_sink(org)
    org.twilio_account_sid = account_sid
    org.twilio_auth_token = box.encrypt(auth_token)
    org.twilio_credentials_valid = True
    org.twilio_credentials_error = None
    org.twilio_credentials_checked_at = utcnow()
    org.signature_failures = 0
    org.last_signature_failure_at = None


def clear_twilio_credentials(org: Organization) -> None:
    """Forget the account: SID, token, shared key and the sink state that went with them."""
    org.twilio_account_sid = None
    org.twilio_auth_token = None
    org.twilio_webhook_shared_key = None
    org.twilio_credentials_valid = True
    org.twilio_credentials_error = None
    org.twilio_credentials_checked_at = None
    org.signature_failures = 0
    org.last_signature_failure_at = None
    clear_event_sink(org)


def record_event_sink(
    org: Organization,
    *,
    sink_sid: str,
    subscription_sid: str,
    sink_created: bool,
    subscription_created: bool,
) -> None:
    same_sink = org.sink_sid == sink_sid
    same_subscription = org.subscription_sid == subscription_sid
    if not same_sink:
        org.sink_verified_at = None  # a verification of another sink says nothing about this one
    # Once created here, still ours to remove even when a later setup finds and reuses it.
    org.sink_created_here = sink_created or (same_sink and bool(org.sink_created_here))
    org.subscription_created_here = subscription_created or (
        same_subscription and bool(org.subscription_created_here)
    )
    org.sink_sid = sink_sid
    org.subscription_sid = subscription_sid
    org.sms_events_active = True


def clear_event_sink(org: Organization) -> None:
    org.sink_sid = None
    org.subscription_sid = None
    org.sink_created_here = False
    org.subscription_created_here = False
    org.sms_events_active = False
    org.sink_verified_at = None


async def set_webhook_shared_key(
    session: AsyncSession, box: SecretBox, org: Organization, shared_key: str | None
) -> None:
    """The Twilio webhook SharedKey secret, or None to accept auth-token signatures only."""
    org.twilio_webhook_shared_key = box.encrypt(shared_key) if shared_key else None


async def find_org_by_account_sid(session: AsyncSession, account_sid: str) -> Organization | None:
    result = await session.execute(
        select(Organization).where(Organization.twilio_account_sid == account_sid)
    )
    return result.scalar_one_or_none()


def auth_token_of(box: SecretBox, org: Organization) -> str | None:
    return box.decrypt(org.twilio_auth_token) if org.twilio_auth_token else None


async def mark_credentials_invalid(session: AsyncSession, org_id: int, reason: str) -> None:
    await session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(
            twilio_credentials_valid=False,
            twilio_credentials_error=reason,
            twilio_credentials_checked_at=utcnow(),
        )
    )


async def record_signature_failure(session: AsyncSession, org_id: int) -> None:
    """Count a refused signature at most once per clock minute: anyone who knows the account
    SID can send forgeries, and must not be able to inflate the counter (or keep the write
    lock busy); a rotated token still shows up within the minute."""
    now = utcnow()
    minute = now.replace(second=0, microsecond=0)
    await session.execute(
        update(Organization)
        .where(
            Organization.id == org_id,
            (Organization.last_signature_failure_at.is_(None))
            | (Organization.last_signature_failure_at < minute),
        )
        .values(
            signature_failures=Organization.signature_failures + 1,
            last_signature_failure_at=now,
        )
    )


async def record_unmatched_event(session: AsyncSession, org_id: int) -> None:
    await session.execute(
        update(Organization)
        .where(Organization.id == org_id)
        .values(unmatched_events=Organization.unmatched_events + 1)
    )


# --- org lines -----------------------------------------------------------------------------


async def add_phone_number(
    session: AsyncSession,
    org_id: int,
    number: str,
    *,
    twilio_sid: str | None = None,
    friendly_name: str = "",
) -> PhoneNumber:
    """Get or create the line, with the one get-or-create of the project: ``INSERT … ON
    CONFLICT DO NOTHING`` on the unique (organization_id, number), then read whichever row
    won (ours, or a concurrent transaction's, which PostgreSQL waits for)."""
    existing = await find_line(session, org_id, number)
    if existing is None:
        insert = dialect_insert(session)
        await session.execute(
            insert(PhoneNumber)
            .values(
                organization_id=org_id,
                number=number,
                twilio_sid=twilio_sid,
                friendly_name=friendly_name,
                created_at=utcnow(),
            )
            .on_conflict_do_nothing(index_elements=["organization_id", "number"])
        )
        existing = await find_line(session, org_id, number)
        if existing is None:  # pragma: no cover - the winner's row is committed by now
            raise RuntimeError("unique conflict on phone_number without a visible winner")
    if twilio_sid:
        existing.twilio_sid = twilio_sid
    if friendly_name:
        existing.friendly_name = friendly_name
    return existing


@dataclass(frozen=True)
class LineImport:
    number: str  # E.164
    twilio_sid: str
    friendly_name: str


_CHUNK = 500  # rows per statement: well inside SQLite's and asyncpg's parameter limits


async def import_phone_numbers(
    session: AsyncSession, org_id: int, entries: Sequence[LineImport]
) -> tuple[int, int]:
    """The set-based form of ``add_phone_number`` for importing a whole account's numbers:
    ``(imported, existing)``.

    New lines are inserted with ``ON CONFLICT (organization_id, number) DO NOTHING``, so a
    line created concurrently (an inbound text registering its number) wins quietly, as in
    the one-by-one get-or-create. Existing lines get the Twilio SID and friendly name only
    where they have none. A constant number of statements per 500 numbers keeps the write
    transaction short — on SQLite it blocks webhook ingestion while it lasts.
    """
    by_number = {entry.number: entry for entry in entries}
    numbers = list(by_number)
    existing: dict[str, PhoneNumber] = {}
    for start in range(0, len(numbers), _CHUNK):
        existing.update(await find_lines(session, org_id, set(numbers[start : start + _CHUNK])))
    for number, line in existing.items():
        if not line.twilio_sid:
            line.twilio_sid = by_number[number].twilio_sid
        if not line.friendly_name:
            line.friendly_name = by_number[number].friendly_name
    await session.flush()

    missing = [by_number[number] for number in numbers if number not in existing]
    insert = dialect_insert(session)
    imported = 0
    now = utcnow()
    for start in range(0, len(missing), _CHUNK):
        rows = [
            {
                "organization_id": org_id,
                "number": entry.number,
                "twilio_sid": entry.twilio_sid,
                "friendly_name": entry.friendly_name,
                "created_at": now,
            }
            for entry in missing[start : start + _CHUNK]
        ]
        stmt = (
            insert(PhoneNumber)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["organization_id", "number"])
            .returning(PhoneNumber.id)
        )
        imported += len((await session.scalars(stmt)).all())
    return imported, len(numbers) - imported


async def find_line(session: AsyncSession, org_id: int, number: str) -> PhoneNumber | None:
    result = await session.execute(
        select(PhoneNumber).where(
            PhoneNumber.organization_id == org_id, PhoneNumber.number == number
        )
    )
    return result.scalar_one_or_none()


async def find_lines(
    session: AsyncSession, org_id: int, numbers: set[str]
) -> dict[str, PhoneNumber]:
    """The organization's lines among ``numbers``, by number (one query for both ends)."""
    result = await session.execute(
        select(PhoneNumber).where(
            PhoneNumber.organization_id == org_id, PhoneNumber.number.in_(numbers)
        )
    )
    return {line.number: line for line in result.scalars()}


async def list_lines(session: AsyncSession, org_id: int) -> list[PhoneNumber]:
    result = await session.execute(
        select(PhoneNumber).where(PhoneNumber.organization_id == org_id).order_by(PhoneNumber.id)
    )
    return list(result.scalars())


# --- users, members -----------------------------------------------------------------------


async def get_or_create_user(
    session: AsyncSession, email: str, password: str | None = None
) -> User:
    email = email.strip().lower()
    user = (await session.execute(select(User).where(User.email == email))).scalar_one_or_none()
    if user is None:
        user = User(email=email)
        session.add(user)
    if password is not None:
        user.password_hash = await asyncio.to_thread(hash_password, password)
    await session.flush()
    return user


async def ensure_member(session: AsyncSession, user: User, org_id: int, role: str) -> Member:
    member = (
        await session.execute(
            select(Member).where(Member.user_id == user.id, Member.organization_id == org_id)
        )
    ).scalar_one_or_none()
    if member is None:
        member = Member(user_id=user.id, organization_id=org_id, role=role)
        session.add(member)
        await session.flush()
    return member


async def authenticate_password(
    session: AsyncSession, email: str, password: str
) -> tuple[User, Member] | None:
    user = (
        await session.execute(select(User).where(User.email == email.strip().lower()))
    ).scalar_one_or_none()
    # Argon2 is deliberately slow: keep it off the event loop.
    stored = user.password_hash if user else None
    if not await asyncio.to_thread(verify_password, password, stored) or user is None:
        return None
    member = (
        await session.execute(
            select(Member).where(Member.user_id == user.id).order_by(Member.id).limit(1)
        )
    ).scalar_one_or_none()
    return (user, member) if member else None


# --- API tokens -----------------------------------------------------------------------------


async def create_api_token(session: AsyncSession, user: User, org_id: int, name: str = "") -> str:
    token = "lq_" + secrets.token_urlsafe(32)
    session.add(
        ApiToken(token_hash=token_digest(token), user_id=user.id, organization_id=org_id, name=name)
    )
    await session.flush()
    return token


async def authenticate_token(session: AsyncSession, token: str) -> Principal | None:
    row = (
        await session.execute(
            select(ApiToken, Member.role)
            .join(
                Member,
                (Member.user_id == ApiToken.user_id)
                & (Member.organization_id == ApiToken.organization_id),
            )
            .where(ApiToken.token_hash == token_digest(token), ApiToken.revoked_at.is_(None))
        )
    ).first()
    if row is None:
        return None
    api_token, role = row
    return Principal(
        user_id=api_token.user_id,
        organization_id=api_token.organization_id,
        role=role,
        via="token",
        credential_id=api_token.id,
        last_used_at=api_token.last_used_at,
    )


def token_use_is_stale(principal: Principal, now: datetime | None = None) -> bool:
    """Whether a token's ``last_used_at`` is old enough to be written again."""
    if principal.via != "token" or principal.credential_id is None:
        return False
    last = principal.last_used_at
    return last is None or last <= (now or utcnow()) - TOKEN_USE_RESOLUTION


async def record_token_use(
    session: AsyncSession, token_id: int, now: datetime | None = None
) -> bool:
    """Set ``last_used_at`` unless another request (or process) did so within the minute.

    The condition is in the UPDATE, so racing requests write it once.
    """
    now = now or utcnow()
    result = await session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            (ApiToken.last_used_at.is_(None))
            | (ApiToken.last_used_at <= now - TOKEN_USE_RESOLUTION),
        )
        .values(last_used_at=now)
    )
    return bool(getattr(result, "rowcount", 0))


@dataclass(frozen=True)
class TokenInfo:
    """What may be shown about a token: never the token or its digest."""

    id: int
    name: str
    organization_id: int
    email: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


async def list_api_tokens(session: AsyncSession, org_id: int) -> list[TokenInfo]:
    rows = await session.execute(
        select(
            ApiToken.id,
            ApiToken.name,
            ApiToken.organization_id,
            User.email,
            ApiToken.created_at,
            ApiToken.last_used_at,
            ApiToken.revoked_at,
        )
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.organization_id == org_id)
        .order_by(ApiToken.id)
    )
    return [TokenInfo(*row) for row in rows]


async def revoke_api_token(
    session: AsyncSession, token_id: int, now: datetime | None = None
) -> TokenInfo | None:
    """Revoke the token (it answers 401 from now on); revoking twice keeps the first time."""
    await session.execute(
        update(ApiToken)
        .where(ApiToken.id == token_id, ApiToken.revoked_at.is_(None))
        .values(revoked_at=now or utcnow())
    )
    org_id = await session.scalar(select(ApiToken.organization_id).where(ApiToken.id == token_id))
    if org_id is None:
        return None
    return next(t for t in await list_api_tokens(session, org_id) if t.id == token_id)


# --- browser sessions -----------------------------------------------------------------------


async def create_session(
    session: AsyncSession, user_id: int, org_id: int, max_age_seconds: int
) -> tuple[str, UserSession]:
    raw = secrets.token_urlsafe(32)
    row = UserSession(
        session_hash=token_digest(raw),
        user_id=user_id,
        organization_id=org_id,
        csrf_token=secrets.token_urlsafe(24),
        expires_at=utcnow() + timedelta(seconds=max_age_seconds),
    )
    session.add(row)
    await session.flush()
    return raw, row


async def authenticate_session(
    session: AsyncSession, raw: str, now: datetime | None = None
) -> Principal | None:
    row = (
        await session.execute(
            select(UserSession, Member.role)
            .join(
                Member,
                (Member.user_id == UserSession.user_id)
                & (Member.organization_id == UserSession.organization_id),
            )
            .where(UserSession.session_hash == token_digest(raw))
        )
    ).first()
    if row is None:
        return None
    user_session, role = row
    if user_session.expires_at <= (now or utcnow()):
        return None
    return Principal(
        user_id=user_session.user_id,
        organization_id=user_session.organization_id,
        role=role,
        via="session",
        csrf_token=user_session.csrf_token,
        credential_id=user_session.id,
    )


async def credential_is_live(
    session: AsyncSession, principal: Principal, now: datetime | None = None
) -> bool:
    """Whether the session or token behind ``principal`` still authenticates: not logged
    out, expired or revoked, and the user still a member. One indexed lookup."""
    now = now or utcnow()
    member = (Member.user_id == principal.user_id) & (
        Member.organization_id == principal.organization_id
    )
    if principal.via == "session":
        stmt = (
            select(UserSession.id)
            .join(Member, member)
            .where(UserSession.id == principal.credential_id, UserSession.expires_at > now)
        )
    else:
        stmt = (
            select(ApiToken.id)
            .join(Member, member)
            .where(ApiToken.id == principal.credential_id, ApiToken.revoked_at.is_(None))
        )
    return (await session.scalar(stmt)) is not None


async def prune_expired_sessions(session: AsyncSession, now: datetime | None = None) -> int:
    """Delete browser sessions past their expiry (they no longer authenticate anyway)."""
    result = await session.execute(
        delete(UserSession).where(UserSession.expires_at <= (now or utcnow()))
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def end_session(session: AsyncSession, raw: str) -> None:
    row = (
        await session.execute(
            select(UserSession).where(UserSession.session_hash == token_digest(raw))
        )
    ).scalar_one_or_none()
    if row is not None:
        await session.delete(row)
