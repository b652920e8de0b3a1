"""The worker loop: durability across restarts, wake-ups, outages, shutdown, housekeeping."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import timedelta

import pytest
from sqlalchemy import select

from loquent.config import Settings
from loquent.db import Base, Database, utcnow
from loquent.jobs.worker import Worker
from loquent.orgs.crypto import SecretBox
from loquent.realtime.log import commit, wake_jobs_after_commit
from loquent.realtime.models import EventLogEntry
from loquent.realtime.notifier import Notifier

from .conftest import SimControl, Store, Tenant

pytestmark = pytest.mark.timeout(60)

MakeTenant = Callable[..., Awaitable[Tenant]]
MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.mark.asyncio
async def test_worker_started_on_a_backlog_fetches_everything(
    sim: SimControl, store: Store, make_tenant: MakeTenant, make_worker: MakeWorker
) -> None:
    """What a crash or restart left behind: due rows, and rows under a dead worker's lease."""
    tenants = [await make_tenant("A"), await make_tenant("B")]
    ids = [
        await store.add_pending(tenant, sim.seed_message(tenant.account_sid, body=f"m{i}"))
        for i in range(8)
        for tenant in tenants
    ]
    orphan = tenants[0]
    orphan_id = await store.add_pending(
        orphan, sim.seed_message(orphan.account_sid, body="orphan"), locked_for=-1
    )

    worker = await make_worker()
    assert await worker.drain(15)

    for message_id in [*ids, orphan_id]:
        assert (await store.message(message_id)).body_state == "ready"
    assert worker.outcomes["ready"] == len(ids) + 1


@pytest.mark.asyncio
async def test_new_work_wakes_an_idle_worker_at_once(
    sim: SimControl,
    db: Database,
    notifier: Notifier,
    store: Store,
    settings: Settings,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    await make_worker(settings.model_copy(update={"worker_poll_seconds": 30.0}))
    await asyncio.sleep(0.2)  # idle, sleeping on its poll interval

    message_id = await store.add_pending(tenant, sim.seed_message(tenant.account_sid, body="hi"))
    async with db.session() as session:  # what capture does after creating a pending row
        wake_jobs_after_commit(session)
        await commit(session, notifier)

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3.0
    while (await store.message(message_id)).body_state == "pending":
        assert loop.time() < deadline, "the wake-up did not reach the worker"
        await asyncio.sleep(0.02)


@pytest.mark.asyncio
async def test_scheduled_retry_runs_when_due_not_at_the_next_poll(
    sim: SimControl,
    store: Store,
    settings: Settings,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant()
    message_id = await store.add_pending(
        tenant, sim.seed_message(tenant.account_sid, body="later"), due_in=0.5
    )
    worker = await make_worker(settings.model_copy(update={"worker_poll_seconds": 30.0}))
    assert await worker.drain(5, include_scheduled=True)
    assert (await store.message(message_id)).body == "later"


@pytest.mark.asyncio
async def test_two_workers_share_the_queue_without_double_fetching(
    sim: SimControl, store: Store, make_tenant: MakeTenant, make_worker: MakeWorker
) -> None:
    tenants = [await make_tenant(f"T{i}") for i in range(3)]
    sids = []
    for tenant in tenants:
        for i in range(5):
            sid = sim.seed_message(tenant.account_sid, body=f"b{i}")
            sids.append(sid)
            await store.add_pending(tenant, sid)

    first, second = await make_worker(), await make_worker()
    assert await first.drain(15)
    assert await second.drain(15)

    fetched = [r["path"] for r in sim.requests("/Messages/SM")]
    assert sorted(fetched) == sorted(set(fetched))  # every message fetched exactly once
    assert len(fetched) == len(sids)
    assert first.outcomes["ready"] + second.outcomes["ready"] == len(sids)


@pytest.mark.asyncio
async def test_worker_survives_the_database_being_unavailable(
    sim: SimControl,
    tmp_path: object,
    notifier: Notifier,
    settings: Settings,
    box: SecretBox,
    make_tenant: MakeTenant,
    store: Store,
    db: Database,
) -> None:
    # A database the worker can open but not use yet: every claim fails ("no such table").
    broken_url = f"sqlite+aiosqlite:///{tmp_path}/later.db"
    late_db = Database(broken_url)
    worker = Worker(db=late_db, notifier=notifier, settings=settings, box=box)
    await worker.start()
    try:
        await asyncio.sleep(0.6)
        assert worker.running  # logged and retried, not crashed

        async with late_db.engine.begin() as conn:  # the database "comes back"
            await conn.run_sync(Base.metadata.create_all)
        late_store = type(store)(late_db)
        late = await _tenant_in(late_db, box, sim)
        message_id = await late_store.add_pending(
            late, sim.seed_message(late.account_sid, body="back")
        )
        worker.wake()
        assert await worker.drain(10)
        assert (await late_store.message(message_id)).body == "back"
    finally:
        await worker.stop(grace=1.0)
        await late_db.dispose()


async def _tenant_in(db: Database, box: SecretBox, sim: SimControl) -> Tenant:
    from loquent.contacts.models import Contact
    from loquent.orgs.models import Organization

    account = sim.create_account()
    async with db.session() as session:
        org = Organization(
            name="Late",
            twilio_account_sid=account["sid"],
            twilio_auth_token=box.encrypt(account["auth_token"]),
        )
        session.add(org)
        await session.flush()
        contact = Contact(organization_id=org.id, source="external_sms")
        session.add(contact)
        await session.flush()
        tenant = Tenant(org.id, contact.id, account["sid"], account["auth_token"])
        await session.commit()
    return tenant


@pytest.mark.asyncio
async def test_stop_cancels_slow_jobs_and_hands_their_leases_back(
    sim: SimControl,
    notifier: Notifier,
    settings: Settings,
    box: SecretBox,
    db: Database,
    store: Store,
    make_tenant: MakeTenant,
) -> None:
    tenant = await make_tenant()
    sid = sim.seed_message(tenant.account_sid, body="slow")
    message_id = await store.add_pending(tenant, sid)
    sim.fault(f"{sid}.json", delay_ms=3000)
    patient = settings.model_copy(update={"twilio_timeout_seconds": 10.0})

    worker = Worker(db=db, notifier=notifier, settings=patient, box=box)
    await worker.start()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 3
    while worker.in_flight == 0:
        assert loop.time() < deadline
        await asyncio.sleep(0.02)

    started = loop.time()
    await worker.stop(grace=0.2)
    assert loop.time() - started < 2.0
    message = await store.message(message_id)
    assert message.body_state == "pending"
    assert message.body_locked_until is None  # another worker may take it right away
    assert message.body_attempts == 0


@pytest.mark.asyncio
async def test_stop_lets_quick_jobs_finish(
    sim: SimControl,
    notifier: Notifier,
    settings: Settings,
    box: SecretBox,
    db: Database,
    store: Store,
    make_tenant: MakeTenant,
) -> None:
    tenant = await make_tenant()
    sid = sim.seed_message(tenant.account_sid, body="quick enough")
    message_id = await store.add_pending(tenant, sid)
    sim.fault(f"{sid}.json", delay_ms=200)

    worker = Worker(db=db, notifier=notifier, settings=settings, box=box)
    await worker.start()
    while worker.in_flight == 0:
        await asyncio.sleep(0.01)
    await worker.stop(grace=5.0)
    assert (await store.message(message_id)).body == "quick enough"


@pytest.mark.asyncio
async def test_worker_prunes_the_event_log(
    db: Database, make_tenant: MakeTenant, make_worker: MakeWorker
) -> None:
    tenant = await make_tenant()
    old = utcnow() - timedelta(hours=2)  # retention in these tests: 1 hour
    async with db.session() as session:
        for _ in range(3):
            session.add(
                EventLogEntry(organization_id=tenant.org_id, type="x", payload={}, created_at=old)
            )
        session.add(EventLogEntry(organization_id=tenant.org_id, type="fresh", payload={}))
        await session.commit()

    worker = await make_worker()
    assert await worker.drain(5)
    await asyncio.sleep(0.1)
    async with db.reader() as session:
        types = (await session.execute(select(EventLogEntry.type))).scalars().all()
        assert list(types) == ["fresh"]
