"""SSE fan-out over a real server: one event-log read per organization per wake-up for any
number of streams, every stream gets every event once and in order, a client that stops
reading is dropped without holding anyone else up, replay joins the live feed seamlessly."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from prometheus_client import REGISTRY
from sqlalchemy import event

from loquent.context import AppContext
from tests.conftest import Org, Stack, running_stack
from tests.support.twilio import inbound_event, new_sid
from tests.test_realtime import SseClient
from tests.test_realtime import event as status

QUIET = {"sse_poll_seconds": 30.0}  # no poll ticks: every read below is a wake-up's


def server_ctx(stack: Stack) -> AppContext:
    ctx: AppContext = stack.server.app.state.ctx
    return ctx


@contextlib.contextmanager
def event_log_reads(stack: Stack) -> Iterator[Counter[int]]:
    """SELECTs on event_log the server issues, by organization id (their first parameter)."""
    reads: Counter[int] = Counter()

    def count(_conn: Any, _cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and "FROM event_log" in statement:
            reads[int(params[0])] += 1

    engine = server_ctx(stack).db.read_engine.sync_engine
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield reads
    finally:
        event.remove(engine, "before_cursor_execute", count)


def reads_metric(kind: str) -> float:
    return REGISTRY.get_sample_value("loquent_event_log_reads_total", {"kind": kind}) or 0.0


async def until_subscribed(stack: Stack, org: Org, count: int) -> None:
    hub = server_ctx(stack).hub
    for _ in range(300):
        if hub.subscriber_count(org.id) == count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{hub.subscriber_count(org.id)} subscribers, expected {count}")


async def open_streams(stack: Stack, org: Org, n: int, **kw: Any) -> list[SseClient]:
    clients = [SseClient(stack, org, **kw) for _ in range(n)]
    for wave in range(0, n, 8):  # a few at a time: the machine running this may be busy
        await asyncio.gather(*(c.__aenter__() for c in clients[wave : wave + 8]))
    return clients


async def close_streams(clients: list[SseClient]) -> None:
    await asyncio.gather(*(c.__aexit__(None, None, None) for c in clients))


async def test_many_streams_get_every_event_once_in_order_from_one_read_per_wakeup(
    database_url: str,
) -> None:
    async with running_stack(database_url, **QUIET) as stack:
        other = await stack.add_org("Other", ["+14155550177"])
        ours = await open_streams(stack, stack.org, 40)
        theirs = await open_streams(stack, other, 5)
        await until_subscribed(stack, stack.org, 40)
        await until_subscribed(stack, other, 5)
        sids = [new_sid("SM") for _ in range(8)]
        got: list[list[tuple[int, str]]] = [[] for _ in ours]
        try:
            before = {kind: reads_metric(kind) for kind in ("live", "recheck")}
            with event_log_reads(stack) as reads:
                for sid in sids:
                    await stack.post_events([status(stack, "sent", sid)])
                    frames = await asyncio.gather(*(c.next() for c in ours))
                    for seen, frame in zip(got, frames, strict=True):
                        seen.append((int(frame["id"]), frame["json"]["payload"]["external_id"]))
            for seen in got:
                assert [sid for _, sid in seen] == sids
                assert [i for i, _ in seen] == sorted({i for i, _ in seen})
            assert len({tuple(seen) for seen in got}) == 1  # the same ids everywhere
            assert all(await asyncio.gather(*(c.none_within(0.5) for c in ours + theirs)))
            # One read per wake-up for 40 streams (one per stream would be 320). On
            # PostgreSQL the feed re-checks shortly while another transaction on the
            # server holds the horizon back: still one read per organization, not per stream.
            assert reads[other.id] == 0
            live = reads_metric("live") - before["live"]
            rechecks = reads_metric("recheck") - before["recheck"]
            assert live == len(sids)
            assert reads[stack.org.id] == live + rechecks
            if stack.db.dialect == "sqlite":
                assert rechecks == 0
        finally:
            await close_streams(ours + theirs)
        await until_subscribed(stack, stack.org, 0)  # the feed stops with its last stream


async def test_a_client_that_stops_reading_is_dropped_and_nobody_waits_for_it(
    database_url: str,
) -> None:
    async with running_stack(database_url, sse_backlog=16, **QUIET) as stack:
        healthy = await open_streams(stack, stack.org, 3)
        stalled = await stalled_stream(stack, stack.org)
        dropped_before = REGISTRY.get_sample_value("loquent_sse_dropped_total") or 0.0
        await until_subscribed(stack, stack.org, 4)
        # ~3.6 MB: loopback socket buffers absorb close to 3 MB before a write blocks.
        sids = [new_sid("SM") for _ in range(360)]
        try:
            for start in range(0, len(sids), 40):
                batch = [
                    inbound_event(
                        sid=sid,
                        account=stack.org.account_sid,
                        from_=f"+1415555{n:04d}",
                        to=stack.org.lines[0],
                        body="x" * 10_000,
                    )
                    for n, sid in enumerate(sids[start : start + 40], start)
                ]
                assert (await stack.post_events(batch)).status_code == 200
            for client in healthy:
                frames = [await client.next() for _ in sids]
                assert [f["json"]["payload"]["external_id"] for f in frames] == sids
            await until_subscribed(stack, stack.org, 3)
            dropped = REGISTRY.get_sample_value("loquent_sse_dropped_total") or 0.0
            assert dropped - dropped_before == 1
            # When it reads again it finds a prefix of the events, then the end of its
            # stream: a browser would reconnect with Last-Event-ID and replay.
            received = await asyncio.wait_for(asyncio.to_thread(read_to_end, stalled), 30)
            ids = [int(i) for i in re.findall(rb"^id: (\d+)\r?$", received, re.M)]
            assert 0 < len(ids) < len(sids)
            assert ids == sorted(set(ids))
            assert re.findall(rb'"external_id": "(\w+)"', received) == [
                s.encode() for s in sids[: len(ids)]
            ]
        finally:
            stalled.close()
            await close_streams(healthy)


async def stalled_stream(stack: Stack, org: Org) -> socket.socket:
    """A raw SSE request from a client with a tiny receive buffer that then never reads."""
    url = urlsplit(stack.url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((url.hostname, url.port))
    sock.sendall(
        f"GET /api/events HTTP/1.1\r\nHost: {url.netloc}\r\n"
        f"Authorization: Bearer {org.api_token}\r\nConnection: close\r\n\r\n".encode()
    )
    return sock


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


async def test_replay_from_an_old_cursor_joins_the_live_feed_without_gap_or_duplicate(
    database_url: str,
) -> None:
    async with running_stack(database_url, **QUIET) as stack:
        live = await open_streams(stack, stack.org, 1)
        await until_subscribed(stack, stack.org, 1)
        sids = [new_sid("SM") for _ in range(6)]
        try:
            for sid in sids[:3]:  # the feed moves past these while the late client is away
                await stack.post_events([status(stack, "sent", sid)])
            first = [await live[0].next() for _ in range(3)]
            late = await open_streams(
                stack, stack.org, 1, headers={"Last-Event-ID": first[0]["id"]}
            )
            await until_subscribed(stack, stack.org, 2)
            for sid in sids[3:]:
                await stack.post_events([status(stack, "sent", sid)])
            frames = [await late[0].next() for _ in range(5)]
            assert [f["json"]["payload"]["external_id"] for f in frames] == sids[1:]
            assert await late[0].none_within(0.5)
            await close_streams(late)
        finally:
            await close_streams(live)
