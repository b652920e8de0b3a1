"""History import over real HTTP to the simulator: paging, exactly-once with live capture,
no message.new flood, errors (401, 5xx/429 retried then failed with the cursor kept), API
rules (owners only, one import per org, other orgs' imports invisible)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from loquent.contacts.models import Contact
from loquent.messaging.models import Message
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.realtime.models import EventLogEntry
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from loquent.twilio.import_models import MessageImport
from tests.conftest import Org, Stack, running_stack
from tests.test_realtime import sse

LINES = ["+14155550100", "+14155550101"]


async def connect_sim(sim: Sim, stack: Stack, org: Org) -> None:
    await sim.call("POST", "/accounts", {"sid": org.account_sid, "auth_token": org.auth_token})
    for number in org.lines:
        await sim.call("POST", f"/accounts/{org.account_sid}/numbers", {"phone_number": number})
    await sim.call(
        "POST", f"/accounts/{org.account_sid}/sinks", {"destination": f"{stack.url}/twilio/events"}
    )


@pytest.fixture
def overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
async def flow(database_url: str, overrides: dict[str, Any]) -> AsyncIterator[tuple[Stack, Sim]]:
    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    settings: dict[str, Any] = {
        "run_worker": True,
        "twilio_api_base": sim_server.url,
        "twilio_events_api_base": sim_server.url,
        "catchup_interval_seconds": 0,  # these tests are about the import alone
        "import_backoff_base_seconds": 0.05,
        "import_backoff_max_seconds": 0.2,
        "import_max_attempts": 3,
        **overrides,
    }
    try:
        async with running_stack(database_url, **settings) as stack:
            await connect_sim(sim, stack, stack.org)
            stack.sim_url = sim_server.url
            yield stack, sim
    finally:
        await asyncio.to_thread(sim_server.stop)


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 60) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.1)


async def post(stack: Stack, path: str, json: Any = None, org: Org | None = None) -> httpx.Response:
    org = org or stack.org
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            stack.url + path, json=json, headers={"Authorization": f"Bearer {org.api_token}"}
        )


async def start_import(stack: Stack, json: Any = None, expect: int = 202) -> dict[str, Any]:
    response = await post(stack, "/api/twilio/sync-messages", json)
    assert response.status_code == expect, response.text
    body: dict[str, Any] = response.json()
    return body


async def until_done(stack: Stack, import_id: int, timeout: float = 120) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        response = await stack.get(f"/api/twilio/imports/{import_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body if body["state"] != "running" else None

    result: dict[str, Any] = await eventually(done, timeout)
    return result


async def events_of(stack: Stack, event_type: str) -> int:
    return await stack.count(EventLogEntry, EventLogEntry.type == event_type)


async def traffic(sim: Sim, org: Org, count: int, **fields: Any) -> dict[str, Any]:
    result: dict[str, Any] = await sim.call(
        "POST", f"/accounts/{org.account_sid}/traffic", {"count": count, **fields}
    )
    return result


# --- the big one -----------------------------------------------------------------------------


@pytest.mark.timeout(300)  # 20,000 messages
async def test_import_of_20000_messages_over_20_pages(
    flow: tuple[Stack, Sim], capsys: pytest.CaptureFixture[str]
) -> None:
    stack, sim = flow
    org = stack.org
    start = datetime.now(UTC) - timedelta(days=3)
    made = await traffic(
        sim, org, 20_000, counterparts=500, spacing_ms=10_000, start=start.isoformat(),
        return_sids=True,
    )  # fmt: skip
    sids: list[str] = made["sids"]
    # One of them is also captured live, before the import sees it.
    live_sid = sids[-1]
    live = await sim.message_events(org.account_sid, live_sid, statuses=["received"])
    assert {d["status_code"] for d in live["deliveries"]} == {200}
    assert await events_of(stack, "messaging.message.new") == 1

    async with sse(stack, org) as stream:
        began = time.monotonic()
        run = await start_import(stack)
        assert run["state"] == "running"
        done = await until_done(stack, run["id"], timeout=300)
        elapsed = time.monotonic() - began
        first = await stream.next()
    rate = 20_000 / elapsed
    with capsys.disabled():
        print(f"\n[import rate] {stack.db.dialect}: 20000 in {elapsed:.1f}s = {rate:.0f}/s")

    assert done["state"] == "finished"
    assert done["error"] is None
    assert (done["imported"], done["skipped"], done["pages"]) == (19_999, 1, 20)
    assert first["event"] == "twilio.import.progress"
    assert first["json"]["payload"]["id"] == run["id"]
    assert await stack.count(Message) == 20_000
    async with stack.db.reader() as session:
        distinct = (
            await session.execute(select(func.count(func.distinct(Message.external_id))))
        ).scalar_one()
    assert distinct == 20_000
    assert await stack.count(Contact) == 500
    assert await stack.count(Message, Message.source == "import") == 19_999
    [captured] = await stack.rows(Message, Message.external_id == live_sid)
    assert captured.source == "loquent"  # the live row stays as live capture made it
    # No flood: one message.new (the live text), a progress event per page, one finish.
    assert await events_of(stack, "messaging.message.new") == 1
    assert await events_of(stack, "twilio.import.progress") == 20
    assert await events_of(stack, "twilio.import.finished") == 1

    # Bodies and directions came along; contacts moved to their newest message.
    [oldest] = await stack.rows(Message, Message.external_id == sids[0])
    assert (oldest.body, oldest.body_state, oldest.direction) == ("Message 0", "ready", "outbound")
    assert abs((oldest.created_at - start).total_seconds()) < 1
    [inbound] = await stack.rows(Message, Message.external_id == sids[1])
    assert (inbound.direction, inbound.status, inbound.to_address) == (
        "inbound",
        "received",
        LINES[1],
    )
    contacts = (await stack.get("/api/contacts?limit=1")).json()["items"]
    assert contacts[0]["last_message"]["external_id"] == live_sid

    # A live status event for an imported SID updates it through the normal path.
    outbound_sid = sids[-2]
    await sim.message_events(org.account_sid, outbound_sid, statuses=["read"])
    [updated] = await stack.rows(Message, Message.external_id == outbound_sid)
    assert (updated.status, updated.source) == ("read", "import")

    # Safe to re-run: nothing new, nothing duplicated.
    again = await start_import(stack)
    assert again["id"] != run["id"]
    redone = await until_done(stack, again["id"], timeout=300)
    assert (redone["imported"], redone["skipped"], redone["pages"]) == (0, 20_000, 20)
    assert await stack.count(Message) == 20_000
    assert await events_of(stack, "messaging.message.new") == 1


# --- smaller runs: filters, errors, API rules --------------------------------------------------


@pytest.mark.parametrize("overrides", [{"import_page_size": 10}])
async def test_since_filters_by_instant_and_mms_waits_for_its_media(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    org = stack.org
    start = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    await traffic(sim, org, 30, spacing_ms=60_000, start=start.isoformat(), media_every=10)
    # Another account's number is not the organization's business.
    await sim.call(
        "POST",
        f"/accounts/{org.account_sid}/messages",
        {"messages": [{"from": "+14155550999", "to": "+14155550998", "body": "not ours"}]},
    )
    since = start + timedelta(minutes=10)  # same day: DateSent> lists the whole day
    run = await start_import(stack, {"since": since.isoformat()})
    done = await until_done(stack, run["id"])
    assert done["since"].startswith(since.strftime("%Y-%m-%dT%H:%M"))
    assert (done["imported"], done["skipped"]) == (20, 11)  # 10 older + 1 on no line
    assert done["pages"] == 4
    rows = await stack.rows(Message)
    assert min(m.created_at for m in rows) >= since
    mms = [m for m in rows if m.num_media]
    assert len(mms) == 2
    assert all(m.body for m in mms)
    # The media list is fetched by the enrichment worker, as for any captured MMS.
    await eventually(
        lambda: stack.count(Message, Message.num_media > 0, Message.body_state == "ready")
    )
    assert await events_of(stack, "messaging.message.new") == 0


@pytest.mark.parametrize("overrides", [{"import_page_size": 10}])
async def test_5xx_and_429_mid_import_are_retried(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await traffic(sim, stack.org, 50)
    path = r"/Messages\.json$"
    await sim.add_fault(path_regex=path, method="GET", status=500, after=2, count=2)
    await sim.add_fault(
        path_regex=path, method="GET", status=429, retry_after=0.2, after=4, count=1
    )
    run = await start_import(stack)
    done = await until_done(stack, run["id"])
    assert (done["state"], done["imported"], done["pages"]) == ("finished", 50, 5)
    faults = await sim.call("GET", "/faults")
    assert [f["hits"] for f in faults] == [2, 1]


@pytest.mark.parametrize("overrides", [{"import_page_size": 10}])
async def test_5xx_that_outlasts_the_retries_fails_with_the_cursor_kept_and_a_rerun_resumes(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    await traffic(sim, stack.org, 50)
    await sim.add_fault(path_regex=r"/Messages\.json$", method="GET", status=503, after=2)
    run = await start_import(stack)
    failed = await until_done(stack, run["id"])
    assert failed["state"] == "failed"
    assert "503" in failed["error"]
    assert "resumes" in failed["error"]
    assert (failed["imported"], failed["pages"]) == (20, 2)
    [row] = await stack.rows(MessageImport, MessageImport.id == run["id"])
    assert row.next_page_uri
    assert "PageToken" in row.next_page_uri
    faults = await sim.call("GET", "/faults")
    assert faults[0]["hits"] == stack.settings.import_max_attempts  # bounded

    await sim.call("DELETE", "/faults")
    resumed = await start_import(stack)
    assert resumed["id"] == run["id"]
    done = await until_done(stack, run["id"])
    assert (done["state"], done["imported"], done["skipped"], done["pages"]) == (
        "finished",
        50,
        0,
        5,
    )
    requests = await sim.call("GET", "/requests", path_contains="/Messages.json")
    assert sum(1 for r in requests if r["status"] == 200) == 5  # no page fetched twice
    assert await stack.count(Message) == 50


async def test_401_fails_the_import_and_flags_the_organization(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await traffic(sim, stack.org, 5)
    await sim.call("POST", f"/accounts/{stack.org.account_sid}/rotate-token", {})
    run = await start_import(stack)
    failed = await until_done(stack, run["id"])
    assert failed["state"] == "failed"
    assert "refused the credentials" in failed["error"]
    assert "HTTP 401" in failed["error"]
    [org] = await stack.rows(Organization, Organization.id == stack.org.id)
    assert org.twilio_credentials_valid is False
    assert await stack.count(Message) == 0
    settings = (await stack.get("/api/settings")).json()
    assert settings["twilio"]["credentials_valid"] is False
    # Until it reconnects, a new import is refused up front.
    response = await post(stack, "/api/twilio/sync-messages", {})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "twilio_not_connected"


@pytest.mark.parametrize("overrides", [{"import_page_size": 5}])
async def test_one_import_per_org_at_a_time(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await traffic(sim, stack.org, 20)
    await sim.add_fault(path_regex=r"/Messages\.json$", method="GET", delay_ms=300)
    first = await start_import(stack)
    second = await start_import(stack, {"since": "2020-01-01"}, expect=200)
    assert second["id"] == first["id"]
    assert second["state"] == "running"
    done = await until_done(stack, first["id"])
    assert done["imported"] == 20
    assert await stack.count(MessageImport) == 1


async def test_owner_only_and_imports_are_private_and_input_is_checked(
    flow: tuple[Stack, Sim],
) -> None:
    stack, _sim = flow
    async with stack.db.session() as session:
        user = await orgs.get_or_create_user(session, f"{secrets.token_hex(4)}@example.com")
        await orgs.ensure_member(session, user, stack.org.id, "member")
        member_token = await orgs.create_api_token(session, user, stack.org.id)
        await session.commit()
    member = Org(stack.org.id, stack.org.account_sid, "", member_token, stack.org.lines)
    response = await post(stack, "/api/twilio/sync-messages", {}, org=member)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert await stack.count(MessageImport) == 0

    for bad, code in [
        ({"since": "yesterday"}, "invalid_since"),
        ({"since": "2999-01-01"}, "invalid_since"),
        ({"since": "1970-01-01"}, "invalid_since"),
        ({"unknown": 1}, "invalid_request"),
        ({"since": 12}, "invalid_request"),
    ]:
        response = await post(stack, "/api/twilio/sync-messages", bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == code
    assert await stack.count(MessageImport) == 0
    async with httpx.AsyncClient(timeout=30) as http:
        garbled = await http.post(
            stack.url + "/api/twilio/sync-messages",
            content=b"{not json",
            headers={
                "Authorization": f"Bearer {stack.org.api_token}",
                "Content-Type": "application/json",
            },
        )
    assert garbled.status_code == 422
    assert await stack.count(MessageImport) == 0

    run = await start_import(stack, {"since": "2026-01-01"})
    other = await stack.add_org("Other", ["+14155550177"])
    hidden = await stack.get(f"/api/twilio/imports/{run['id']}", org=other)
    assert hidden.status_code == 404
    assert (await stack.get("/api/twilio/imports", org=other)).json() == {"items": []}
    assert (await stack.get("/api/twilio/imports/99999999999")).status_code == 422
    seen = await stack.get(f"/api/twilio/imports/{run['id']}", org=member)
    assert seen.status_code == 200  # members may follow an import, not start one
    listed = (await stack.get("/api/twilio/imports?kind=history")).json()["items"]
    assert [item["id"] for item in listed] == [run["id"]]
    assert (await stack.get("/api/twilio/imports?kind=other")).status_code == 422


async def test_a_request_without_a_body_imports_everything(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    await traffic(sim, stack.org, 3)
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(
            stack.url + "/api/twilio/sync-messages",
            headers={"Authorization": f"Bearer {stack.org.api_token}"},
        )
    assert response.status_code == 202, response.text
    done = await until_done(stack, response.json()["id"])
    assert (done["since"], done["imported"]) == (None, 3)
