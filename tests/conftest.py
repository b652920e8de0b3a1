"""Shared fixtures: a real database (SQLite file, and PostgreSQL when configured), the app
and the Twilio simulator on real loopback servers."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from loquent.app import create_app
from loquent.config import Settings
from loquent.db import Database
from loquent.migrate import upgrade
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.servers import ServerThread
from tests.support.twilio import new_sid, signed_request

PG_ENV = "LOQUENT_TEST_POSTGRES_URL"
SECRET = "test-secret-key"


def _in_thread(fn: Any, *args: Any) -> Any:
    """Run blocking/asyncio.run code outside the test's event loop."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["value"] = fn(*args)
        except BaseException as exc:
            result["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _pg_admin_dsn() -> str:
    return os.environ[PG_ENV].replace("postgresql+asyncpg://", "postgresql://")


async def _pg_exec(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(_pg_admin_dsn())
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _pg_url_for(name: str) -> str:
    base = os.environ[PG_ENV].rsplit("/", 1)[0]
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    """A fresh, migrated database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/loquent.db"
        _in_thread(upgrade, url)
        yield url
        return
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL variant skipped")
    name = "loquent_t_" + secrets.token_hex(6)
    _in_thread(asyncio.run, _pg_exec(f'CREATE DATABASE "{name}"'))
    url = _pg_url_for(name)
    try:
        _in_thread(upgrade, url)
        yield url
    finally:
        _in_thread(asyncio.run, _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/loquent.db"
    _in_thread(upgrade, url)
    return url


@dataclass
class Org:
    id: int
    account_sid: str
    auth_token: str
    api_token: str
    lines: list[str]


@dataclass
class Stack:
    """The app on a real port, its database, and helpers to talk to both."""

    url: str
    db: Database
    settings: Settings
    server: ServerThread
    orgs: list[Org] = field(default_factory=list)
    sim_url: str | None = None

    @property
    def org(self) -> Org:
        return self.orgs[0]

    async def post_events(
        self,
        events: Any,
        *,
        org: Org | None = None,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        org = org or self.org
        url, body, signed = signed_request(self.url, events, token or org.auth_token)
        async with _client(client) as http:
            return await http.post(url, content=body, headers={**signed, **(headers or {})})

    async def get(self, path: str, *, org: Org | None = None, **kw: Any) -> httpx.Response:
        org = org or self.org
        async with httpx.AsyncClient(timeout=10) as http:
            return await http.get(
                self.url + path, headers={"Authorization": f"Bearer {org.api_token}"}, **kw
            )

    async def count(self, model: Any, *where: Any) -> int:
        async with self.db.reader() as session:
            stmt = select(func.count()).select_from(model)
            for clause in where:
                stmt = stmt.where(clause)
            return int((await session.execute(stmt)).scalar_one())

    async def rows(self, model: Any, *where: Any) -> list[Any]:
        async with self.db.reader() as session:
            stmt = select(model)
            for clause in where:
                stmt = stmt.where(clause)
            return list((await session.execute(stmt.order_by(model.id))).scalars())

    async def add_org(self, name: str, lines: list[str], account_sid: str | None = None) -> Org:
        account_sid = account_sid or new_sid("AC")
        auth_token = secrets.token_hex(16)
        box = SecretBox(self.settings.secret_keys)
        async with self.db.session() as session:
            org = await orgs.create_organization(
                session,
                box,
                name=name,
                twilio_account_sid=account_sid,
                twilio_auth_token=auth_token,
            )
            for number in lines:
                await orgs.add_phone_number(session, org.id, number)
            user = await orgs.get_or_create_user(session, f"{secrets.token_hex(4)}@example.com")
            await orgs.ensure_member(session, user, org.id, "owner")
            api_token = await orgs.create_api_token(session, user, org.id)
            await session.commit()
        created = Org(org.id, account_sid, auth_token, api_token, lines)
        self.orgs.append(created)
        return created


class _client:
    def __init__(self, client: httpx.AsyncClient | None) -> None:
        self._given = client
        self._own: httpx.AsyncClient | None = None

    async def __aenter__(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        self._own = httpx.AsyncClient(timeout=20)
        return self._own

    async def __aexit__(self, *exc: Any) -> None:
        if self._own is not None:
            await self._own.aclose()


def make_settings(database_url: str, port: int, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "public_url": f"http://127.0.0.1:{port}",
        "secret_key": SECRET,
        "twilio_api_base": "http://127.0.0.1:9",  # nothing listens: overridden where needed
        "twilio_events_api_base": "http://127.0.0.1:9",
        "twilio_timeout_seconds": 2.0,
        "run_worker": False,
        "worker_poll_seconds": 0.5,
        "enrich_backoff_base_seconds": 0.05,
        "enrich_backoff_max_seconds": 0.5,
        "sse_ping_seconds": 5.0,
        "sse_poll_seconds": 1.0,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_stack(database_url: str, **overrides: Any) -> AsyncIterator[Stack]:
    """The app on a free loopback port with one connected organization owning two lines."""
    from loquent.servers import free_port

    port = free_port()
    settings = make_settings(database_url, port, **overrides)
    server = ServerThread(create_app(settings), port=port)
    await asyncio.to_thread(server.start)
    db = Database(database_url)
    stack = Stack(url=server.url, db=db, settings=settings, server=server)
    try:
        await stack.add_org("Acme", ["+14155550100", "+14155550101"])
        yield stack
    finally:
        await asyncio.to_thread(server.stop)
        await db.dispose()


@pytest.fixture
async def stack(database_url: str) -> AsyncIterator[Stack]:
    async with running_stack(database_url) as running:
        yield running
