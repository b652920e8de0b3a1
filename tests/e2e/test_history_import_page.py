"""Settings → Message history: an owner starts an import, the progress bar moves page by page
over SSE, the result is shown; an inbox open meanwhile fills in on the one closing event."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect

from tests.e2e.conftest import Stack, running_stack
from tests.e2e.pages import no_script_errors, sign_in

pytestmark = pytest.mark.e2e

COUNT = 2000


@pytest.fixture(scope="module")
def import_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(
        tmp_path_factory.mktemp("e2e-import"),
        LOQUENT_IMPORT_PAGE_SIZE="200",
        LOQUENT_CATCHUP_INTERVAL_SECONDS="0",
    ) as running:
        yield running


@pytest.mark.asyncio
async def test_import_history_shows_progress_then_the_result(
    browser: Browser, import_stack: Stack, artifacts: Path
) -> None:
    stack = import_stack
    org = stack.orgs["acme"]
    stack.sim("POST", f"/accounts/{org.account_sid}/traffic", json={"count": COUNT})
    # Slow pages, so that the bar is seen between its ends.
    slow = {"path_regex": r"/Messages\.json$", "method": "GET", "delay_ms": 700}
    stack.sim("POST", "/faults", json=slow)

    inbox = await sign_in(browser, stack, "acme")
    await expect(inbox.locator("#contact-list [data-contact-id]")).to_have_count(0)

    page = await inbox.context.new_page()
    page.errors = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
    await page.goto(f"{stack.app_url}/settings")
    section = page.locator("#history-import")
    await expect(section.locator("#import-owner-only")).to_have_count(0)
    await page.fill("#import-since", "2020-01-01")
    await page.click("#import-start")

    await expect(section.locator("#import-state")).to_have_text("importing…")
    await expect(section.locator("#import-start")).to_be_disabled()
    progress = section.locator("#import-progress")
    seen: list[float] = []
    for _ in range(200):
        value = float(await progress.evaluate("p => p.value"))
        if not seen or value != seen[-1]:
            seen.append(value)
        if value >= 1:
            break
        await asyncio.sleep(0.1)
    # It moved through intermediate values, increasing, before it filled.
    middle = [v for v in seen if 0 < v < 1]
    assert len(middle) >= 3, seen
    assert middle == sorted(middle)
    await expect(section.locator("#import-state")).to_have_text("finished")
    await expect(section.locator("#import-imported")).to_have_text(str(COUNT))
    await expect(section.locator("#import-skipped")).to_have_text("0")
    await expect(section.locator("#import-pages")).to_have_text(str(COUNT // 200))
    await expect(section.locator("#import-error")).to_be_hidden()
    await expect(section.locator("#import-start")).to_be_enabled()
    await page.screenshot(path=str(artifacts / "settings-history-import.png"), full_page=True)

    # The inbox, open all along, re-fetched its list on the closing event.
    await expect(inbox.locator("#contact-list [data-contact-id]").first).to_be_visible()
    no_script_errors(page)
    no_script_errors(inbox)

    # Reloaded, the page shows the last import's result.
    await page.reload()
    await expect(section.locator("#import-state")).to_have_text("finished")
    await expect(section.locator("#import-imported")).to_have_text(str(COUNT))
    await page.context.close()


@pytest.mark.asyncio
async def test_a_failed_import_shows_why(browser: Browser, import_stack: Stack) -> None:
    stack = import_stack
    org = stack.orgs["globex"]
    stack.sim("DELETE", "/faults")
    stack.sim("POST", f"/accounts/{org.account_sid}/rotate-token", json={})
    page = await sign_in(browser, stack, "globex")
    await page.goto(f"{stack.app_url}/settings")
    await page.click("#import-start")
    section = page.locator("#history-import")
    await expect(section.locator("#import-state")).to_have_text("failed")
    await expect(section.locator("#import-error")).to_contain_text("refused the credentials")
    no_script_errors(page)
    await page.context.close()


@pytest.mark.asyncio
async def test_members_do_not_get_the_import_controls(
    browser: Browser, import_stack: Stack
) -> None:
    from loquent.config import Settings
    from loquent.context import AppContext
    from loquent.orgs import service
    from tests.e2e.conftest import PASSWORD, SECRET_KEY

    org = import_stack.orgs["initech"]
    email = "member@initech.test"
    ctx = AppContext.from_settings(
        Settings(database_url=import_stack.database_url, secret_key=SECRET_KEY)
    )
    try:
        async with ctx.db.session() as session:
            user = await service.get_or_create_user(session, email, PASSWORD)
            await service.ensure_member(session, user, org.org_id, "member")
            await session.commit()
    finally:
        await ctx.close()

    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(f"{import_stack.app_url}/login?next=/settings")
    await page.fill("#email", email)
    await page.fill("#password", PASSWORD)
    await page.click("#login-form button[type=submit]")
    await expect(page).to_have_url(f"{import_stack.app_url}/settings")
    section = page.locator("#history-import")
    await expect(section.locator("#import-owner-only")).to_be_visible()
    await expect(section.locator("#import-start")).to_have_count(0)
    await expect(section.locator("#import-since")).to_have_count(0)
    await context.close()
