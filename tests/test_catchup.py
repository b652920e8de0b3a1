"""Catch-up after downtime: what Twilio saw while the app was down (longer than its 4-hour
webhook retries) is recorded at start, exactly once, without a webhook and without a
message.new per message; and only one catch-up per organization runs at a time."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from loquent.app import create_app
from loquent.contacts.models import Contact
from loquent.db import Database, utcnow
from loquent.messaging.models import Message
from loquent.realtime.models import EventLogEntry
from loquent.servers import ServerThread, free_port
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from loquent.twilio.catchup import schedule_catchups
from loquent.twilio.history import claim_runs
from loquent.twilio.import_models import MessageImport
from tests.conftest import make_settings, running_stack
from tests.test_history_import import connect_sim, eventually, traffic
from tests.test_realtime import sse


async def test_messages_sent_while_the_app_was_down_arrive_once_at_start(
    database_url: str,
) -> None:
    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    base = {
        "twilio_api_base": sim_server.url,
        "twilio_events_api_base": sim_server.url,
        "catchup_interval_seconds": 0,  # disabled: nothing runs while we set the scene
    }
    try:
        # The app is up and captures a text live; six hours later it is still down.
        async with running_stack(database_url, **base) as stack:
            org = stack.org
            await connect_sim(sim, stack, org)
            live = await sim.console_sms(
                org.account_sid, statuses=["sent"], **{"from": org.lines[0], "to": "+14155550142"}
            )
            assert await stack.count(Message) == 1
            async with stack.db.session() as session:
                await session.execute(
                    update(Message).values(
                        created_at=utcnow() - timedelta(hours=6),
                        body="before the outage",
                        body_state="ready",
                        body_next_attempt_at=None,
                    )
                )
                await session.execute(
                    update(Contact).values(last_contacted_at=utcnow() - timedelta(hours=6))
                )
                await session.commit()
            assert await stack.count(MessageImport) == 0  # 0 disables catch-up
        down_since = datetime.now(UTC) - timedelta(hours=5)
        made = await traffic(
            sim, org, 50, inbound_share=0.4, counterparts=20, spacing_ms=6 * 60_000,
            start=down_since.isoformat(), return_sids=True,
        )  # fmt: skip
        sids: list[str] = made["sids"]

        # Started again, with catch-up on: once at start.
        port = free_port()
        settings = make_settings(
            database_url, port, **{**base, "catchup_interval_seconds": 900, "run_worker": True}
        )
        server = ServerThread(create_app(settings), port=port)
        await asyncio.to_thread(server.start)
        stack.server, stack.url = server, server.url
        stack.db = Database(database_url)
        try:
            async with sse(stack, org, query="?after=0") as stream:

                async def all_there() -> bool:
                    return await stack.count(Message) == 51

                await eventually(all_there, timeout=60)
                seen: list[str] = []
                while True:
                    try:
                        seen.append((await stream.next(timeout=1.5))["event"])
                    except TimeoutError:
                        break
            # Over SSE: the replayed live text, then ONE event for the whole catch-up.
            assert seen == ["messaging.message.new", "twilio.catchup.finished"]
            rows = await stack.rows(Message, Message.external_id.in_(sids))
            assert sorted(r.external_id for r in rows) == sorted(sids)  # each exactly once
            by_direction = Counter((r.direction, r.source) for r in rows)
            assert by_direction == {("inbound", "loquent"): 20, ("outbound", "external"): 30}
            assert all(r.body and r.body_state == "ready" for r in rows)
            events = Counter(e.type for e in await stack.rows(EventLogEntry))
            assert events["messaging.message.new"] == 1  # the live capture only
            assert events["twilio.catchup.finished"] == 1
            [finished] = [
                e for e in await stack.rows(EventLogEntry) if e.type == "twilio.catchup.finished"
            ]
            assert finished.payload["imported"] == 50
            assert finished.payload["kind"] == "catchup"
            [run] = await stack.rows(MessageImport)
            assert run.state == "finished"
            # It started an hour before the newest known message, on that day's listing.
            assert run.since is not None
            assert abs((run.since - (utcnow() - timedelta(hours=7))).total_seconds()) < 120
            # No webhook was involved: the simulator delivered nothing for those messages.
            deliveries = await sim.call("GET", "/deliveries", account_sid=org.account_sid)
            delivered = {sid for d in deliveries for sid in d["message_sids"]}
            assert delivered == {live["sid"]}
            # The inbox shows them: the newest one's contact is on top.
            top = (await stack.get("/api/contacts?limit=1")).json()["items"][0]
            assert top["last_message"]["external_id"] == sids[-1]
        finally:
            await asyncio.to_thread(server.stop)
            await stack.db.dispose()
    finally:
        await asyncio.to_thread(sim_server.stop)


async def test_one_catchup_per_org_at_a_time_across_processes(database_url: str) -> None:
    async with running_stack(database_url, catchup_interval_seconds=0) as stack:
        first, second = Database(database_url), Database(database_url)
        try:
            now = utcnow()
            made = await asyncio.gather(
                *(
                    schedule_catchups(db, now=now, overlap_seconds=3600, min_gap_seconds=0)
                    for db in (first, second)
                )
            )
            assert sorted(made) == [0, 1]
            assert await stack.count(MessageImport) == 1
            # Still running: a later round schedules nothing more.
            assert (
                await schedule_catchups(first, now=now, overlap_seconds=3600, min_gap_seconds=0)
                == 0
            )

            async def claim(db: Database) -> list[Any]:
                async with db.session() as session:
                    claims = await claim_runs(session, now=utcnow(), lease_seconds=60, limit=5)
                    await session.commit()
                return claims

            claims = await asyncio.gather(claim(first), claim(second))
            assert sorted(len(c) for c in claims) == [0, 1]
            # An expired lease is claimable again, with a new fencing token.
            later = utcnow() + timedelta(seconds=61)
            async with second.session() as session:
                again = await claim_runs(session, now=later, lease_seconds=60, limit=5)
                await session.commit()
            taken = next(c for c in claims if c)[0]
            assert len(again) == 1
            assert again[0].token == taken.token + 1
        finally:
            await first.dispose()
            await second.dispose()


async def test_a_finished_catchup_requeues_bodies_that_failed_in_an_outage(
    database_url: str,
) -> None:
    """Failed bodies get another try once Twilio answers again; those Twilio answered 404
    for stay failed (they would be re-asked every interval forever)."""
    import httpx

    from loquent.orgs.crypto import SecretBox
    from loquent.realtime.notifier import build_notifier
    from loquent.twilio.history import SyncContext, run_import

    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    try:
        async with running_stack(
            database_url,
            twilio_api_base=sim_server.url,
            twilio_events_api_base=sim_server.url,
            catchup_interval_seconds=0,
        ) as stack:
            org = stack.org
            await connect_sim(sim, stack, org)
            async with stack.db.session() as session:
                contact = Contact(
                    organization_id=org.id, first_name="", last_name="", source="manual"
                )
                session.add(contact)
                await session.flush()
                for sid, not_found in (("SM" + "1" * 32, 0), ("SM" + "2" * 32, 4)):
                    session.add(
                        Message(
                            organization_id=org.id,
                            contact_id=contact.id,
                            direction="outbound",
                            from_address=org.lines[0],
                            to_address="+14155550142",
                            status="sent",
                            external_id=sid,
                            body_state="failed",
                            body_not_found=not_found,
                            created_at=utcnow() - timedelta(hours=6),
                        )
                    )
                await session.commit()
            made = await schedule_catchups(
                stack.db, now=utcnow(), overlap_seconds=3600, min_gap_seconds=0
            )
            assert made == 1
            async with stack.db.session() as session:
                [claim] = await claim_runs(session, now=utcnow(), lease_seconds=60, limit=5)
                await session.commit()
            async with httpx.AsyncClient() as http:
                ctx = SyncContext(
                    db=stack.db,
                    notifier=build_notifier(None),
                    settings=stack.settings,
                    box=SecretBox(stack.settings.secret_keys),
                    http=http,
                )
                await run_import(ctx, claim)
            states = {
                m.external_id: m.body_state
                for m in await stack.rows(Message, Message.organization_id == org.id)
            }
            assert states == {"SM" + "1" * 32: "pending", "SM" + "2" * 32: "failed"}
    finally:
        await asyncio.to_thread(sim_server.stop)
