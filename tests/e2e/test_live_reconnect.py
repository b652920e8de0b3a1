"""The inbox keeps up across the ends of its event stream.

The app ends every SSE stream after ``LOQUENT_SSE_MAX_STREAM_SECONDS`` (3 s here); the
browser reconnects with ``Last-Event-ID`` and the server replays what the page missed, or
sends ``resync`` when that is no longer in the event log, and the page re-fetches.

To make "the stream is down" deterministic, a test holds the page's next ``/api/events``
request (Playwright routing) until it has done what it wants to happen meanwhile.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Request, Route, expect

from tests.e2e.conftest import SHORT_STREAM_SECONDS
from tests.e2e.pages import WAIT_MS, no_script_errors, sign_in

pytestmark = pytest.mark.e2e

EVENTS = re.compile(r"/api/events(\?|$)")

# Records the id and type of every event the page's EventSource delivers, in order. (The
# browser sends Last-Event-ID itself on a reconnect, below what routing can show, so what
# the page receives is how a test tells a replay from a repeat.)
RECORD_EVENTS = """
window.__events = [];
const addListener = EventSource.prototype.addEventListener;
EventSource.prototype.addEventListener = function (type, listener, options) {
  const recording = (event) => {
    if (event.lastEventId !== undefined) window.__events.push([type, event.lastEventId]);
    return listener.call(this, event);
  };
  return addListener.call(this, type, recording, options);
};
"""


@dataclass
class Traffic:
    """The page's requests to the event stream and to the conversation feed, in order."""

    streams: list[Request] = field(default_factory=list)
    feed_fetches: list[Request] = field(default_factory=list)

    def watch(self, page: Page, contact_id: int) -> None:
        feed = f"/api/contacts/{contact_id}/messages"

        def seen(request: Request) -> None:
            if EVENTS.search(request.url):
                self.streams.append(request)
            elif feed in request.url:
                self.feed_fetches.append(request)

        page.on("request", seen)


@dataclass
class StreamGate:
    """Holds the page's next connection to ``/api/events`` until released."""

    held: asyncio.Queue[Route] = field(default_factory=asyncio.Queue)
    closed: bool = True

    async def handle(self, route: Route) -> None:
        if self.closed:
            await self.held.put(route)
        else:
            await route.continue_()

    async def next_reconnect(self, timeout_s: float = SHORT_STREAM_SECONDS + 10) -> Route:
        return await asyncio.wait_for(self.held.get(), timeout_s)

    async def release(self, route: Route) -> None:
        self.closed = False
        await route.continue_()


@asynccontextmanager
async def gate_streams(page: Page) -> AsyncIterator[StreamGate]:
    gate = StreamGate()
    await page.route(EVENTS, gate.handle)
    try:
        yield gate
    finally:
        gate.closed = False
        await page.unroute(EVENTS, gate.handle)


async def open_conversation(
    browser: Browser, stack: Any, phone: str, body: str
) -> tuple[Page, int, Traffic]:
    """A conversation with one delivered text, open in a signed-in page that is live."""
    stack.console_sms("acme", phone, body)
    contact_id = stack.contact_id("acme", phone)
    stack.wait_body_ready("acme", contact_id)
    page = await sign_in(browser, stack, "acme")
    traffic = Traffic()
    traffic.watch(page, contact_id)
    await page.add_init_script(RECORD_EVENTS)
    await page.goto(f"{stack.app_url}/messaging/{contact_id}")
    await expect(page.locator("#feed [data-message-id]")).to_have_count(1)
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")
    await page.evaluate("window.__stillTheSamePage = true")
    return page, contact_id, traffic


async def received_events(page: Page) -> list[tuple[str, int]]:
    """(type, id) of each event the page got, in order; stream lifecycle events left out."""
    events = await page.evaluate("window.__events")
    return [(kind, int(event_id)) for kind, event_id in events if event_id]


async def still_the_same_page(page: Page) -> None:
    assert await page.evaluate("window.__stillTheSamePage") is True, "the page was reloaded"


async def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.asyncio
async def test_the_page_reconnects_and_stays_live(
    browser: Browser, short_stream_stack: Any
) -> None:
    stack = short_stream_stack
    phone = "+12025550180"
    page, contact_id, traffic = await open_conversation(
        browser, stack, phone, "Reminder: cleaning tomorrow at 9."
    )
    feed = page.locator("#feed [data-message-id]")
    opened = len(traffic.streams)

    # Outlive two streams: the page must have opened two more without being reloaded.
    await wait_until(
        lambda: len(traffic.streams) >= opened + 2,
        timeout_s=3 * SHORT_STREAM_SECONDS + 10,
        what="the page to reconnect twice",
    )
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    body = "Running 10 minutes late, sorry!"
    stack.sim(
        "POST",
        f"/accounts/{stack.orgs['acme'].account_sid}/inbound-sms",
        json={"from": phone, "to": stack.orgs["acme"].lines[0], "body": body, "wait": True},
    )
    await expect(feed).to_have_count(2)
    await expect(feed.last.locator(".message-body")).to_have_text(body)
    await expect(page.locator("#contact-list [data-contact-id]").first).to_have_attribute(
        "data-contact-id", str(contact_id)
    )
    await still_the_same_page(page)
    no_script_errors(page)


@pytest.mark.asyncio
async def test_a_text_sent_while_the_stream_is_down_is_replayed(
    browser: Browser, short_stream_stack: Any
) -> None:
    stack = short_stream_stack
    phone = "+12025550181"
    page, contact_id, traffic = await open_conversation(
        browser, stack, phone, "Your crown is ready."
    )
    feed = page.locator("#feed [data-message-id]")
    # One text while live, so the page has an event id to resume from.
    stack.console_sms("acme", phone, "Please call to book the fitting.")
    await expect(feed).to_have_count(2)
    await expect(feed.last.locator(".message-body")).to_have_text(
        "Please call to book the fitting."
    )

    async with gate_streams(page) as gate:
        route = await gate.next_reconnect()  # the stream has ended; the page is reconnecting
        seen = await received_events(page)
        assert seen, "the page got no event to resume from"

        missed = "We moved your fitting to Friday at 2."
        stack.console_sms("acme", phone, missed)
        stack.wait_body_ready("acme", contact_id)
        await expect(feed).to_have_count(2)  # nothing can reach the page meanwhile
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "reconnecting")
        fetched_before = len(traffic.feed_fetches)

        await gate.release(route)
        await expect(feed).to_have_count(3)
        await expect(feed.last.locator(".message-body")).to_have_text(missed)
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    # Replayed from the event log, not re-fetched: the feed was not asked for again, and the
    # replay started after the last event the page had (nothing it saw came twice).
    assert len(traffic.feed_fetches) == fetched_before
    replayed = (await received_events(page))[len(seen) :]
    assert replayed, replayed
    assert replayed[0][0] == "messaging.message.new", replayed
    assert min(event_id for _, event_id in replayed) > max(event_id for _, event_id in seen)
    await still_the_same_page(page)
    no_script_errors(page)


def prune_event_log_to_newest(database_url: str) -> tuple[int, int]:
    """Delete every event but the newest, as pruning by age would after a long absence.
    Returns (events deleted, newest id)."""
    path = database_url.removeprefix("sqlite+aiosqlite:///")
    with sqlite3.connect(path, timeout=10) as db:
        (newest,) = db.execute("SELECT max(id) FROM event_log").fetchone()
        deleted = db.execute("DELETE FROM event_log WHERE id < ?", (newest,)).rowcount
    return deleted, newest


@pytest.mark.asyncio
async def test_a_gap_the_log_no_longer_holds_makes_the_page_resync(
    browser: Browser, short_stream_stack: Any
) -> None:
    stack = short_stream_stack
    phone, newcomer = "+12025550182", "+12025550183"
    page, contact_id, traffic = await open_conversation(
        browser, stack, phone, "Your aligners have shipped."
    )
    feed = page.locator("#feed [data-message-id]")
    contacts = page.locator("#contact-list [data-contact-id]")
    stack.console_sms("acme", phone, "They should arrive Monday.")
    await expect(feed).to_have_count(2)

    async with gate_streams(page) as gate:
        route = await gate.next_reconnect()
        assert await received_events(page), "the page got no event to resume from"

        # Texts the page misses, and then the events announcing them are pruned away.
        missed = "Tracking number: 1Z999AA10123456784."
        stack.console_sms("acme", phone, missed)
        stack.wait_body_ready("acme", contact_id)
        stack.console_sms("acme", newcomer, "Welcome to Acme Clinic!")
        stack.wait_body_ready("acme", stack.contact_id("acme", newcomer))
        deleted, _ = prune_event_log_to_newest(stack.database_url)
        assert deleted > 0
        await expect(feed).to_have_count(2)
        fetched_before = len(traffic.feed_fetches)

        await gate.release(route)
        # The page re-fetches: the missed text is in the feed, the newcomer tops the list.
        await expect(feed).to_have_count(3)
        await expect(feed.last.locator(".message-body")).to_have_text(missed)
        await expect(contacts.first.locator(".contact-name")).to_have_text(newcomer)
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "live")

    assert len(traffic.feed_fetches) > fetched_before
    assert (await received_events(page))[-1][0] == "resync"
    await still_the_same_page(page)

    # And it is live again from where the server told it to resume.
    stack.console_sms("acme", phone, "Delivered!")
    await expect(feed).to_have_count(4, timeout=WAIT_MS)
    no_script_errors(page)


@pytest.mark.asyncio
async def test_a_resync_after_a_long_gap_leaves_no_hole_in_the_feed(
    browser: Browser, short_stream_stack: Any
) -> None:
    stack = short_stream_stack
    phone = "+12025550184"
    page, _, _ = await open_conversation(browser, stack, phone, "Welcome back!")
    feed = page.locator("#feed [data-message-id]")
    stack.console_sms("acme", phone, "Your next visit is in March.")
    await expect(feed).to_have_count(2)
    await expect(page.locator("#load-older")).to_be_hidden()

    backlog = 52  # more than the feed's first page (50), so the newest page leaves a gap
    async with gate_streams(page) as gate:
        route = await gate.next_reconnect()
        for n in range(1, backlog + 1):
            stack.console_sms(
                "acme", phone, f"Backlog {n}", statuses=["delivered"], include_body=True
            )
        prune_event_log_to_newest(stack.database_url)
        await gate.release(route)

        await expect(feed.last.locator(".message-body")).to_have_text(f"Backlog {backlog}")
        await expect(feed).to_have_count(50)
        await expect(feed.first.locator(".message-body")).to_have_text("Backlog 3")

    # Paging back reaches every message in between, in order, each once.
    await page.click("#load-older")
    await expect(feed).to_have_count(backlog + 2)
    bodies = await page.locator("#feed .message-body").all_inner_texts()
    assert bodies == [
        "Welcome back!",
        "Your next visit is in March.",
        *(f"Backlog {n}" for n in range(1, backlog + 1)),
    ]
    await expect(page.locator("#load-older")).to_be_hidden()
    await still_the_same_page(page)
    no_script_errors(page)
