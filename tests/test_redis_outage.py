"""Redis is a wake-up, not a dependency: a hung Redis never delays a webhook's answer, a Redis
that is down at boot does not stop ``loquent serve``, /readyz says so, and cross-process
wake-ups resume by themselves when Redis comes back."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from loquent.app import create_app
from loquent.servers import ServerThread, free_port
from tests.conftest import Stack, make_settings, running_stack
from tests.support.app_process import LoquentProcess, base_env
from tests.support.twilio import new_sid, signed_request, status_event
from tests.test_realtime import sse

pytestmark = pytest.mark.timeout(120)

REDIS_ENV = "LOQUENT_TEST_REDIS_URL"
LINE = "+14155550100"


@contextlib.asynccontextmanager
async def hung_redis() -> AsyncIterator[int]:
    """A server that accepts connections, reads whatever is sent, and never answers."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(Exception):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for writer in connections:
            writer.close()


@contextlib.asynccontextmanager
async def forwarder(port: int, target_host: str, target_port: int) -> AsyncIterator[None]:
    """Plays "Redis is back" on ``port``: every connection is relayed to the real Redis."""
    writers: list[asyncio.StreamWriter] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, target_port)
        writers.extend([writer, up_writer])
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for writer in writers:
            writer.close()


def _event(account: str) -> dict[str, object]:
    return status_event("sent", sid=new_sid("SM"), account=account, from_=LINE, to="+14155550199")


async def test_a_hung_redis_never_delays_the_webhook(sqlite_url: str) -> None:
    async with hung_redis() as port:
        started = time.monotonic()
        async with running_stack(sqlite_url, redis_url=f"redis://127.0.0.1:{port}/0") as stack:
            assert time.monotonic() - started < 15  # it started at all, and soon
            for _ in range(3):
                sent = time.monotonic()
                answer = await stack.post_events([_event(stack.org.account_sid)])
                assert answer.status_code == 200, answer.text
                assert time.monotonic() - sent < 1.0
            async with httpx.AsyncClient(timeout=10) as http:
                ready = await http.get(f"{stack.url}/readyz")
            assert ready.status_code == 503
            assert ready.json() == {"status": "unavailable", "database": "ok", "redis": "down"}


async def test_serve_starts_with_redis_down_and_webhooks_work(tmp_path: Path) -> None:
    port, closed = free_port(), free_port()
    app = LoquentProcess(
        base_env(
            tmp_path,
            port,
            LOQUENT_REDIS_URL=f"redis://127.0.0.1:{closed}/0",
            # Answer "degraded" rather than 503: the instance works without Redis.
            LOQUENT_READYZ_REQUIRE_REDIS="false",
            LOQUENT_RUN_WORKER="false",
            LOQUENT_LOG_LEVEL="WARNING",
        ),
        port,
        tmp_path / "app.log",
    )
    account, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    await asyncio.to_thread(app.cli, "migrate")
    org = await asyncio.to_thread(
        app.cli_json,
        "org",
        "create",
        "--name",
        "No Redis",
        "--twilio-account-sid",
        account,
        LOQUENT_TWILIO_AUTH_TOKEN=token,
    )
    await asyncio.to_thread(app.cli, "number", "add", "--org", str(org["id"]), LINE)
    await asyncio.to_thread(app.serve)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            ready = await http.get(f"{app.url}/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"status": "degraded", "database": "ok", "redis": "down"}
            url, body, headers = signed_request(app.url, [_event(account)], token)
            sent = time.monotonic()
            answer = await http.post(url, content=body, headers=headers)
            assert answer.status_code == 200, answer.text
            assert time.monotonic() - sent < 1.0
    finally:
        await asyncio.to_thread(app.stop)


async def test_cross_process_wakeups_resume_when_redis_comes_back(database_url: str) -> None:
    real = os.environ.get(REDIS_ENV)
    if not real:
        pytest.skip(f"{REDIS_ENV} is not set: Redis recovery test skipped")
    target = urlsplit(real)
    redis_port = free_port()  # nothing listens here yet: Redis is "down"
    redis_url = f"redis://127.0.0.1:{redis_port}{target.path or '/0'}"
    slow_poll = {"redis_url": redis_url, "sse_poll_seconds": 30.0}
    async with running_stack(database_url, **slow_poll) as first:
        port = free_port()
        second_server = ServerThread(
            create_app(make_settings(database_url, port, **slow_poll)), port=port
        )
        await asyncio.to_thread(second_server.start)
        second = Stack(
            url=second_server.url,
            db=first.db,
            settings=first.settings,
            server=second_server,
            orgs=first.orgs,
        )
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                ready = await http.get(f"{second.url}/readyz")
                assert ready.json()["redis"] == "down"
                answer = await first.post_events([_event(first.org.account_sid)])
                assert answer.status_code == 200

                real_host, real_port = target.hostname or "127.0.0.1", target.port or 6379
                async with forwarder(redis_port, real_host, real_port):
                    for stack in (first, second):  # both subscribe again within the backoff
                        for _ in range(150):
                            if (await http.get(f"{stack.url}/readyz")).json()["redis"] == "ok":
                                break
                            await asyncio.sleep(0.1)
                        else:
                            raise AssertionError("readyz never saw Redis come back")
                    async with sse(second, first.org) as stream:
                        started = time.monotonic()
                        answer = await first.post_events([_event(first.org.account_sid)])
                        assert answer.status_code == 200
                        frame = await stream.next(timeout=10)
                        while frame["event"] != "messaging.message.new":
                            frame = await stream.next(timeout=10)
                        assert time.monotonic() - started < 5
        finally:
            await asyncio.to_thread(second_server.stop)
