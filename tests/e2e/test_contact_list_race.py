"""The contact list converges when an event overtakes the list fetch it triggered.

A new message makes the page re-fetch the contact list; the message's body can be fetched
from Twilio and announced before that list answer is rendered. The list answer then holds
the older copy of the message, and must not be the last word on its preview.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from playwright.async_api import APIResponse, Browser, Route, expect

from tests.e2e.pages import no_script_errors, sign_in

pytestmark = pytest.mark.e2e


@pytest.mark.asyncio
async def test_a_list_answer_older_than_the_last_event_is_fetched_again(
    browser: Browser, stack: Any
) -> None:
    acme = stack.orgs["acme"]
    phone = "+12025550170"
    page = await sign_in(browser, stack, "acme")
    contacts = page.locator("#contact-list [data-contact-id]")
    await expect(page.locator("#contact-list")).to_have_attribute("aria-busy", "false")

    # Answer the next list request from the server at once, but hand it to the page late.
    held: asyncio.Queue[tuple[Route, APIResponse]] = asyncio.Queue()
    holding = True

    async def hold_list(route: Route) -> None:
        if not holding:
            await route.continue_()
            return
        await held.put((route, await route.fetch()))

    await page.route(re.compile(r"/api/contacts\?"), hold_list)

    # The simulator answers the body fetch late, so the list is read while it is pending.
    stack.sim(
        "POST",
        "/faults",
        json={
            "method": "GET",
            "path_regex": rf"/Accounts/{acme.account_sid}/Messages/SM[0-9a-f]{{32}}\.json$",
            "delay_ms": 1500,
            "count": 1,
        },
    )
    stack.console_sms("acme", phone, "Your lab results are in.")
    route, stale = await asyncio.wait_for(held.get(), 20)
    stale_items = (await stale.json())["items"]
    assert stale_items[0]["phone"] == phone
    assert stale_items[0]["last_message"]["body_state"] == "pending"

    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)
    await page.wait_for_timeout(1500)  # the status event reaches the page meanwhile
    holding = False
    await route.fulfill(response=stale)

    preview = contacts.first.locator(".contact-preview")
    await expect(contacts.first).to_have_attribute("data-contact-id", str(contact_id))
    await expect(preview).to_have_text("You: Your lab results are in.")
    no_script_errors(page)
