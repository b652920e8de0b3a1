"""The whole pipeline against the simulator over real HTTP: capture → worker → body → SSE."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

import pytest

from loquent.messaging.models import Message
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.orgs.service import set_twilio_credentials
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from tests.conftest import Stack, running_stack
from tests.test_realtime import sse

LINE = "+14155550100"
CUSTOMER = "+14155550199"


@pytest.fixture
async def flow(database_url: str) -> AsyncIterator[tuple[Stack, Sim]]:
    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    try:
        async with running_stack(
            database_url,
            run_worker=True,
            twilio_api_base=sim_server.url,
            twilio_events_api_base=sim_server.url,
        ) as stack:
            await sim.call(
                "POST",
                "/accounts",
                {"sid": stack.org.account_sid, "auth_token": stack.org.auth_token},
            )
            for number in stack.org.lines:
                await sim.call(
                    "POST", f"/accounts/{stack.org.account_sid}/numbers", {"phone_number": number}
                )
            await sim.call(
                "POST",
                f"/accounts/{stack.org.account_sid}/sinks",
                {"destination": f"{stack.url}/twilio/events"},
            )
            stack.sim_url = sim_server.url
            yield stack, sim
    finally:
        await asyncio.to_thread(sim_server.stop)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def message(stack: Stack, sid: str) -> Message | None:
    rows = await stack.rows(Message, Message.external_id == sid)
    return rows[0] if rows else None


async def settled(stack: Stack, sid: str) -> Message:
    async def done() -> Message | None:
        row = await message(stack, sid)
        return row if row is not None and row.body_state != "pending" else None

    return await eventually(done)


async def test_console_sms_arrives_then_gets_its_body_live(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    async with sse(stack, stack.org) as stream:
        sent = await sim.console_sms(
            stack.org.account_sid, **{"from": LINE, "to": CUSTOMER, "body": "Sent from the console"}
        )
        sid = sent["sid"]
        new = await stream.next()
        assert new["event"] == "messaging.message.new"
        assert new["json"]["payload"]["external_id"] == sid
        assert new["json"]["payload"]["source"] == "external"
        # Status events and the fetched body race each other; the feed converges on both.
        while True:
            frame = await stream.next()
            assert frame["event"] == "messaging.message.status"
            payload = frame["json"]["payload"]
            if payload["body"] == "Sent from the console" and payload["status"] == "delivered":
                break
    row = await settled(stack, sid)
    assert (row.body, row.body_state, row.status) == ("Sent from the console", "ready", "delivered")
    assert len(await sim.fetches(sid)) == 1
    metrics = (await stack.get("/metrics")).text
    assert 'loquent_enrichment_total{outcome="ready"}' in metrics
    assert 'loquent_twilio_events_total{outcome="created",type="queued"}' in metrics


async def test_fifty_concurrent_events_make_one_row_one_new_event_one_fetch(
    flow: tuple[Stack, Sim],
) -> None:
    from loquent.realtime.models import EventLogEntry

    stack, sim = flow
    sent = await sim.console_sms(
        stack.org.account_sid, deliver=False, **{"from": LINE, "to": CUSTOMER, "body": "raced"}
    )
    sid = sent["sid"]
    result = await sim.message_events(
        stack.org.account_sid,
        sid,
        statuses=["sent", "delivered"],
        duplicate=25,
        concurrent=True,
        shuffle=True,
    )
    codes = [d["status_code"] for d in result["deliveries"]]
    assert len(codes) == 50
    assert set(codes) == {200}
    row = await settled(stack, sid)
    assert (row.status, row.body) == ("delivered", "raced")
    assert await stack.count(Message) == 1
    assert await stack.count(EventLogEntry, EventLogEntry.type == "messaging.message.new") == 1
    await asyncio.sleep(0.5)  # give a hypothetical second fetch the chance to show up
    assert len(await sim.fetches(sid)) == 1


async def test_429_waits_for_retry_after_then_fetches(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await sim.add_fault(
        path_regex=r"/Messages/SM[0-9a-f]+\.json$", method="GET", status=429, count=1, retry_after=1
    )
    sid = (
        await sim.console_sms(
            stack.org.account_sid,
            statuses=["sent"],
            **{"from": LINE, "to": CUSTOMER, "body": "after a pause"},
        )
    )["sid"]
    row = await settled(stack, sid)
    assert (row.body_state, row.body) == ("ready", "after a pause")
    fetches = await sim.fetches(sid)
    assert [f["status"] for f in fetches] == [429, 200]
    gap = datetime.fromisoformat(fetches[1]["at"]) - datetime.fromisoformat(fetches[0]["at"])
    assert gap.total_seconds() >= 0.95


async def test_three_500s_then_success(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await sim.add_fault(
        path_regex=r"/Messages/SM[0-9a-f]+\.json$", method="GET", status=500, count=3
    )
    sid = (
        await sim.console_sms(
            stack.org.account_sid,
            statuses=["sent"],
            **{"from": LINE, "to": CUSTOMER, "body": "persistence"},
        )
    )["sid"]
    row = await settled(stack, sid)
    assert (row.body_state, row.body) == ("ready", "persistence")
    assert [f["status"] for f in await sim.fetches(sid)] == [500, 500, 500, 200]


async def test_a_slow_answer_times_out_and_is_retried(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    # The app's Twilio timeout is 2 s in tests.
    fault = await sim.add_fault(
        path_regex=r"/Messages/SM[0-9a-f]+\.json$", method="GET", delay_ms=3500, count=1
    )
    started = asyncio.get_running_loop().time()
    sid = (
        await sim.console_sms(
            stack.org.account_sid,
            statuses=["sent"],
            **{"from": LINE, "to": CUSTOMER, "body": "slowly"},
        )
    )["sid"]
    row = await settled(stack, sid)
    assert (row.body_state, row.body) == ("ready", "slowly")
    [used] = [f for f in await sim.call("GET", "/faults") if f["id"] == fault["id"]]
    assert used["hits"] == 1  # the slow answer was abandoned and the next attempt succeeded
    assert asyncio.get_running_loop().time() - started >= 2.0


async def test_404_ends_failed_and_the_feed_is_told(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await sim.add_fault(path_regex=r"/Messages/SM[0-9a-f]+\.json$", method="GET", status=404)
    async with sse(stack, stack.org) as stream:
        sid = (
            await sim.console_sms(
                stack.org.account_sid,
                statuses=["sent"],
                **{"from": LINE, "to": CUSTOMER, "body": "lost"},
            )
        )["sid"]
        row = await settled(stack, sid)
        assert (row.body_state, row.body) == ("failed", None)
        frames = [await stream.next() for _ in range(2)]
        assert frames[-1]["json"]["payload"]["body_state"] == "failed"
    assert len(await sim.fetches(sid)) == stack.settings.enrich_not_found_attempts


async def test_401_pauses_the_org_until_it_reconnects(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    rotated = await sim.call("POST", f"/accounts/{stack.org.account_sid}/rotate-token", {})
    sid = (
        await sim.console_sms(
            stack.org.account_sid,
            statuses=["sent"],
            deliver=False,
            **{"from": LINE, "to": CUSTOMER, "body": "after reconnecting"},
        )
    )["sid"]
    # The sink still signs with the old token from the app's point of view: post the event
    # ourselves with the token the app knows.
    from tests.support.twilio import status_event

    await stack.post_events(
        [status_event("sent", sid=sid, account=stack.org.account_sid, from_=LINE, to=CUSTOMER)]
    )

    async def flagged() -> bool:
        [org] = await stack.rows(Organization, Organization.id == stack.org.id)
        return not org.twilio_credentials_valid

    await eventually(flagged)
    fetches_while_paused = len(await sim.fetches(sid))
    await asyncio.sleep(1.5)
    row = await message(stack, sid)
    assert row is not None
    assert row.body_state == "pending"
    assert len(await sim.fetches(sid)) == fetches_while_paused  # paused: no more calls

    async with stack.db.session() as session:  # the owner reconnects with the new token
        org = await session.get(Organization, stack.org.id)
        assert org is not None
        await set_twilio_credentials(
            session,
            SecretBox(stack.settings.secret_keys),
            org,
            account_sid=stack.org.account_sid,
            auth_token=rotated["auth_token"],
        )
        await session.commit()
    row = await settled(stack, sid)
    assert (row.body_state, row.body) == ("ready", "after reconnecting")


async def test_inbound_sms_through_the_sink(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    sent = await sim.call(
        "POST",
        f"/accounts/{stack.org.account_sid}/inbound-sms",
        {"from": CUSTOMER, "to": LINE, "body": "hi there " + secrets.token_hex(2), "wait": True},
    )
    row = await eventually(lambda: message(stack, sent["sid"]))
    assert (row.direction, row.source, row.status, row.body_state) == (
        "inbound",
        "loquent",
        "received",
        "ready",
    )
    assert row.body.startswith("hi there")


async def test_shared_key_signatures_are_accepted_when_configured(flow: tuple[Stack, Sim]) -> None:
    from loquent.orgs.service import set_webhook_shared_key

    stack, sim = flow
    key = await sim.call("PUT", f"/accounts/{stack.org.account_sid}/signing-key", {})
    refused = await sim.console_sms(
        stack.org.account_sid,
        statuses=["sent"],
        **{"from": LINE, "to": CUSTOMER, "body": "before the key"},
    )
    assert [d["status_code"] for d in refused["deliveries"]] == [403]

    async with stack.db.session() as session:
        org = await session.get(Organization, stack.org.id)
        assert org is not None
        await set_webhook_shared_key(
            session, SecretBox(stack.settings.secret_keys), org, key["secret"]
        )
        await session.commit()
    accepted = await sim.console_sms(
        stack.org.account_sid,
        statuses=["sent"],
        **{"from": LINE, "to": CUSTOMER, "body": "with the key"},
    )
    assert [d["status_code"] for d in accepted["deliveries"]] == [200]
    row = await settled(stack, accepted["sid"])
    assert row.body == "with the key"
