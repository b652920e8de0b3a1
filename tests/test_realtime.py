"""GET /api/events: live delivery, org scoping, Last-Event-ID replay, resync."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from tests.conftest import Org, Stack
from tests.support.twilio import new_sid, status_event

LINE = "+14155550100"


class SseClient:
    """Reads frames from a real SSE connection into a queue."""

    def __init__(
        self, stack: Stack, org: Org, headers: dict[str, str] | None = None, query: str = ""
    ) -> None:
        self.url = f"{stack.url}/api/events{query}"
        self.headers = {"Authorization": f"Bearer {org.api_token}", **(headers or {})}
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.status: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http,
            http.stream("GET", self.url, headers=self.headers) as response,
        ):
            self.status = response.status_code
            self._ready.set()
            frame: dict[str, Any] = {}
            async for line in response.aiter_lines():
                if line == "":
                    if "event" in frame or "data" in frame:
                        await self.frames.put(frame)
                    frame = {}
                elif line.startswith(":"):
                    continue
                else:
                    key, _, value = line.partition(":")
                    frame[key] = value.lstrip(" ")

    async def __aenter__(self) -> SseClient:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), 10)
        await asyncio.sleep(0.2)  # let the stream reach its first read of the log
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        frame = await asyncio.wait_for(self.frames.get(), timeout)
        if "data" in frame:
            frame["json"] = json.loads(frame["data"])
        return frame

    async def none_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.frames.get(), seconds)
        except TimeoutError:
            return True
        return False


@contextlib.asynccontextmanager
async def sse(stack: Stack, org: Org, **kw: Any) -> AsyncIterator[SseClient]:
    async with SseClient(stack, org, **kw) as client:
        yield client


def event(stack: Stack, status: str, sid: str, org: Org | None = None) -> dict[str, Any]:
    org = org or stack.org
    return status_event(
        status, sid=sid, account=org.account_sid, from_=org.lines[0], to="+14155550199"
    )


async def test_client_sees_new_then_status_with_the_message(stack: Stack) -> None:
    sid = new_sid("SM")
    async with sse(stack, stack.org) as stream:
        await stack.post_events([event(stack, "sent", sid)])
        first = await stream.next()
        assert first["event"] == "messaging.message.new"
        assert first["json"]["type"] == "messaging.message.new"
        assert first["json"]["payload"]["external_id"] == sid
        assert first["json"]["payload"]["body"] is None
        await stack.post_events([event(stack, "delivered", sid)])
        second = await stream.next()
        assert second["event"] == "messaging.message.status"
        assert second["json"]["payload"]["status"] == "delivered"
        assert int(second["id"]) > int(first["id"])


async def test_other_orgs_see_nothing(stack: Stack) -> None:
    other = await stack.add_org("Other", ["+14155550177"])
    async with sse(stack, other) as theirs, sse(stack, stack.org) as ours:
        await stack.post_events([event(stack, "sent", new_sid("SM"))])
        assert (await ours.next())["event"] == "messaging.message.new"
        assert await theirs.none_within(1.5)


async def test_last_event_id_replays_exactly_the_missed_events(stack: Stack) -> None:
    sids = [new_sid("SM") for _ in range(4)]
    async with sse(stack, stack.org) as stream:
        await stack.post_events([event(stack, "sent", sids[0])])
        seen = await stream.next()
    for sid in sids[1:]:  # while disconnected
        await stack.post_events([event(stack, "sent", sid)])
    async with sse(stack, stack.org, headers={"Last-Event-ID": seen["id"]}) as stream:
        replayed = [await stream.next() for _ in range(3)]
        assert [f["json"]["payload"]["external_id"] for f in replayed] == sids[1:]
        assert await stream.none_within(1.0)


async def test_after_query_parameter_resumes_too(stack: Stack) -> None:
    sids = [new_sid("SM") for _ in range(2)]
    for sid in sids:
        await stack.post_events([event(stack, "sent", sid)])
    async with sse(stack, stack.org, query="?after=0") as stream:
        got = [(await stream.next())["json"]["payload"]["external_id"] for _ in range(2)]
    assert got == sids


async def test_a_gap_beyond_the_log_sends_resync(stack: Stack) -> None:
    from datetime import timedelta

    from loquent.db import utcnow
    from loquent.realtime import log as event_log
    from loquent.realtime.models import EventLogEntry

    for _ in range(3):
        await stack.post_events([event(stack, "sent", new_sid("SM"))])
    first = (await stack.rows(EventLogEntry))[0].id
    async with stack.db.session() as session:  # prune all but the newest row
        assert await event_log.prune(session, utcnow() + timedelta(hours=1)) == 2
        await session.commit()
    async with sse(stack, stack.org, headers={"Last-Event-ID": str(first)}) as stream:
        frame = await stream.next()
        assert frame["event"] == "resync"
    # A client that had seen everything that was pruned replays normally.
    rows = await stack.rows(EventLogEntry)
    async with sse(stack, stack.org, headers={"Last-Event-ID": str(rows[-1].id - 1)}) as stream:
        frame = await stream.next()
        assert (frame["event"], frame["id"]) == ("messaging.message.new", str(rows[-1].id))


async def test_stream_requires_authentication(stack: Stack) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.get(f"{stack.url}/api/events")
        assert response.status_code == 401
        bad = await http.get(
            f"{stack.url}/api/events",
            headers={"Authorization": f"Bearer {stack.org.api_token}", "Last-Event-ID": "abc"},
        )
        assert bad.status_code == 400
