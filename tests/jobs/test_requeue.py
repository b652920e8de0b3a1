"""`failed` is not forever: requeue_failed_bodies and POST /api/messages/bodies/retry."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy import func, select

from loquent.config import Settings
from loquent.contacts.models import Contact
from loquent.db import Database
from loquent.jobs.worker import Worker
from loquent.messaging import service
from loquent.messaging.models import Message
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.realtime.log import commit
from loquent.realtime.notifier import Notifier
from tests.conftest import running_stack

from .conftest import SimControl, Store, Tenant

pytestmark = pytest.mark.timeout(90)

MakeTenant = Callable[..., Awaitable[Tenant]]
MakeWorker = Callable[..., Awaitable[Worker]]


async def body_states(db: Database, org_id: int) -> dict[str, int]:
    async with db.reader() as session:
        rows = await session.execute(
            select(Message.body_state, func.count())
            .where(Message.organization_id == org_id)
            .group_by(Message.body_state)
        )
        return {state: int(n) for state, n in rows.all()}


async def wait_for(db: Database, org_id: int, expected: dict[str, int], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await body_states(db, org_id)) != expected:
        assert loop.time() < deadline, got
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_requeued_bodies_start_over_and_arrive(
    sim: SimControl,
    db: Database,
    notifier: Notifier,
    store: Store,
    settings: Settings,
    make_tenant: MakeTenant,
    make_worker: MakeWorker,
) -> None:
    tenant = await make_tenant("Acme")
    other = await make_tenant("Other")
    ids = [
        await store.add_pending(tenant, sim.seed_message(tenant.account_sid, body=f"b{i}"))
        for i in range(3)
    ]
    other_id = await store.add_pending(other, sim.seed_message(other.account_sid, body="o"))
    rule = sim.fault("/Messages/SM", status=503)
    worker = await make_worker(settings.model_copy(update={"enrich_deadline_seconds": 0.5}))
    assert await worker.drain(20, include_scheduled=True)
    assert await body_states(db, tenant.org_id) == {"failed": 3}
    assert (await store.message(other_id)).body_state == "failed"

    httpx.delete(f"{sim.url}/_sim/faults/{rule['id']}").raise_for_status()
    async with db.session() as session:
        assert await service.count_bodies(session, tenant.org_id) == (0, 3)
        assert await service.requeue_failed_bodies(session, tenant.org_id) == 3
        assert await service.count_bodies(session, tenant.org_id) == (3, 0)
        await commit(session, notifier)  # wakes the worker

    assert await worker.drain(10, include_scheduled=True)
    for i, message_id in enumerate(ids):
        message = await store.message(message_id)
        assert (message.body, message.body_state, message.body_error) == (f"b{i}", "ready", None)
        assert message.body_attempts == 1  # counting started over
    # Another organization's failed bodies are its own business.
    assert (await store.message(other_id)).body_state == "failed"
    async with db.session() as session:
        assert await service.requeue_failed_bodies(session, tenant.org_id) == 0
        await session.commit()


@dataclass
class Member:
    token: str


async def add_member(db: Database, org_id: int, role: str) -> Member:
    async with db.session() as session:
        user = await orgs.get_or_create_user(session, f"{secrets.token_hex(4)}@example.com")
        await orgs.ensure_member(session, user, org_id, role)
        token = await orgs.create_api_token(session, user, org_id)
        await session.commit()
    return Member(token)


@pytest.mark.asyncio
async def test_owner_retries_failed_bodies_over_the_api_and_members_may_not(
    database_url: str, sim: SimControl
) -> None:
    account = sim.create_account()
    async with running_stack(
        database_url,
        twilio_api_base=sim.url,
        run_worker=True,
        worker_poll_seconds=0.25,
        enrich_backoff_base_seconds=0.05,
        enrich_backoff_max_seconds=0.2,
        enrich_deadline_seconds=0.5,
    ) as stack:
        box = SecretBox(stack.settings.secret_keys)
        async with stack.db.session() as session:
            org = await orgs.create_organization(
                session,
                box,
                name="Retry Co",
                twilio_account_sid=account["sid"],
                twilio_auth_token=account["auth_token"],
            )
            contact = Contact(organization_id=org.id, source="external_sms")
            session.add(contact)
            await session.commit()
            tenant = Tenant(org.id, contact.id, account["sid"], account["auth_token"])
        owner = await add_member(stack.db, tenant.org_id, "owner")
        member = await add_member(stack.db, tenant.org_id, "member")
        store = Store(stack.db)
        rule = sim.fault(f"/Accounts/{account['sid']}/Messages/", status=500)
        for i in range(4):
            await store.add_pending(tenant, sim.seed_message(account["sid"], body=f"t{i}"))
        await wait_for(stack.db, tenant.org_id, {"failed": 4}, timeout=20)

        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:

            def auth(who: Member) -> dict[str, str]:
                return {"Authorization": f"Bearer {who.token}"}

            view = (await http.get("/api/settings", headers=auth(member))).json()
            assert view["bodies"] == {"pending": 0, "failed": 4}

            refused = await http.post("/api/messages/bodies/retry", headers=auth(member))
            assert refused.status_code == 403
            assert refused.json()["error"]["code"] == "forbidden"
            assert await body_states(stack.db, tenant.org_id) == {"failed": 4}  # nothing written

            anonymous = await http.post("/api/messages/bodies/retry")
            assert anonymous.status_code == 401

            httpx.delete(f"{sim.url}/_sim/faults/{rule['id']}").raise_for_status()
            done = await http.post("/api/messages/bodies/retry", headers=auth(owner))
            assert (done.status_code, done.json()) == (200, {"requeued": 4})
            await wait_for(stack.db, tenant.org_id, {"ready": 4}, timeout=20)

            view = (await http.get("/api/settings", headers=auth(owner))).json()
            assert view["bodies"] == {"pending": 0, "failed": 0}
            again = await http.post("/api/messages/bodies/retry", headers=auth(owner))
            assert again.json() == {"requeued": 0}
