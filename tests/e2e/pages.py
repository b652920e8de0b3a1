"""Browser helpers shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any

from playwright.async_api import Browser, Page, expect

WAIT_MS = 20_000


async def sign_in(browser: Browser, stack: Any, org: str) -> Page:
    """A fresh browser context signed in as the org's user, on a live inbox."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    page = await context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto(f"{stack.app_url}/messaging")
    await expect(page).to_have_url(f"{stack.app_url}/login")
    await page.fill("#email", stack.orgs[org].email)
    await page.fill("#password", stack.password)
    await page.click("#login-form button[type=submit]")
    await expect(page).to_have_url(f"{stack.app_url}/messaging")
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    return page


def no_script_errors(page: Page) -> None:
    assert page.errors == []  # type: ignore[attr-defined]
