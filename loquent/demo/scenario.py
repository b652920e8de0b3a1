"""The demo's scenario: texts "sent from the Twilio Console", an inbound reply, a late
``delivered`` and a duplicate delivery, a couple of seconds apart, so whoever has the inbox
open watches messages arrive, bodies fill in and contacts move to the top."""

from __future__ import annotations

import asyncio
from typing import Any

from loquent.demo.console import say
from loquent.demo.seed import ALEX, FRONT_DESK, MAYA, REMINDERS, SAM, Line
from loquent.simulator.client import SimulatorClient

STEP_PAUSE_SECONDS = 2.5


async def play_scenario(sim: SimulatorClient, account_sid: str) -> None:
    async def console(line: Line, to: str, body: str, **extra: Any) -> str:
        fields = {"from": line.number, "to": to, "body": body, **extra}
        sent = await sim.console_sms(account_sid, **fields)
        return str(sent["sid"])

    async def pause() -> None:
        await asyncio.sleep(STEP_PAUSE_SECONDS)

    say("Scenario:")
    say(f"  1. Twilio Console: {FRONT_DESK.name} texts Maya Patel (delivered comes later)")
    first = await console(
        FRONT_DESK,
        MAYA,
        "Hi Maya, this is Harbor Dental: your cleaning is confirmed for "
        "Thursday at 10:00. Reply here if you need to change it.",
        statuses=["queued", "sent"],
    )
    await pause()

    say(f"  2. Twilio Console: {REMINDERS.name} texts {SAM} (each event sent twice, shuffled)")
    await console(
        REMINDERS,
        SAM,
        "Reminder: your crown fitting is tomorrow at 14:30. Please arrive 10 minutes early.",
        statuses=["queued", "sent", "delivered"],
        duplicate=2,
        shuffle=True,
    )
    await pause()

    say("  3. Maya replies to the front desk")
    reply = {"from": MAYA, "to": FRONT_DESK.number, "body": "Thanks! See you Thursday."}
    await sim.inbound_sms(account_sid, **reply)
    await pause()

    say("  4. The late 'delivered' for the first text arrives")
    await sim.message_events(account_sid, first, statuses=["delivered"])
    await pause()

    say(f"  5. Twilio Console: {FRONT_DESK.name} texts {ALEX}, who moves to the top")
    await console(
        FRONT_DESK,
        ALEX,
        "Your new patient forms are ready: fill them in before your visit on Monday.",
        statuses=["queued", "sent", "delivered"],
    )
    await pause()

    say("  6. Twilio redelivers an event it already delivered (the inbox keeps one copy)")
    await sim.message_events(account_sid, first, statuses=["delivered"])
    say("Scenario done.")
