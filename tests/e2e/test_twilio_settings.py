"""The settings page as an owner uses it to bring a Twilio account in: connect (a wrong
token first), import numbers, set up the event sink and see Twilio verify it — and what a
plain member sees of the same page."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect
from sqlalchemy import select

from loquent.config import Settings
from loquent.context import AppContext
from loquent.orgs import service
from loquent.orgs.models import Organization, PhoneNumber
from tests.e2e.conftest import PASSWORD, SECRET_KEY, Stack
from tests.e2e.pages import WAIT_MS, no_script_errors

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio]

NUMBERS = ("+14155550400", "+14155550401", "+14155550402")


async def seed_unconnected_org(stack: Stack) -> dict[str, Any]:
    """An organization with no Twilio account, one line added by hand, an owner and a member."""
    ctx = AppContext.from_settings(Settings(database_url=stack.database_url, secret_key=SECRET_KEY))
    suffix = secrets.token_hex(3)
    try:
        async with ctx.db.session() as session:
            org = await service.create_organization(session, ctx.box, name=f"Harbor {suffix}")
            await service.add_phone_number(session, org.id, NUMBERS[0])
            emails = {}
            for role in ("owner", "member"):
                email = f"{role}-{suffix}@harbor.test"
                user = await service.get_or_create_user(session, email, PASSWORD)
                await service.ensure_member(session, user, org.id, role)
                emails[role] = email
            await session.commit()
            return {"org_id": org.id, **emails}
    finally:
        await ctx.close()


async def org_state(stack: Stack, org_id: int) -> tuple[Organization, list[PhoneNumber]]:
    ctx = AppContext.from_settings(Settings(database_url=stack.database_url, secret_key=SECRET_KEY))
    try:
        async with ctx.db.reader() as session:
            org = await session.get(Organization, org_id)
            lines = list(
                await session.scalars(
                    select(PhoneNumber).where(PhoneNumber.organization_id == org_id)
                )
            )
            assert org is not None
            return org, lines
    finally:
        await ctx.close()


async def open_settings(browser: Browser, stack: Stack, email: str) -> Page:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{stack.app_url}/settings")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await expect(page).to_have_url(f"{stack.app_url}/settings")
    return page


async def test_owner_connects_imports_numbers_and_sets_up_the_sink(
    browser: Browser, stack: Stack, artifacts: Path
) -> None:
    seeded = await seed_unconnected_org(stack)
    account = stack.sim("POST", "/accounts", json={"friendly_name": "Harbor"})
    for number in NUMBERS:
        stack.sim("POST", f"/accounts/{account['sid']}/numbers", json={"phone_number": number})

    page = await open_settings(browser, stack, seeded["owner"])
    await expect(page.locator("#not-connected")).to_be_visible()

    # A wrong token: Twilio says no, the page says why, nothing is stored.
    await page.fill("#account-sid-input", account["sid"])
    await page.fill("#auth-token-input", "not-the-token")
    await page.click("#connect-submit")
    await expect(page.locator("#connect-error")).to_contain_text("Twilio rejected")
    org, _ = await org_state(stack, seeded["org_id"])
    assert org.twilio_account_sid is None

    await page.fill("#auth-token-input", account["auth_token"])
    await page.click("#connect-submit")
    await expect(page.locator("#account-sid")).to_have_text(f"AC••••{account['sid'][-4:]}")
    await expect(page.locator("#credentials-state")).to_have_text("working")
    assert account["auth_token"] not in await page.content()

    # Numbers: the one added by hand is marked imported; import the rest.
    await page.click("#fetch-numbers")
    items = page.locator("#account-number-list li")
    await expect(items).to_have_count(3)
    await expect(items.nth(0)).to_contain_text("imported")
    await expect(items.nth(0).locator("input")).to_be_disabled()
    await page.locator(f'#account-number-list li[data-number="{NUMBERS[2]}"] input').uncheck()
    await page.click("#import-numbers")
    await expect(page.locator("#phone-numbers tbody tr")).to_have_count(2)
    await expect(page.locator("#phone-numbers")).to_contain_text(NUMBERS[1])
    _, lines = await org_state(stack, seeded["org_id"])
    assert sorted(line.number for line in lines) == sorted(NUMBERS[:2])
    assert all(line.twilio_sid for line in lines)  # the hand-added line got its SID too

    # The event sink, verified by Twilio's test event.
    await expect(page.locator("#sink-state")).to_have_text("not set up")
    await page.click("#setup-sink")
    await expect(page.locator("#sink-state")).to_have_text("receiving SMS events")
    await expect(page.locator("#sink-destination")).to_have_text(f"{stack.app_url}/twilio/events")
    await expect(page.locator("#sink-verified")).to_contain_text("verified by Twilio at")
    await page.screenshot(path=str(artifacts / "settings-connected.png"), full_page=True)
    sinks = stack.sim("GET", f"/accounts/{account['sid']}")["sinks"]
    assert len(sinks) == 1
    no_script_errors(page)

    # A member sees the state but none of the owner's buttons.
    member = await open_settings(browser, stack, seeded["member"])
    await expect(member.locator("#account-sid")).to_be_visible()
    for selector in ("#connect-form", "#disconnect", "#fetch-numbers", "#setup-sink"):
        await expect(member.locator(selector)).to_have_count(0)
    await member.context.close()

    # Disconnect asks first, then removes the credentials and the sink it created.
    page.once("dialog", lambda dialog: dialog.accept())
    await page.click("#disconnect")
    await expect(page.locator("#not-connected")).to_be_visible()
    assert stack.sim("GET", f"/accounts/{account['sid']}")["sinks"] == []
    org, _ = await org_state(stack, seeded["org_id"])
    assert org.twilio_account_sid is None
    assert org.twilio_auth_token is None
    no_script_errors(page)
    await page.context.close()
