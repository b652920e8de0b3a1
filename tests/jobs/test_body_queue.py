"""Claiming due rows: leases, crash safety, per-organization caps, paused organizations."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable

import pytest
from sqlalchemy import update

from loquent.db import Database, utcnow
from loquent.messaging.body_queue import (
    Claim,
    claim_due_bodies,
    count_pending,
    next_due_at,
    release_claims,
)
from loquent.messaging.models import Message
from loquent.orgs.models import Organization

from .conftest import Store, Tenant


async def claim(
    db: Database, *, limit: int = 10, lease_seconds: float = 30.0, per_org_cap: int = 100
) -> list[Claim]:
    """One worker's claim, in its own transaction (as a separate process would do it)."""
    async with db.session() as session:
        claims = await claim_due_bodies(
            session,
            now=utcnow(),
            limit=limit,
            lease_seconds=lease_seconds,
            per_org_cap=per_org_cap,
        )
        await session.commit()
    return claims


@pytest.mark.asyncio
async def test_claim_leases_due_rows_oldest_first_and_counts_the_attempt(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    later = await store.add_pending(tenant, due_in=-1)
    first = await store.add_pending(tenant, due_in=-5)
    not_due = await store.add_pending(tenant, due_in=60)

    claims = await claim(db, limit=1)
    assert claims == [Claim(first, tenant.org_id, 1)]
    message = await store.message(first)
    assert message.body_state == "pending"
    assert message.body_locked_until is not None
    assert message.body_locked_until > utcnow()
    assert message.body_attempts == 1

    assert [c.message_id for c in await claim(db)] == [later]
    assert await claim(db) == []  # leased rows and rows not yet due stay put
    assert (await store.message(not_due)).body_attempts == 0


@pytest.mark.asyncio
async def test_claim_does_not_touch_updated_at(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    message_id = await store.add_pending(tenant)
    before = (await store.message(message_id)).updated_at
    await claim(db)
    assert (await store.message(message_id)).updated_at == before


@pytest.mark.asyncio
async def test_expired_lease_is_claimed_again(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    """A worker that claims and then dies loses nothing: the lease runs out."""
    tenant = await make_tenant()
    message_id = await store.add_pending(tenant)

    assert [c.message_id for c in await claim(db, lease_seconds=0.3)] == [message_id]
    assert await claim(db) == []  # still leased
    await asyncio.sleep(0.4)
    assert await claim(db) == [Claim(message_id, tenant.org_id, 2)]


@pytest.mark.asyncio
async def test_per_org_cap_counts_leases_held_by_every_worker(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    noisy = await make_tenant("Noisy")
    quiet = await make_tenant("Quiet")
    for _ in range(10):
        await store.add_pending(noisy, due_in=-10)  # older: first in line
    quiet_ids = {await store.add_pending(quiet) for _ in range(2)}

    first = await claim(db, limit=10, per_org_cap=3)
    per_org = Counter(c.organization_id for c in first)
    assert per_org == {noisy.org_id: 3, quiet.org_id: 2}
    assert quiet_ids <= {c.message_id for c in first}  # the noisy org did not crowd them out

    # Another worker (another process): the noisy org's cap is already used up.
    assert await claim(db, limit=10, per_org_cap=3) == []

    # One of its jobs finishes: exactly one more of its rows becomes claimable.
    done = next(c for c in first if c.organization_id == noisy.org_id)
    async with db.session() as session:
        await session.execute(
            update(Message)
            .where(Message.id == done.message_id)
            .values(body_state="ready", body_locked_until=None)
        )
        await session.commit()
    again = await claim(db, limit=10, per_org_cap=3)
    assert [c.organization_id for c in again] == [noisy.org_id]


@pytest.mark.asyncio
async def test_orgs_without_usable_credentials_are_not_claimed(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    rejected = await make_tenant("Rejected")
    disconnected = await make_tenant("Disconnected", connected=False)
    await store.add_pending(rejected)
    await store.add_pending(disconnected)
    async with db.session() as session:
        await session.execute(
            update(Organization)
            .where(Organization.id == rejected.org_id)
            .values(twilio_credentials_valid=False)
        )
        await session.commit()

    assert await claim(db) == []
    async with db.reader() as session:
        assert await count_pending(session, now=utcnow()) == 0
        assert await next_due_at(session) is None


@pytest.mark.asyncio
async def test_next_due_at_sees_retries_and_lease_ends(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    await store.add_pending(tenant, due_in=30)
    async with db.reader() as session:
        due = await next_due_at(session)
    assert due is not None
    assert 29 < (due - utcnow()).total_seconds() <= 30

    await store.add_pending(tenant, due_in=-1, locked_for=10)  # leased by someone
    async with db.reader() as session:
        due = await next_due_at(session)
        assert due is not None
        assert 9 < (due - utcnow()).total_seconds() <= 10
        assert await count_pending(session, now=utcnow()) == 0
        assert await count_pending(session, now=utcnow(), due_only=False) == 2


@pytest.mark.asyncio
async def test_release_gives_the_lease_back_uncounted_unless_taken_over(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenant = await make_tenant()
    a = await store.add_pending(tenant)
    b = await store.add_pending(tenant)
    claims = {c.message_id: c for c in await claim(db, lease_seconds=0.2)}
    await asyncio.sleep(0.3)
    retaken = await claim(db, limit=1)  # b's lease expired and another worker took it... or a's
    assert len(retaken) == 1

    async with db.session() as session:
        released = await release_claims(session, [claims[a], claims[b]])
        await session.commit()
    assert released == 1  # only the one nobody took over
    untouched = retaken[0].message_id
    other = b if untouched == a else a
    assert (await store.message(other)).body_attempts == 0
    assert (await store.message(other)).body_locked_until is None
    assert (await store.message(untouched)).body_attempts == 2
    assert (await store.message(untouched)).body_locked_until is not None


@pytest.mark.asyncio
async def test_concurrent_claims_never_lease_a_row_twice(
    db: Database, store: Store, make_tenant: Callable[..., Awaitable[Tenant]]
) -> None:
    tenants = [await make_tenant(f"T{i}") for i in range(3)]
    for tenant in tenants:
        for _ in range(20):
            await store.add_pending(tenant)

    rounds = await asyncio.gather(*(claim(db, limit=4, per_org_cap=3) for _ in range(12)))
    claimed = [c for batch in rounds for c in batch]
    assert len(claimed) == len({c.message_id for c in claimed})
    assert all(n <= 3 for n in Counter(c.organization_id for c in claimed).values())

    # Racing claims may leave an org short on PostgreSQL (both saw the same free slot and
    # one skipped the other's locked row); the next round tops it up, never beyond the cap.
    claimed += await claim(db, limit=12, per_org_cap=3)
    assert len(claimed) == len({c.message_id for c in claimed})
    assert Counter(c.organization_id for c in claimed) == {t.org_id: 3 for t in tenants}
