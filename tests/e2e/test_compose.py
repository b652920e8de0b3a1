"""Replying from the conversation page: the compose box sends through the app to the
simulator, the bubble shows at once, becomes the stored message and follows its delivery;
Twilio's refusals show under the bubble; Shift+Enter is a new line, Enter sends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.pages import no_script_errors, sign_in

pytestmark = pytest.mark.e2e

CONSOLE_TEXT = "Your cleaning is booked for Monday"


async def open_conversation(browser: Browser, stack: Any, phone: str) -> Page:
    stack.console_sms("acme", phone, CONSOLE_TEXT)
    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)
    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    await expect(page.locator("#feed [data-message-id]")).to_have_count(1)
    return page


def replies_to(stack: Any, phone: str) -> list[dict[str, Any]]:
    """What the simulator was asked to send to ``phone`` (not the Console text)."""
    account = stack.orgs["acme"].account_sid
    messages = stack.sim("GET", "/messages", params={"account_sid": account})
    return [m for m in messages if m["to"] == phone and m["body"] != CONSOLE_TEXT]


@pytest.mark.asyncio
async def test_a_reply_shows_at_once_then_moves_to_delivered(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    phone = "+12025550171"
    page = await open_conversation(browser, stack, phone)
    # Two lines: the picker defaults to the line the customer's last text used.
    picker = page.locator("#compose-line")
    await expect(picker).to_be_visible()
    await expect(picker.locator("option:checked")).to_contain_text(stack.orgs["acme"].lines[0])

    # Twilio takes a moment to answer, so the "sending…" bubble can be seen.
    account = stack.orgs["acme"].account_sid
    fault = stack.sim(
        "POST",
        "/faults",
        json={
            "method": "POST",
            "path_regex": f"/Accounts/{account}/Messages\\.json$",
            "delay_ms": 4000,  # long enough to be seen on a busy machine
            "count": 1,
        },
    )
    box = page.locator("#compose-body")
    await box.fill("Sure, Thursday at 4 works")
    await box.press("Enter")
    pending = page.locator("#feed-pending .message")
    await expect(pending).to_have_count(1)
    await expect(pending.locator(".message-body")).to_have_text("Sure, Thursday at 4 works")
    await expect(pending.locator(".status-badge")).to_have_text("sending…")
    await expect(box).to_have_value("")

    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(2, timeout=20_000)
    await expect(pending).to_have_count(0)
    reply = feed.last
    await expect(reply).to_have_attribute("data-direction", "outbound")
    await expect(reply.locator(".message-body")).to_have_text("Sure, Thursday at 4 works")
    await expect(reply.locator(".status-badge")).to_have_text("delivered")
    await expect(page.locator(".message.outbound .message-body")).to_have_count(2)
    await page.screenshot(path=str(artifacts / "compose-delivered.png"))
    stack.sim("DELETE", f"/faults/{fault['id']}")

    assert [(m["body"], m["from"]) for m in replies_to(stack, phone)] == [
        ("Sure, Thursday at 4 works", stack.orgs["acme"].lines[0])
    ]
    no_script_errors(page)


@pytest.mark.asyncio
async def test_a_refusal_from_twilio_shows_under_the_bubble(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    phone = "+12025550172"
    page = await open_conversation(browser, stack, phone)
    account = stack.orgs["acme"].account_sid
    stack.sim("POST", f"/accounts/{account}/send-rejections", json={"to": phone, "code": 21610})

    box = page.locator("#compose-body")
    await box.fill("Reminder: your appointment is tomorrow")
    await page.click("#compose-send")
    failed = page.locator("#feed [data-message-id][data-status='failed']")
    await expect(failed).to_have_count(1)
    await expect(failed.locator(".send-error")).to_have_text(
        "Attempt to send to unsubscribed recipient"
    )
    await expect(failed.locator(".status-badge")).to_have_text("failed")
    await expect(failed.locator(".error-code")).to_have_text("error 21610")
    # The text is back in the box, to edit or send again.
    await expect(box).to_have_value("Reminder: your appointment is tomorrow")
    await page.screenshot(path=str(artifacts / "compose-refused.png"))
    assert replies_to(stack, phone) == []
    no_script_errors(page)


@pytest.mark.asyncio
async def test_shift_enter_is_a_new_line_and_enter_sends(browser: Browser, stack: Any) -> None:
    phone = "+12025550173"
    page = await open_conversation(browser, stack, phone)
    box = page.locator("#compose-body")
    await box.click()
    await box.press_sequentially("First line")
    await box.press("Shift+Enter")
    await box.press_sequentially("second line")
    await expect(box).to_have_value("First line\nsecond line")
    await expect(page.locator("#feed-pending .message")).to_have_count(0)
    await expect(page.locator("#feed [data-message-id]")).to_have_count(1)

    await box.press("Enter")
    reply = page.locator("#feed .message.outbound").last
    await expect(page.locator("#feed [data-message-id]")).to_have_count(2)
    await expect(reply.locator(".message-body")).to_have_text("First line\nsecond line")
    assert [m["body"] for m in replies_to(stack, phone)] == ["First line\nsecond line"]
    no_script_errors(page)
