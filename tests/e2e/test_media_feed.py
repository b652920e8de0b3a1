"""MMS in the feed: images show as thumbnails served by the app, other files as downloads.

Media is attached to texts "sent from the Twilio Console" through the simulator, which makes
up a small PNG for image URLs and a vCard for ``.vcf``; the app learns the media list when it
fetches the body, and the page loads each file through ``/api/messages/{id}/media/{sid}``.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Locator, Page, Route, expect

from tests.e2e.pages import no_script_errors, sign_in

pytestmark = pytest.mark.e2e

MEDIA_URL = re.compile(r"^/api/messages/\d+/media/ME[0-9a-f]{32}$")


async def image_loaded(page: Page, image: Locator) -> bool:
    """Whether the <img> has decoded real pixels (not a broken-image icon)."""
    handle = await image.element_handle()
    await page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=handle)
    return True


@pytest.mark.asyncio
async def test_mms_shows_thumbnails_and_downloads(
    browser: Browser, stack: Any, artifacts: Path
) -> None:
    phone = "+12025550160"
    stack.console_sms(
        "acme",
        phone,
        "Here is the x-ray, and my card.",
        media_urls=["https://example.com/xray.png", "https://example.com/card.vcf"],
    )
    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)

    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(1)
    message = feed.first
    await expect(message.locator(".message-body")).to_have_text("Here is the x-ray, and my card.")

    thumb = message.locator(".media-thumb")
    await expect(thumb).to_have_count(1)
    image = thumb.locator("img")
    await expect(image).to_have_attribute("loading", "lazy")
    src = await image.get_attribute("src")
    assert src is not None
    assert MEDIA_URL.match(src), src
    await expect(thumb).to_have_attribute("href", src)
    assert await image_loaded(page, image)

    download = message.locator(".media-file")
    await expect(download).to_have_count(1)
    await expect(download).to_contain_text("text/vcard")
    await expect(download).to_have_attribute("download", "")
    await expect(message.locator(".message-media")).not_to_contain_text("attachments")
    await page.screenshot(path=artifacts / "feed-media.png")
    no_script_errors(page)


@pytest.mark.asyncio
async def test_live_mms_replaces_the_attachment_count_with_the_image(
    browser: Browser, stack: Any
) -> None:
    phone = "+12025550161"
    stack.console_sms("acme", phone, "Booking confirmed.")
    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)

    page = await sign_in(browser, stack, "acme")
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    feed = page.locator("#feed [data-message-id]")
    await expect(feed).to_have_count(1)
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__stillTheSamePage = true")

    # Hold the page's request for the media list, so the "while loading" state is on screen.
    held: asyncio.Queue[Route] = asyncio.Queue()
    await page.route(re.compile(r"/api/messages/\d+/media$"), held.put)

    stack.console_sms("acme", phone, "", media_urls=["https://example.com/room.png"])
    await expect(feed).to_have_count(2)
    mms = feed.last
    route = await asyncio.wait_for(held.get(), 20)
    await expect(mms.locator(".message-media")).to_have_text("1 attachment")
    await expect(mms.locator(".message-media")).to_have_attribute("data-media-state", "loading")
    # A picture without words is not labelled "no text".
    await expect(mms.locator(".body-note")).to_have_count(0)
    await route.continue_()

    image = mms.locator(".media-thumb img")
    await expect(image).to_have_count(1)
    assert await image_loaded(page, image)
    await expect(mms.locator(".message-media")).to_have_attribute("data-media-state", "loaded")
    contact = page.locator(f'#contact-list [data-contact-id="{contact_id}"]')
    await expect(contact.locator(".contact-preview")).to_have_text("You: 1 attachment")
    assert await page.evaluate("window.__stillTheSamePage") is True, "the page was reloaded"
    no_script_errors(page)
