"""The demo's world, registered on every start: a simulated Twilio account with two lines and a
sink pointing at the app, and the matching organization, lines, user and one named contact in
the database. Idempotent: the database keeps the organization between runs, while the
simulator's state lives in memory, so the account is registered again with a fresh auth token
stored in both."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from typing import Any

from loquent.simulator.client import SimulatorClient

DEMO_EMAIL = "demo@loquent.local"
DEMO_ORG_NAME = "Harbor Dental"
# A fixed, well-formed SID, so the same organization is found again on the next run.
DEMO_ACCOUNT_SID = "AC" + hashlib.sha256(b"loquent demo account").hexdigest()[:32]
# The simulator answers message fetches this much later, so the "loading message…"
# placeholder is on screen long enough to be seen before the body replaces it.
BODY_FETCH_DELAY_MS = 1500


@dataclass(frozen=True)
class Line:
    number: str
    name: str


FRONT_DESK = Line("+14155550100", "Front desk")
REMINDERS = Line("+14155550142", "Reminders")
LINES = (FRONT_DESK, REMINDERS)

MAYA = "+12125550123"  # seeded with a name; the others appear as numbers, as stubs do
SAM = "+13105550147"
ALEX = "+16175550188"


@dataclass(frozen=True)
class DemoSeed:
    account_sid: str
    password: str
    org_id: int


async def seed(settings: Any, sim: SimulatorClient, app_url: str) -> DemoSeed:
    """Register the account, its lines and the sink on the simulator, and the organization,
    its lines and the demo user in the database. Safe to run on every start."""
    from loquent.contacts import service as contacts
    from loquent.context import AppContext
    from loquent.orgs import service as orgs

    token = secrets.token_hex(16)
    sid = DEMO_ACCOUNT_SID
    await sim.create_account(sid=sid, auth_token=token, friendly_name=DEMO_ORG_NAME)
    line_sids = {}
    for line in LINES:
        added = await sim.add_number(sid, line.number, friendly_name=line.name)
        line_sids[line.number] = added["sid"]
    sink = await sim.add_sink(
        sid, app_url.rstrip("/") + "/twilio/events", description="Loquent demo"
    )
    await sim.add_fault(
        method="GET",
        path_regex=r"/Messages/(SM|MM)[0-9a-f]{32}\.json$",
        delay_ms=BODY_FETCH_DELAY_MS,
    )

    password = os.environ.get("LOQUENT_DEMO_PASSWORD") or secrets.token_urlsafe(9)
    ctx = AppContext.from_settings(settings)
    try:
        async with ctx.db.session() as session:
            org = await orgs.find_org_by_account_sid(session, sid)
            if org is None:
                org = await orgs.create_organization(session, ctx.box, name=DEMO_ORG_NAME)
            await orgs.set_twilio_credentials(
                session, ctx.box, org, account_sid=sid, auth_token=token
            )
            for line in LINES:
                await orgs.add_phone_number(
                    session,
                    org.id,
                    line.number,
                    twilio_sid=line_sids[line.number],
                    friendly_name=line.name,
                )
            org.sink_sid = sink["sink_sid"]
            org.subscription_sid = sink["subscription_sid"]
            org.sms_events_active = True
            user = await orgs.get_or_create_user(session, DEMO_EMAIL, password)
            await orgs.ensure_member(session, user, org.id, "owner")
            maya = await contacts.resolve_or_create(session, org.id, MAYA, source="manual")
            if not (maya.first_name or maya.last_name):
                maya.first_name, maya.last_name = "Maya", "Patel"
            org_id = org.id
            await session.commit()
    finally:
        await ctx.close()
    return DemoSeed(account_sid=sid, password=password, org_id=org_id)
