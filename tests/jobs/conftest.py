"""Fixtures for the job tests: a real SQLite file, and the Twilio simulator on a loopback port.

Every test that uses the database runs on SQLite; set LOQUENT_TEST_POSTGRES_URL (a scratch
``postgresql+asyncpg://`` database the tests may wipe) to run them on PostgreSQL as well.

The simulator runs under uvicorn in a thread of its own (``loquent.simulator.server``), so it
does not care which event loop a test runs on. Tests drive it through its ``/_sim`` control
API: accounts, seeded messages, fault rules, the request log.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from pydantic import SecretStr
from sqlalchemy import select

import loquent.models  # noqa: F401 - registers every table on Base.metadata
from loquent.config import Settings
from loquent.contacts.models import Contact
from loquent.db import Database, utcnow
from loquent.jobs.worker import Worker
from loquent.messaging.models import Message
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.realtime.models import EventLogEntry
from loquent.realtime.notifier import Notifier
from loquent.servers import ServerThread
from loquent.simulator.server import simulator_thread

POSTGRES_URL_ENV = "LOQUENT_TEST_POSTGRES_URL"
LINE = "+15550001000"  # the organization's own number
CUSTOMER = "+15550002000"


class SimControl:
    """The simulator's ``/_sim`` control API, as the tests use it."""

    def __init__(self, server: ServerThread) -> None:
        self.url = server.url
        self.port = server.port
        self._http = httpx.Client(base_url=f"{server.url}/_sim", timeout=10)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def reset(self) -> None:
        self._call("POST", "/reset")

    def create_account(self) -> dict[str, Any]:
        return self._call("POST", "/accounts", json={})

    def rotate_token(self, account_sid: str) -> str:
        return self._call("POST", f"/accounts/{account_sid}/rotate-token", json={})["auth_token"]

    def seed_message(
        self,
        account_sid: str,
        *,
        body: str = "",
        media_urls: list[str] | None = None,
        date_created: datetime | None = None,
    ) -> str:
        message: dict[str, Any] = {
            "from": LINE,
            "to": CUSTOMER,
            "body": body,
            "media_urls": media_urls or [],
        }
        if date_created is not None:
            message["date_created"] = date_created.isoformat()
        result = self._call(
            "POST", f"/accounts/{account_sid}/messages", json={"messages": [message]}
        )
        return str(result["sids"][0])

    def fault(self, path_regex: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/faults", json={"path_regex": path_regex, **fields})

    def requests(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        params = {"path_contains": path_contains} if path_contains else None
        return list(self._call("GET", "/requests", params=params))

    def patch_config(self, **fields: Any) -> None:
        self._call("PATCH", "/config", json=fields)

    def media_fetches(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/media-fetches"))


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimControl]:
    with simulator_thread() as server:
        control = SimControl(server)
        yield control
        control.close()


@pytest.fixture
def sim(simulator: SimControl) -> SimControl:
    simulator.reset()
    return simulator


@pytest.fixture
def settings(database_url: str, sim: SimControl) -> Settings:
    """Small timings, so retries and backoff play out in well under a second each."""
    return Settings(
        database_url=database_url,
        secret_key=SecretStr("jobs-test-secret"),
        twilio_api_base=sim.url,
        twilio_timeout_seconds=0.5,
        worker_poll_seconds=0.25,
        worker_batch_size=10,
        worker_per_org_concurrency=2,
        worker_lease_seconds=10.0,
        # Transient failures are retried for 20 s at most 0.2 s apart (the defaults: 24 h,
        # 5 min); tests that watch the deadline pass shorten it further.
        enrich_deadline_seconds=20.0,
        enrich_backoff_base_seconds=0.05,
        enrich_backoff_max_seconds=0.2,
        enrich_not_found_attempts=3,
        enrich_max_attempts=500,
        event_log_retention_hours=1.0,
    )


@pytest.fixture
def box(settings: Settings) -> SecretBox:
    return SecretBox(settings.secret_keys)


@pytest_asyncio.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    # `database_url` (tests/conftest.py) is a fresh, migrated SQLite file or PostgreSQL database.
    database = Database(settings.database_url)
    yield database
    await database.dispose()


@pytest.fixture
def notifier() -> Notifier:
    return Notifier()


@dataclass(frozen=True)
class Tenant:
    org_id: int
    contact_id: int
    account_sid: str
    auth_token: str


@pytest.fixture
def make_tenant(db: Database, box: SecretBox, sim: SimControl) -> Callable[..., Awaitable[Tenant]]:
    """An organization connected to a fresh simulator account, with one contact."""

    async def make(name: str = "Acme", *, connected: bool = True) -> Tenant:
        account = sim.create_account()
        async with db.session() as session:
            org = Organization(name=name)
            if connected:
                org.twilio_account_sid = account["sid"]
                org.twilio_auth_token = box.encrypt(account["auth_token"])
            session.add(org)
            await session.flush()
            contact = Contact(organization_id=org.id, source="external_sms")
            session.add(contact)
            await session.flush()
            tenant = Tenant(org.id, contact.id, account["sid"], account["auth_token"])
            await session.commit()
        return tenant

    return make


class Store:
    """Direct access to the rows the tests arrange and inspect."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def add_pending(
        self,
        tenant: Tenant,
        sid: str | None = None,
        *,
        due_in: float = 0.0,
        locked_for: float | None = None,
    ) -> int:
        """A captured message waiting for its body, as capture leaves it."""
        now = utcnow()
        async with self.db.session() as session:
            message = Message(
                organization_id=tenant.org_id,
                contact_id=tenant.contact_id,
                direction="outbound",
                from_address=LINE,
                to_address=CUSTOMER,
                body=None,
                status="sent",
                source="external",
                external_id=sid or "SM" + secrets.token_hex(16),
                created_at=now,
                updated_at=now,
                body_state="pending",
                body_attempts=0,
                body_next_attempt_at=now + timedelta(seconds=due_in),
                body_locked_until=(
                    None if locked_for is None else now + timedelta(seconds=locked_for)
                ),
            )
            session.add(message)
            await session.commit()
            return message.id

    async def message(self, message_id: int) -> Message:
        async with self.db.reader() as session:
            message = await session.get(Message, message_id)
            assert message is not None
            return message

    async def org(self, org_id: int) -> Organization:
        async with self.db.reader() as session:
            org = await session.get(Organization, org_id)
            assert org is not None
            return org

    async def events(self, org_id: int) -> list[EventLogEntry]:
        async with self.db.reader() as session:
            result = await session.execute(
                select(EventLogEntry)
                .where(EventLogEntry.organization_id == org_id)
                .order_by(EventLogEntry.id)
            )
            return list(result.scalars())


@pytest.fixture
def store(db: Database) -> Store:
    return Store(db)


@pytest_asyncio.fixture
async def make_worker(
    db: Database, notifier: Notifier, settings: Settings, box: SecretBox
) -> AsyncIterator[Callable[..., Awaitable[Worker]]]:
    """Start workers (several may share the database, like separate processes); all are
    stopped at teardown."""
    started: list[Worker] = []

    async def make(worker_settings: Settings | None = None, **kwargs: Any) -> Worker:
        worker = Worker(
            db=db, notifier=notifier, settings=worker_settings or settings, box=box, **kwargs
        )
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await worker.stop(grace=1.0)
