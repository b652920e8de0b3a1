"""One HTTP client serves every organization, so it must keep no cookies: a Set-Cookie answered
to one organization's call must never ride along on another organization's call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from tests.conftest import Org, Stack, running_stack
from tests.test_capture_flow import settled

pytestmark = pytest.mark.timeout(90)

CUSTOMER = "+14155550177"


async def register(sim: Sim, stack: Stack, org: Org) -> None:
    await sim.call("POST", "/accounts", {"sid": org.account_sid, "auth_token": org.auth_token})
    for number in org.lines:
        await sim.call("POST", f"/accounts/{org.account_sid}/numbers", {"phone_number": number})
    await sim.call(
        "POST", f"/accounts/{org.account_sid}/sinks", {"destination": f"{stack.url}/twilio/events"}
    )


@pytest.fixture
async def two_orgs(database_url: str) -> AsyncIterator[tuple[Stack, Sim]]:
    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    try:
        async with running_stack(
            database_url,
            run_worker=True,  # the embedded worker uses the process's shared client
            twilio_api_base=sim_server.url,
            twilio_events_api_base=sim_server.url,
        ) as stack:
            await stack.add_org("Beta", ["+14155550200"])
            for org in stack.orgs:
                await register(sim, stack, org)
            yield stack, sim
    finally:
        await asyncio.to_thread(sim_server.stop)


async def test_a_cookie_set_for_one_org_is_never_sent_for_another(
    two_orgs: tuple[Stack, Sim],
) -> None:
    stack, sim = two_orgs
    first, second = stack.orgs
    # Twilio (or a balancer in front of it) answers the first org's body fetch with a cookie.
    await sim.add_fault(
        path_regex=rf"/Accounts/{first.account_sid}/Messages/SM[0-9a-f]+\.json$",
        method="GET",
        set_cookie="affinity=org-one-session; Path=/",
    )

    sent = await sim.console_sms(
        first.account_sid, **{"from": first.lines[0], "to": CUSTOMER, "body": "for the first org"}
    )
    assert (await settled(stack, sent["sid"])).body == "for the first org"
    faults = await sim.call("GET", "/faults")
    assert faults[0]["hits"] >= 1  # the cookie was handed out

    for body in ("for the second org", "and again"):
        other = await sim.console_sms(
            second.account_sid, **{"from": second.lines[0], "to": CUSTOMER, "body": body}
        )
        assert (await settled(stack, other["sid"])).body == body

    calls = await sim.call("GET", "/requests")
    second_calls = [c for c in calls if c["auth_user"] == second.account_sid]
    first_calls = [c for c in calls if c["auth_user"] == first.account_sid]
    assert second_calls
    assert first_calls
    assert all(c["cookies"] == [] for c in second_calls), second_calls
    assert all(c["cookies"] == [] for c in first_calls), first_calls


async def test_the_process_client_refuses_cookies_and_is_the_one_the_worker_uses(
    two_orgs: tuple[Stack, Sim],
) -> None:
    stack, sim = two_orgs
    app = stack.server.app
    ctx = app.state.ctx
    assert app.state.worker._http is ctx.http  # one pool for the worker and the media proxy
    request = httpx.Request("GET", f"{sim.url}/2010-04-01/Accounts.json")
    answer = httpx.Response(200, headers={"Set-Cookie": "affinity=x; Path=/"}, request=request)
    ctx.http.cookies.extract_cookies(answer)
    assert len(ctx.http.cookies.jar) == 0
