"""Acknowledge only what is stored: storage trouble is a 503 (Twilio retries), never a 2xx."""

from __future__ import annotations

import asyncio
import sqlite3
import threading

import httpx

from loquent.app import create_app
from loquent.messaging.models import Message
from tests.conftest import make_settings, running_stack
from tests.support.servers import ServerThread, free_port
from tests.support.twilio import new_sid, signed_request, status_event


async def test_database_down_answers_503() -> None:
    port = free_port()
    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:1/nowhere", port)
    server = ServerThread(create_app(settings), port=port)
    await asyncio.to_thread(server.start)
    try:
        event = status_event(
            "sent",
            sid=new_sid("SM"),
            account=new_sid("AC"),
            from_="+14155550100",
            to="+14155550199",
        )
        url, body, headers = signed_request(server.url, [event], "whatever")
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(url, content=body, headers=headers)
            health = await http.get(f"{server.url}/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["error"]["code"] == "storage_unavailable"
        assert response.headers["retry-after"]
        assert health.status_code == 503
    finally:
        await asyncio.to_thread(server.stop)


async def test_a_lock_timeout_answers_503_and_the_retry_succeeds(sqlite_url: str) -> None:
    async with running_stack(sqlite_url, sqlite_busy_timeout_ms=300) as stack:
        path = sqlite_url.split("///", 1)[1]
        holding = threading.Event()
        release = threading.Event()

        def hold_write_lock() -> None:  # another process writing for a long time
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(10)
            conn.execute("ROLLBACK")
            conn.close()

        holder = threading.Thread(target=hold_write_lock)
        holder.start()
        holding.wait(5)
        sid = new_sid("SM")
        event = status_event(
            "sent", sid=sid, account=stack.org.account_sid, from_="+14155550100", to="+14155550199"
        )
        try:
            response = await stack.post_events([event])
        finally:
            release.set()
            holder.join()
        assert response.status_code == 503, response.text
        assert await stack.count(Message) == 0
        retried = await stack.post_events([event])  # what Twilio does next
        assert retried.status_code == 200
        assert await stack.count(Message) == 1
