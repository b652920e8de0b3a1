"""The inbox in headless Chromium: messages arrive, bodies fill in, badges and order update live.

Every text here is "sent from the Twilio Console" through the simulator, so the app learns of
it only from Event Streams status events and fetches its body in the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.pages import WAIT_MS, no_script_errors, sign_in

pytestmark = pytest.mark.e2e


def fetch_path(account_sid: str) -> str:
    """The simulator path of a message fetch (not its media list) for one account."""
    return rf"/Accounts/{account_sid}/Messages/SM[0-9a-f]{{32}}\.json$"


@pytest.mark.asyncio
async def test_login_with_the_form(browser: Browser, stack: Any, artifacts: Path) -> None:
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{stack.app_url}/login")
    await page.fill("#email", stack.orgs["acme"].email)
    await page.fill("#password", "not the password")
    await page.click("#login-form button[type=submit]")
    await expect(page.locator("#login-error")).to_have_text("Email or password is incorrect.")
    await expect(page.locator("#email")).to_have_value(stack.orgs["acme"].email)
    await page.screenshot(path=artifacts / "login-error.png")

    await page.fill("#password", stack.password)
    await page.click("#login-form button[type=submit]")
    await expect(page).to_have_url(f"{stack.app_url}/messaging")
    await expect(page.locator(".org-name")).to_have_text("Acme Clinic")
    await expect(page.locator("#empty-state")).to_be_visible()

    await page.click("#logout")
    await expect(page).to_have_url(f"{stack.app_url}/login")
    await page.goto(f"{stack.app_url}/settings")
    await expect(page).to_have_url(f"{stack.app_url}/login?next=/settings")


@pytest.mark.asyncio
async def test_external_sms_arrives_live_gets_its_body_and_status(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    acme = stack.orgs["acme"]
    older, newer = "+12025550101", "+12025550102"
    stack.console_sms("acme", older, "Your x-rays are ready to view.")
    stack.console_sms("acme", newer, "Hi! Your appointment is confirmed for Thursday.")
    older_id, newer_id = stack.contact_id("acme", older), stack.contact_id("acme", newer)
    stack.wait_body_ready("acme", older_id)
    stack.wait_body_ready("acme", newer_id)

    page = await sign_in(browser, stack, "acme")
    await page.click(f'#contact-list [data-contact-id="{newer_id}"] a')
    await expect(page).to_have_url(f"{stack.app_url}/messaging/{newer_id}")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(1)
    contacts = page.locator("#contact-list [data-contact-id]")
    await expect(contacts.first).to_have_attribute("data-contact-id", str(newer_id))
    await page.evaluate("window.__stillTheSamePage = true")

    # The simulator answers the next body fetch late, so the placeholder stays on screen.
    stack.sim(
        "POST",
        "/faults",
        json={
            "method": "GET",
            "path_regex": fetch_path(acme.account_sid),
            "delay_ms": 2500,
            "count": 1,
        },
    )
    body = "Your prescription is ready for pickup at the front desk."
    sid = stack.console_sms("acme", newer, body, statuses=["queued", "sent"])

    await expect(feed).to_have_count(2)
    message_id = await feed.last.get_attribute("data-message-id")
    message = page.locator(f'#feed [data-message-id="{message_id}"]')
    await expect(message.locator(".body-placeholder")).to_have_text("loading message…")
    await expect(message).to_have_class("message outbound")
    await expect(message.locator(".source-badge")).to_have_text("external")
    await expect(message.locator(".status-badge")).to_have_text("sent")
    await page.screenshot(path=artifacts / "feed-placeholder.png")

    await expect(message.locator(".message-body")).to_have_text(body, timeout=WAIT_MS)
    await expect(message.locator(".body-placeholder")).to_have_count(0)
    await expect(contacts.first.locator(".contact-preview")).to_have_text(f"You: {body}")

    # A late "delivered" changes the badge of the same message in place.
    stack.sim(
        "POST",
        f"/accounts/{acme.account_sid}/messages/{sid}/events",
        json={"statuses": ["delivered"], "wait": True},
    )
    await expect(message.locator(".status-badge")).to_have_text("delivered")
    await expect(message).to_have_attribute("data-status", "delivered")

    # A new text to the other contact moves that contact to the top of the list,
    # and does not show up in this conversation.
    await expect(contacts.first).to_have_attribute("data-contact-id", str(newer_id))
    stack.console_sms("acme", older, "Reminder: bring your insurance card on Thursday.")
    await expect(contacts.first).to_have_attribute("data-contact-id", str(older_id))
    await expect(contacts.first.locator(".contact-preview")).to_have_text(
        "You: Reminder: bring your insurance card on Thursday.", timeout=WAIT_MS
    )
    await expect(feed).to_have_count(2)

    assert await page.evaluate("window.__stillTheSamePage") is True, "the page was reloaded"
    await page.screenshot(path=artifacts / "inbox-conversation.png")
    no_script_errors(page)


@pytest.mark.asyncio
async def test_inbound_reply_and_empty_body(browser: Browser, stack: Any, artifacts: Path) -> None:
    acme = stack.orgs["acme"]
    phone = "+12025550104"
    stack.console_sms("acme", phone, "")  # an MMS-style text without words
    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)

    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(1)
    await expect(feed.first.locator(".body-note")).to_have_text("no text")

    stack.sim(
        "POST",
        f"/accounts/{acme.account_sid}/inbound-sms",
        json={
            "from": phone,
            "to": acme.lines[0],
            "body": "Can I come at 4 instead?",
            "wait": True,
        },
    )
    await expect(feed).to_have_count(2)
    reply = feed.last
    await expect(reply).to_have_class("message inbound")
    await expect(reply.locator(".message-body")).to_have_text("Can I come at 4 instead?")
    await expect(reply.locator(".status-badge")).to_have_text("received")
    await expect(reply.locator(".source-badge")).to_have_count(0)
    no_script_errors(page)


@pytest.mark.asyncio
async def test_load_older_pages_back(browser: Browser, stack: Any) -> None:
    phone = "+12025550105"
    for n in range(1, 56):
        stack.console_sms("acme", phone, f"History {n}", statuses=["delivered"], include_body=True)
    contact_id = stack.contact_id("acme", phone)

    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(50)
    await expect(feed.last.locator(".message-body")).to_have_text("History 55")
    await expect(page.locator("#load-older")).to_be_visible()
    await page.click("#load-older")
    await expect(feed).to_have_count(55)
    await expect(feed.first.locator(".message-body")).to_have_text("History 1")
    await expect(page.locator("#load-older")).to_be_hidden()
    no_script_errors(page)


@pytest.mark.asyncio
async def test_another_organization_sees_none_of_it(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    acme_phone, globex_phone = "+12025550106", "+12025550201"
    stack.console_sms("acme", acme_phone, "Acme only: your results are in.")
    acme_contact = stack.contact_id("acme", acme_phone)

    page = await sign_in(browser, stack, "globex")
    contacts = page.locator("#contact-list [data-contact-id]")
    await expect(page.locator("#contact-list")).to_have_attribute("aria-busy", "false")
    await expect(page.locator("#contacts-empty")).to_be_visible()

    # While globex watches, acme gets a text and then globex does: only its own shows up.
    stack.console_sms("acme", acme_phone, "Acme only: see you soon.")
    stack.console_sms("globex", globex_phone, "Globex: your order shipped.")
    await expect(contacts).to_have_count(1)
    await expect(contacts.first.locator(".contact-name")).to_have_text(globex_phone)
    await page.screenshot(path=artifacts / "second-organization.png")

    response = await page.goto(f"{stack.app_url}/messaging/{acme_contact}")
    assert response is not None
    assert response.status == 404
    await expect(page.locator("h1")).to_have_text("Conversation not found")

    api = page.context.request
    listed = await (await api.get(f"{stack.app_url}/api/contacts")).json()
    assert [item["phone"] for item in listed["items"]] == [globex_phone]
    other = await api.get(f"{stack.app_url}/api/contacts/{acme_contact}/messages")
    assert other.status == 404
    no_script_errors(page)


@pytest.mark.asyncio
async def test_settings_show_the_connection_and_its_problems(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    acme = stack.orgs["acme"]
    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/settings")
    await expect(page.locator("#account-sid")).to_have_text(f"AC••••{acme.account_sid[-4:]}")
    await expect(page.locator("#credentials-state")).to_have_text("working")
    for number in acme.lines:
        await expect(page.locator("#phone-numbers")).to_contain_text(number)
    assert acme.auth_token not in await page.content()
    assert acme.account_sid not in await page.content()
    await page.screenshot(path=artifacts / "settings.png", full_page=True)

    # Initech: Twilio starts refusing the credentials (401 on the body fetch), then the auth
    # token is rotated, so deliveries arrive signed with a token the app does not know.
    initech = stack.orgs["initech"]
    stack.sim(
        "POST",
        "/faults",
        json={
            "method": "GET",
            "path_regex": fetch_path(initech.account_sid),
            "status": 401,
        },
    )
    stack.console_sms("initech", "+12025550301", "Your invoice is attached.")
    stack.sim("POST", f"/accounts/{initech.account_sid}/rotate-token", json={})
    stack.console_sms("initech", "+12025550302", "Signed with the new token.")

    page = await sign_in(browser, stack, "initech")
    await page.goto(f"{stack.app_url}/settings")
    for _ in range(40):
        if await page.locator("#credentials-problem").count():
            break
        await page.wait_for_timeout(500)
        await page.reload()
    await expect(page.locator("#credentials-state")).to_have_text("rejected by Twilio")
    await expect(page.locator("#credentials-problem")).to_be_visible()
    await expect(page.locator("#signature-failures")).not_to_have_text("0")
    await page.screenshot(path=artifacts / "settings-problems.png", full_page=True)

    api = await page.context.request.get(f"{stack.app_url}/api/settings")
    view = await api.json()
    assert view["twilio"]["credentials_valid"] is False
    assert view["webhooks"]["signature_failures"] >= 1
    assert "auth_token" not in str(view)
    no_script_errors(page)
