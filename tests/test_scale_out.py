"""Several app processes: events written through one reach SSE streams on another via Redis."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from loquent.app import create_app
from loquent.servers import ServerThread, free_port
from tests.conftest import Stack, make_settings
from tests.support.twilio import new_sid, status_event
from tests.test_realtime import sse

REDIS_ENV = "LOQUENT_TEST_REDIS_URL"


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: Redis fan-out test skipped")
    return url


async def test_an_event_posted_to_one_process_wakes_a_stream_on_another(
    database_url: str, redis_url: str
) -> None:
    from tests.conftest import running_stack

    # Long poll interval: only a Redis wake-up can deliver within the deadline below.
    slow_poll = {"redis_url": redis_url, "sse_poll_seconds": 30.0}
    async with running_stack(database_url, **slow_poll) as first:
        port = free_port()
        second_server = ServerThread(
            create_app(make_settings(database_url, port, **slow_poll)), port=port
        )
        await asyncio.to_thread(second_server.start)
        try:
            second = Stack(
                url=second_server.url,
                db=first.db,
                settings=first.settings,
                server=second_server,
                orgs=first.orgs,
            )
            async with sse(second, first.org) as stream:
                started = time.monotonic()
                event = status_event(
                    "sent",
                    sid=new_sid("SM"),
                    account=first.org.account_sid,
                    from_=first.org.lines[0],
                    to="+14155550199",
                )
                assert (await first.post_events([event])).status_code == 200
                frame = await stream.next(timeout=10)
                assert frame["event"] == "messaging.message.new"
                assert time.monotonic() - started < 5
        finally:
            await asyncio.to_thread(second_server.stop)
