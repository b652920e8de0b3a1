"""Campaign-scale enrichment: thousands of pending bodies of one account fetched by listing
Messages.json over real HTTP to the simulator, on SQLite and PostgreSQL."""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from loquent.config import Settings
from loquent.db import Database, utcnow
from loquent.jobs.worker import Worker
from loquent.messaging.events import EVT_MESSAGE_STATUS
from loquent.messaging.models import Message, MessageMedia
from loquent.realtime.models import EventLogEntry

from .conftest import CUSTOMER, LINE, SimControl, Store, Tenant

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """A page of 1,000 messages is a bigger answer than one message: on a loaded machine it
    can take longer than the 0.5 s the other job tests allow a call."""
    return settings.model_copy(
        update={"twilio_timeout_seconds": 15.0, "enrich_deadline_seconds": 120.0}
    )


MakeTenant = Callable[..., Awaitable[Tenant]]
MakeWorker = Callable[..., Awaitable[Worker]]


def seed(
    sim: SimControl,
    tenant: Tenant,
    bodies: list[str],
    *,
    media: bool = False,
    date_created: datetime | None = None,
) -> list[str]:
    """Messages on the simulator's account, as a campaign leaves them (no events)."""
    messages: list[dict[str, Any]] = []
    for body in bodies:
        message: dict[str, Any] = {"from": LINE, "to": CUSTOMER, "body": body}
        if media:
            message["media_urls"] = ["https://media.example/cat.jpg"]
        if date_created is not None:
            message["date_created"] = date_created.isoformat()
        messages.append(message)
    result = sim._call(
        "POST", f"/accounts/{tenant.account_sid}/messages", json={"messages": messages}
    )
    return [str(sid) for sid in result["sids"]]


async def add_pending_many(db: Database, tenant: Tenant, sids: list[str]) -> list[int]:
    """Pending rows for ``sids`` in one transaction (capture leaves them like this)."""
    now = utcnow()
    rows = [
        Message(
            organization_id=tenant.org_id,
            contact_id=tenant.contact_id,
            direction="outbound",
            from_address=LINE,
            to_address=CUSTOMER,
            body=None,
            status="sent",
            source="external",
            external_id=sid,
            created_at=now,
            updated_at=now,
            body_state="pending",
            body_attempts=0,
            body_next_attempt_at=now,
        )
        for sid in sids
    ]
    async with db.session() as session:
        session.add_all(rows)
        await session.commit()
        return [row.id for row in rows]


async def body_states(db: Database, org_id: int) -> Counter[str]:
    async with db.reader() as session:
        result = await session.execute(
            select(Message.body_state, func.count())
            .where(Message.organization_id == org_id)
            .group_by(Message.body_state)
        )
        return Counter({state: n for state, n in result.all()})


async def status_events_per_message(db: Database, org_id: int) -> Counter[int]:
    async with db.reader() as session:
        result = await session.execute(
            select(EventLogEntry.payload).where(
                EventLogEntry.organization_id == org_id, EventLogEntry.type == EVT_MESSAGE_STATUS
            )
        )
        return Counter(int(payload["id"]) for payload in result.scalars())


def list_calls(sim: SimControl, tenant: Tenant) -> list[dict[str, Any]]:
    return [
        r
        for r in sim.requests(f"/Accounts/{tenant.account_sid}/Messages.json")
        if r["method"] == "GET" and r["path"].endswith("/Messages.json")
    ]


def single_gets(sim: SimControl, tenant: Tenant) -> list[str]:
    """SIDs fetched one by one (``GET …/Messages/{sid}.json``)."""
    prefix = f"/2010-04-01/Accounts/{tenant.account_sid}/Messages/"
    return [
        r["path"][len(prefix) : -len(".json")]
        for r in sim.requests(prefix)
        if r["method"] == "GET" and r["path"].endswith(".json") and "/Media" not in r["path"]
    ]


@pytest.mark.asyncio
async def test_two_thousand_bodies_arrive_through_two_list_calls(
    sim: SimControl,
    db: Database,
    store: Store,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    bodies = [f"Campaign text {i}" for i in range(2000)]
    sids = seed(sim, tenant, bodies)
    ids = await add_pending_many(db, tenant, sids)

    worker = await make_worker()
    assert await worker.drain(240, include_scheduled=True)

    assert await body_states(db, tenant.org_id) == {"ready": 2000}
    for i in (0, 777, 1999):
        message = await store.message(ids[i])
        assert message.body == bodies[i]
        assert message.status == "delivered"
    # Two pages of 1,000 instead of 2,000 GETs; every page filtered to the capture's days.
    calls = list_calls(sim, tenant)
    assert len(calls) == 2
    assert "DateSent%3E=" in calls[0]["query"] or "DateSent>=" in calls[0]["query"]
    assert "PageSize=1000" in calls[0]["query"]
    assert single_gets(sim, tenant) == []
    # One message.status event per body, each carrying it.
    events = await status_events_per_message(db, tenant.org_id)
    assert set(events) == set(ids)
    assert set(events.values()) == {1}


@pytest.mark.asyncio
async def test_what_the_listing_does_not_return_is_fetched_one_by_one(
    sim: SimControl,
    db: Database,
    store: Store,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    listed = seed(sim, tenant, [f"listed {i}" for i in range(300)])
    mms = seed(sim, tenant, [f"picture {i}" for i in range(5)], media=True)
    # Sent three days before we captured them: outside the listed days.
    old = seed(
        sim, tenant, [f"old {i}" for i in range(20)], date_created=utcnow() - timedelta(days=3)
    )
    # Not on the account at all: Twilio answers 404 one by one, then the body fails.
    missing = ["SM" + secrets.token_hex(16) for _ in range(3)]
    ids = await add_pending_many(db, tenant, listed + mms + old + missing)

    worker = await make_worker()
    assert await worker.drain(240, include_scheduled=True)

    assert await body_states(db, tenant.org_id) == {"ready": 325, "failed": 3}
    old_message = await store.message(ids[305])
    assert old_message.body == "old 0"
    got = Counter(single_gets(sim, tenant))
    # Only the SIDs the listing did not return went one by one (404s: three tries each).
    assert set(got) == set(old) | set(missing)
    assert all(got[sid] == 1 for sid in old)
    assert all(got[sid] == 3 for sid in missing)
    # MMS: listed, plus the Media call each; stored with their media.
    media_calls = [r for r in sim.requests("/Media.json") if r["method"] == "GET"]
    assert sorted(r["path"].split("/")[-2] for r in media_calls) == sorted(mms)
    async with db.reader() as session:
        stored_media = await session.scalar(select(func.count()).select_from(MessageMedia))
    assert stored_media == 5
    assert len(list_calls(sim, tenant)) == 1


@pytest.mark.asyncio
async def test_a_rate_limited_list_call_waits_retry_after(
    sim: SimControl,
    db: Database,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    sids = seed(sim, tenant, [f"text {i}" for i in range(150)])
    ids = await add_pending_many(db, tenant, sids)
    sim.fault(r"/Messages\.json$", method="GET", status=429, count=1, retry_after=2)

    worker = await make_worker()
    assert await worker.drain(120, include_scheduled=True)

    assert await body_states(db, tenant.org_id) == {"ready": 150}
    calls = list_calls(sim, tenant)
    assert [c["status"] for c in calls] == [429, 200]
    first, second = (datetime.fromisoformat(c["at"].replace("Z", "+00:00")) for c in calls)
    assert second - first >= timedelta(seconds=2)
    assert single_gets(sim, tenant) == []
    # The 429 was handed back uncounted: one attempt per body.
    async with db.reader() as session:
        attempts = set(
            (
                await session.execute(select(Message.body_attempts).where(Message.id.in_(ids)))
            ).scalars()
        )
    assert attempts == {1}


@pytest.mark.asyncio
async def test_credentials_rejected_on_the_list_call_pause_the_organization(
    sim: SimControl,
    db: Database,
    store: Store,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    sids = seed(sim, tenant, [f"text {i}" for i in range(150)])
    ids = await add_pending_many(db, tenant, sids)
    sim.fault(r"/Messages\.json$", method="GET", status=401, count=1)

    worker = await make_worker()
    assert await worker.drain(60)  # nothing due any more: the organization is paused

    org = await store.org(tenant.org_id)
    assert org.twilio_credentials_valid is False
    assert await body_states(db, tenant.org_id) == {"pending": 150}
    message = await store.message(ids[0])
    assert message.body_attempts == 0
    assert message.body_locked_until is None
    assert message.body_pending_since is None  # the deadline restarts at the reconnect
    assert len(list_calls(sim, tenant)) == 1
    assert single_gets(sim, tenant) == []


@pytest.mark.asyncio
async def test_a_failing_list_call_is_retried_under_the_retry_policy(
    sim: SimControl,
    db: Database,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    sids = seed(sim, tenant, [f"text {i}" for i in range(150)])
    await add_pending_many(db, tenant, sids)
    sim.fault(r"/Messages\.json$", method="GET", status=503, count=2)

    worker = await make_worker()
    assert await worker.drain(120, include_scheduled=True)

    assert await body_states(db, tenant.org_id) == {"ready": 150}
    assert [c["status"] for c in list_calls(sim, tenant)] == [503, 503, 200]
    assert single_gets(sim, tenant) == []


@pytest.mark.asyncio
async def test_two_workers_never_store_one_body_twice(
    sim: SimControl,
    db: Database,
    settings: Settings,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenants = [await make_tenant(f"Org {i}") for i in range(2)]
    ids: list[int] = []
    for tenant in tenants:
        ids += await add_pending_many(
            db, tenant, seed(sim, tenant, [f"text {i}" for i in range(600)])
        )
    # Answers twice as slow as a lease: the runs must keep their leases.
    sim.fault(r"/Messages\.json$", method="GET", delay_ms=6000)
    short = settings.model_copy(
        update={"worker_lease_seconds": 3.0, "twilio_timeout_seconds": 20.0}
    )
    first = await make_worker(short)
    second = await make_worker(short)
    for worker in (first, second):
        assert await worker.drain(240, include_scheduled=True)

    for tenant in tenants:
        assert await body_states(db, tenant.org_id) == {"ready": 600}
        # Normally one; a run that lost its leases on a starved machine may list again, but
        # it stores nothing twice.
        assert len(list_calls(sim, tenant)) >= 1
        assert single_gets(sim, tenant) == []
        events = await status_events_per_message(db, tenant.org_id)
        assert set(events.values()) == {1}
    assert len(ids) == 1200
