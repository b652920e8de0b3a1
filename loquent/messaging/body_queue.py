"""The message table as a job queue: claiming due body-enrichment work with leases.

It lives with messaging because every statement here is about message rows; ``loquent.jobs``
keeps what knows nothing of messages (backoff) and the process that runs the work.

A message needs its body fetched while ``body_state = 'pending'``. A worker *claims* a row by
setting ``body_locked_until`` (a lease) in one UPDATE statement; the row stays pending, so a
worker that dies mid-job loses nothing: the lease runs out and the row is claimable again.
Each claim counts an attempt (``body_attempts + 1``), which also bounds how often a job that
keeps crashing its worker is retried, and the first claim stamps ``body_pending_since``.

Fairness: at most ``per_org_cap`` rows of one organization are leased at any moment, counting
leases held by every worker process, so a burst from one noisy account cannot occupy all the
workers while other organizations wait. Organizations whose Twilio credentials were rejected
(or that have none) are not claimed at all until they reconnect.

Concurrency: on SQLite every write transaction is ``BEGIN IMMEDIATE``, so claims are
serialized. On PostgreSQL the candidate rows are locked ``FOR UPDATE SKIP LOCKED`` and
re-checked after locking, so two workers never lease the same row; racing claims can only
under-fill an org's cap, not exceed it, because both rank the org's rows the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    func,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from loquent.db import UtcDateTime
from loquent.messaging.models import Message
from loquent.orgs.models import Organization

PENDING = "pending"


@dataclass(frozen=True)
class Claim:
    """A leased job. ``attempts`` counts this attempt; it is also the lease's fencing token."""

    message_id: int
    organization_id: int
    attempts: int


def _claimable(entity: Any, now: datetime) -> list[ColumnElement[bool]]:
    """Pending, due, and not under a live lease (an expired lease counts as none)."""
    return [
        entity.body_state == PENDING,
        entity.body_next_attempt_at <= now,
        or_(entity.body_locked_until.is_(None), entity.body_locked_until < now),
    ]


def _org_can_call_twilio() -> list[ColumnElement[bool]]:
    return [
        Organization.twilio_credentials_valid.is_(True),
        Organization.twilio_auth_token.is_not(None),
        Organization.twilio_account_sid.is_not(None),
    ]


async def claim_due_bodies(
    session: AsyncSession,
    *,
    now: datetime,
    limit: int,
    lease_seconds: float,
    per_org_cap: int,
    exclude_orgs: set[int] | None = None,
) -> list[Claim]:
    """Lease up to ``limit`` due messages, oldest due first, in one UPDATE … RETURNING.

    ``exclude_orgs``: organizations whose bodies are left to a listing run.

    The caller commits. The statement, in outline::

        UPDATE message SET body_locked_until = :now + :lease, body_attempts = body_attempts + 1
        WHERE id IN (
            SELECT id FROM (
                SELECT id, due, row_number() OVER (PARTITION BY org ORDER BY due, id) AS rn,
                       <rows of that org already leased> AS leased
                FROM message JOIN organization … WHERE <claimable> AND <org can call Twilio>
            ) WHERE rn <= :cap - leased ORDER BY due, id LIMIT :limit
            [re-selected FOR UPDATE OF message SKIP LOCKED on PostgreSQL]
        ) RETURNING id, organization_id, body_attempts
    """
    if limit <= 0 or per_org_cap <= 0:
        return []

    # Leases still running, per organization, whoever holds them.
    held = aliased(Message, name="held")
    leased = (
        select(held.organization_id.label("organization_id"), func.count().label("n"))
        .where(held.body_state == PENDING, held.body_locked_until >= now)
        .group_by(held.organization_id)
        .subquery("leased")
    )

    candidate = aliased(Message, name="candidate")
    ranked = (
        select(
            candidate.id.label("id"),
            candidate.body_next_attempt_at.label("due_at"),
            func.row_number()
            .over(
                partition_by=candidate.organization_id,
                order_by=(candidate.body_next_attempt_at, candidate.id),
            )
            .label("rn"),
            func.coalesce(leased.c.n, 0).label("leased"),
        )
        .join(Organization, Organization.id == candidate.organization_id)
        .outerjoin(leased, leased.c.organization_id == candidate.organization_id)
        .where(
            *_claimable(candidate, now),
            *_org_can_call_twilio(),
            *([candidate.organization_id.not_in(exclude_orgs)] if exclude_orgs else []),
        )
        .subquery("ranked")
    )
    picked = (
        select(ranked.c.id)
        .where(ranked.c.rn <= per_org_cap - ranked.c.leased)
        .order_by(ranked.c.due_at, ranked.c.id)
        .limit(limit)
    )

    if session.get_bind().dialect.name == "postgresql":
        # Window functions cannot carry FOR UPDATE, so lock in a layer of their own. The
        # claimable conditions are repeated there: PostgreSQL re-evaluates them on the row
        # version it locks, which drops a row another worker leased a moment ago.
        target = aliased(Message, name="target")
        ids = (
            select(target.id)
            .where(target.id.in_(picked), *_claimable(target, now))
            .with_for_update(of=target, skip_locked=True)
        )
    else:
        ids = picked

    stmt = (
        update(Message)
        .where(Message.id.in_(ids))
        .values(
            body_locked_until=now + timedelta(seconds=lease_seconds),
            body_attempts=Message.body_attempts + 1,
            # The first attempt starts the clock of the retry deadline (see enrichment).
            body_pending_since=func.coalesce(
                Message.body_pending_since, literal(now, UtcDateTime())
            ),
            updated_at=Message.updated_at,  # bookkeeping, not a change to the message
        )
        .returning(Message.id, Message.organization_id, Message.body_attempts)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    claims = [Claim(message_id=r[0], organization_id=r[1], attempts=r[2]) for r in rows]
    # RETURNING order is unspecified; hand work out oldest-first anyway.
    return sorted(claims, key=lambda c: c.message_id)


async def release_claims(session: AsyncSession, claims: list[Claim]) -> int:
    """Give leases back without counting the attempt (a worker shutting down before it ran
    the job). Fenced on ``attempts``: a lease that expired and was re-claimed by another
    worker is left alone. The caller commits."""
    released = 0
    for claim in claims:
        result = await session.execute(
            update(Message)
            .where(
                Message.id == claim.message_id,
                Message.body_state == PENDING,
                Message.body_attempts == claim.attempts,
                # A job that already scheduled its retry released its lease itself.
                Message.body_locked_until.is_not(None),
            )
            .values(
                body_locked_until=None,
                body_attempts=Message.body_attempts - 1,
                updated_at=Message.updated_at,
            )
            .execution_options(synchronize_session=False)
        )
        released += int(getattr(result, "rowcount", 0) or 0)
    return released


async def next_due_at(session: AsyncSession) -> datetime | None:
    """The soonest moment some pending row may become claimable (its next attempt, or the end
    of its lease), or None when nothing is pending for an organization that can be served."""
    ready_at = case(
        (
            and_(
                Message.body_locked_until.is_not(None),
                Message.body_locked_until > Message.body_next_attempt_at,
            ),
            Message.body_locked_until,
        ),
        else_=Message.body_next_attempt_at,
    )
    stmt = (
        # type_coerce: the aggregate must come back through UtcDateTime (aware UTC).
        select(type_coerce(func.min(ready_at), UtcDateTime()))
        .join(Organization, Organization.id == Message.organization_id)
        .where(Message.body_state == PENDING, *_org_can_call_twilio())
    )
    return (await session.execute(stmt)).scalar()


async def count_pending(session: AsyncSession, *, now: datetime, due_only: bool = True) -> int:
    """Pending rows of organizations that can be served: due and unleased ones when
    ``due_only``, else every one (retries scheduled for later and live leases included)."""
    conditions = _claimable(Message, now) if due_only else [Message.body_state == PENDING]
    stmt = (
        select(func.count())
        .select_from(Message)
        .join(Organization, Organization.id == Message.organization_id)
        .where(*conditions, *_org_can_call_twilio())
    )
    return int((await session.execute(stmt)).scalar() or 0)


# --- listing runs (loquent.messaging.bulk_enrichment) ----------------------------------------


async def orgs_due_for_listing(
    session: AsyncSession,
    *,
    now: datetime,
    threshold: int,
    captured_since: datetime,
    exclude: set[int] | None = None,
) -> list[int]:
    """Organizations with at least ``threshold`` claimable bodies captured since
    ``captured_since``, the most backed-up first."""
    if threshold <= 0:
        return []
    n = func.count().label("n")
    stmt = (
        select(Message.organization_id, n)
        .join(Organization, Organization.id == Message.organization_id)
        .where(
            *_claimable(Message, now),
            *_org_can_call_twilio(),
            Message.created_at >= captured_since,
        )
        .group_by(Message.organization_id)
        .having(func.count() >= threshold)
        .order_by(n.desc())
    )
    rows = (await session.execute(stmt)).all()
    return [int(r[0]) for r in rows if not exclude or int(r[0]) not in exclude]


async def claim_org_bodies(
    session: AsyncSession,
    org_id: int,
    *,
    now: datetime,
    limit: int,
    lease_seconds: float,
    captured_since: datetime,
) -> list[Claim]:
    """Lease up to ``limit`` claimable bodies of one organization captured since
    ``captured_since``, for one listing run. Counted and fenced like ``claim_due_bodies``;
    the leased rows count against the org's cap there, so no single fetch of the org starts
    while the run holds them. The caller commits."""
    if limit <= 0:
        return []
    picked = (
        select(Message.id)
        .where(
            Message.organization_id == org_id,
            Message.created_at >= captured_since,
            *_claimable(Message, now),
        )
        .order_by(Message.body_next_attempt_at, Message.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        picked = picked.with_for_update(skip_locked=True)
    stmt = (
        update(Message)
        .where(Message.id.in_(picked.scalar_subquery()), *_claimable(Message, now))
        .values(
            body_locked_until=now + timedelta(seconds=lease_seconds),
            body_attempts=Message.body_attempts + 1,
            body_pending_since=func.coalesce(
                Message.body_pending_since, literal(now, UtcDateTime())
            ),
            updated_at=Message.updated_at,
        )
        .returning(Message.id, Message.organization_id, Message.body_attempts)
        .execution_options(synchronize_session=False)
    )
    rows = (await session.execute(stmt)).all()
    claims = [Claim(message_id=r[0], organization_id=r[1], attempts=r[2]) for r in rows]
    return sorted(claims, key=lambda c: c.message_id)


async def extend_leases(session: AsyncSession, claims: list[Claim], *, until: datetime) -> int:
    """Push the leases of claims still held out to ``until`` (a listing run outlives one
    lease). Fenced like ``release_claims``: rows settled, re-claimed elsewhere or already
    handed back are left alone. The caller commits."""
    extended = 0
    for chunk in _chunks(claims, 500):
        for attempts, ids in _by_attempts(chunk).items():
            result = await session.execute(
                update(Message)
                .where(
                    Message.id.in_(ids),
                    Message.body_state == PENDING,
                    Message.body_attempts == attempts,
                    Message.body_locked_until.is_not(None),
                )
                .values(body_locked_until=until, updated_at=Message.updated_at)
                .execution_options(synchronize_session=False)
            )
            extended += int(getattr(result, "rowcount", 0) or 0)
    return extended


def _chunks(claims: list[Claim], size: int) -> list[list[Claim]]:
    return [claims[i : i + size] for i in range(0, len(claims), size)]


def _by_attempts(claims: list[Claim]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for claim in claims:
        groups.setdefault(claim.attempts, []).append(claim.message_id)
    return groups
