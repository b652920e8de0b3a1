"""Settings in headless Chromium: texts that could not be fetched, and the owner's retry.

A stack of its own with a 2-second enrichment deadline, so a body Twilio keeps answering
500 for ends `failed` within the test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from tests.e2e.conftest import PASSWORD, SECRET_KEY, running_stack
from tests.e2e.pages import WAIT_MS, no_script_errors, sign_in

pytestmark = pytest.mark.e2e

MEMBER_EMAIL = "reader@globex.test"


@pytest.fixture(scope="module")
def failing_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with running_stack(
        tmp_path_factory.mktemp("e2e-bodies"),
        LOQUENT_ENRICH_DEADLINE_SECONDS="2",
        LOQUENT_ENRICH_BACKOFF_MAX_SECONDS="0.5",
    ) as running:
        yield running


def wait_bodies(stack: Any, org: str, expected: dict[str, int], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := stack.api(org, "/api/settings").json()["bodies"]) != expected:
        assert time.monotonic() < deadline, got
        time.sleep(0.2)


async def add_member(stack: Any, org: str) -> None:
    from loquent.config import Settings
    from loquent.context import AppContext
    from loquent.orgs import service

    ctx = AppContext.from_settings(Settings(database_url=stack.database_url, secret_key=SECRET_KEY))
    try:
        async with ctx.db.session() as session:
            user = await service.get_or_create_user(session, MEMBER_EMAIL, PASSWORD)
            await service.ensure_member(session, user, stack.orgs[org].org_id, "member")
            await session.commit()
    finally:
        await ctx.close()


async def sign_in_as(browser: Browser, stack: Any, email: str) -> Page:
    page = await (await browser.new_context()).new_page()
    page.set_default_timeout(WAIT_MS)
    await page.goto(f"{stack.app_url}/login")
    await page.fill("#email", email)
    await page.fill("#password", stack.password)
    await page.click("#login-form button[type=submit]")
    await expect(page).to_have_url(f"{stack.app_url}/messaging")
    return page


@pytest.mark.asyncio
async def test_owner_sees_failed_texts_and_retries_them(
    browser: Browser, failing_stack: Any, artifacts: Path
) -> None:
    stack = failing_stack
    globex = stack.orgs["globex"]
    fault = stack.sim(
        "POST",
        "/faults",
        json={"path_regex": rf"/Accounts/{globex.account_sid}/Messages/SM", "status": 500},
    )
    stack.console_sms("globex", "+12025550901", "Your order has shipped.")
    stack.console_sms("globex", "+12025550902", "Your order was delivered.")
    await asyncio.to_thread(wait_bodies, stack, "globex", {"pending": 0, "failed": 2})

    page = await sign_in(browser, stack, "globex")
    await page.goto(f"{stack.app_url}/settings")
    await expect(page.locator("#bodies-failed")).to_have_text("2")
    await expect(page.locator("#bodies-pending")).to_have_text("0")
    await expect(page.locator("#bodies-retry")).to_be_enabled()
    await page.screenshot(path=artifacts / "settings-bodies-failed.png", full_page=True)

    stack.sim("DELETE", f"/faults/{fault['id']}")  # Twilio answers again
    await page.click("#bodies-retry")
    await expect(page.locator("#bodies-retry-result")).to_have_text("2 texts queued again.")
    await expect(page.locator("#bodies-failed")).to_have_text("0")
    await expect(page.locator("#bodies-retry")).to_be_disabled()
    await asyncio.to_thread(wait_bodies, stack, "globex", {"pending": 0, "failed": 0})
    await page.reload()
    await expect(page.locator("#bodies-pending")).to_have_text("0")
    await expect(page.locator("#bodies-failed")).to_have_text("0")
    no_script_errors(page)

    # A member sees the counts but no button.
    await add_member(stack, "globex")
    member = await sign_in_as(browser, stack, MEMBER_EMAIL)
    await member.goto(f"{stack.app_url}/settings")
    await expect(member.locator("#bodies-failed")).to_have_text("0")
    await expect(member.locator("#bodies-retry")).to_have_count(0)
