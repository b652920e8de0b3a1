"""The production shape: two ``loquent serve`` web processes (no embedded worker) and one
``loquent worker`` process on one PostgreSQL database and one Redis, the simulator as Twilio.

What it proves: an event posted to one web process reaches an SSE client of the other; the
body the worker process fetches reaches that client too; a worker killed with SIGKILL while
bodies are mid-fetch loses nothing and stores nothing twice once a new worker starts; and
``/readyz`` and the multi-process ``/metrics`` of a web process see the whole deployment.
Needs LOQUENT_TEST_POSTGRES_URL and LOQUENT_TEST_REDIS_URL; skipped without them.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from loquent.db import Database
from loquent.messaging.events import EVT_MESSAGE_STATUS
from loquent.messaging.models import Message
from loquent.migrate import upgrade
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.realtime.models import EventLogEntry
from loquent.simulator.server import simulator_thread
from tests.conftest import _in_thread, _pg_exec, _pg_url_for
from tests.support.app_process import TEST_SECRET_KEY, LoquentProcess, base_env
from tests.support.servers import free_port
from tests.support.twilio import signed_request, status_event
from tests.test_realtime import SseClient

pytestmark = [pytest.mark.timeout(600), pytest.mark.postgres]

LINE = "+14155550100"
CUSTOMER = "+14155550199"


@pytest.fixture
def pg_url() -> Iterator[str]:
    if not os.environ.get("LOQUENT_TEST_POSTGRES_URL"):
        pytest.skip("LOQUENT_TEST_POSTGRES_URL is not set: production-shape test skipped")
    if not os.environ.get("LOQUENT_TEST_REDIS_URL"):
        pytest.skip("LOQUENT_TEST_REDIS_URL is not set: production-shape test skipped")
    name = "loquent_t_" + secrets.token_hex(6)
    _in_thread(asyncio.run, _pg_exec(f'CREATE DATABASE "{name}"'))
    url = _pg_url_for(name)
    try:
        _in_thread(upgrade, url)
        yield url
    finally:
        _in_thread(asyncio.run, _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


class WorkerProcess:
    """``loquent worker`` as a subprocess (SIGKILL-able)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        with log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loquent.cli", "worker"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest_asyncio.fixture
async def deployment(pg_url: str, tmp_path: Path) -> AsyncIterator[SimpleNamespace]:
    with simulator_thread() as sim_server:
        control = httpx.Client(base_url=f"{sim_server.url}/_sim", timeout=30)
        account = control.post("/accounts", json={}).json()
        db = Database(pg_url)
        box = SecretBox([TEST_SECRET_KEY])
        async with db.session() as session:
            org = await orgs.create_organization(
                session,
                box,
                name="Acme",
                twilio_account_sid=account["sid"],
                twilio_auth_token=account["auth_token"],
            )
            await orgs.add_phone_number(session, org.id, LINE)
            user = await orgs.get_or_create_user(session, "owner@example.com")
            await orgs.ensure_member(session, user, org.id, "owner")
            api_token = await orgs.create_api_token(session, user, org.id)
            await session.commit()
        metrics_dir = tmp_path / "metrics"
        metrics_dir.mkdir()
        shared = {
            "LOQUENT_DATABASE_URL": pg_url,
            "LOQUENT_REDIS_URL": os.environ["LOQUENT_TEST_REDIS_URL"],
            "LOQUENT_RUN_WORKER": "false",
            "LOQUENT_TWILIO_API_BASE": sim_server.url,
            "LOQUENT_CATCHUP_INTERVAL_SECONDS": "0",
            "LOQUENT_WORKER_POLL_SECONDS": "0.5",
            "LOQUENT_WORKER_LEASE_SECONDS": "8",
            "LOQUENT_TWILIO_TIMEOUT_SECONDS": "5",
            "LOQUENT_ENRICH_BACKOFF_BASE_SECONDS": "0.1",
            "LOQUENT_ENRICH_BACKOFF_MAX_SECONDS": "1",
            "LOQUENT_SSE_POLL_SECONDS": "30",  # only a Redis wake-up delivers in time
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        }
        webs = []
        for name in ("a", "b"):
            port = free_port()
            env = base_env(tmp_path, port, **shared)
            webs.append(LoquentProcess(env, port, tmp_path / f"web-{name}.log"))
        worker_env = base_env(tmp_path, free_port(), **shared)
        workers: list[WorkerProcess] = []

        def start_worker() -> WorkerProcess:
            worker = WorkerProcess(worker_env, tmp_path / f"worker-{len(workers)}.log")
            workers.append(worker)
            return worker

        try:
            # Generous: on a loaded machine a cold start of the app takes a while.
            await asyncio.gather(*(asyncio.to_thread(web.serve, timeout=240) for web in webs))
            yield SimpleNamespace(
                a=webs[0],
                b=webs[1],
                control=control,
                account=account,
                db=db,
                org=SimpleNamespace(api_token=api_token, id=org.id),
                start_worker=start_worker,
            )
        finally:
            for worker in workers:
                worker.stop()
            for web in webs:
                web.stop()
            control.close()
            await db.dispose()


def seed(control: httpx.Client, account: str, bodies: list[str]) -> list[str]:
    messages = [{"from": LINE, "to": CUSTOMER, "body": body} for body in bodies]
    result = control.post(f"/accounts/{account}/messages", json={"messages": messages})
    result.raise_for_status()
    return list(result.json()["sids"])


async def post_events(web: LoquentProcess, account: dict[str, Any], events: list[Any]) -> None:
    url, body, headers = signed_request(web.url, events, account["auth_token"])
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.post(url, content=body, headers=headers)
    assert response.status_code == 200, response.text


def sent(account: dict[str, Any], sid: str) -> dict[str, Any]:
    return status_event("sent", sid=sid, account=account["sid"], from_=LINE, to=CUSTOMER)


async def frames_until(stream: SseClient, done: Any, timeout: float) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not done(frames):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out; frames seen: {seen}"
        try:
            frame = await stream.next(timeout=left)
        except TimeoutError:
            raise AssertionError(f"timed out; frames seen: {seen}") from None
        seen.append(frame)
        if frame.get("event", "").startswith("messaging."):
            frames.append(frame)
    return frames


@pytest.mark.asyncio
async def test_events_and_bodies_cross_processes_and_survive_a_killed_worker(
    deployment: SimpleNamespace,
) -> None:
    d = deployment
    (sid,) = seed(d.control, d.account["sid"], ["Hello from the campaign"])
    worker = d.start_worker()

    async with SseClient(SimpleNamespace(url=d.b.url), d.org) as stream:
        await post_events(d.a, d.account, [sent(d.account, sid)])
        frames = await frames_until(
            stream,
            lambda fs: any(
                f["json"]["payload"].get("body") for f in fs if f["event"].endswith("status")
            ),
            timeout=60,
        )
    assert frames[0]["event"] == "messaging.message.new"
    assert frames[0]["json"]["payload"]["external_id"] == sid
    status = next(f for f in frames if f["event"] == "messaging.message.status")
    assert status["json"]["payload"]["body"] == "Hello from the campaign"
    assert status["json"]["payload"]["body_state"] == "ready"

    # /readyz and the multi-process /metrics of a web process.
    ready = httpx.get(f"{d.a.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    metrics = httpx.get(f"{d.a.url}/metrics", timeout=10).text
    # Counted by the worker process, scraped from a web process.
    assert 'loquent_enrichment_total{outcome="ready"} 1.0' in metrics

    # Slow Twilio; a worker killed while bodies are mid-fetch.
    d.control.post(
        "/faults", json={"path_regex": r"/Messages/SM[0-9a-f]+\.json$", "delay_ms": 1500}
    )
    sids = seed(d.control, d.account["sid"], [f"text {i}" for i in range(30)])
    d.control.delete("/requests")
    await post_events(d.a, d.account, [sent(d.account, s) for s in sids])
    deadline = time.monotonic() + 60
    while not any(
        r["method"] == "GET"
        for r in d.control.get("/requests", params={"path_contains": "/Messages/SM"}).json()
    ):
        assert time.monotonic() < deadline, "the worker never fetched"
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # more requests in flight
    killed_at = datetime.now(UTC)
    worker.kill()
    d.start_worker()

    async with d.db.reader() as session:
        ids = list(
            (
                await session.execute(select(Message.id).where(Message.external_id.in_(sids)))
            ).scalars()
        )
    assert len(ids) == 30
    deadline = time.monotonic() + 120
    while True:
        async with d.db.reader() as session:
            ready = await session.scalar(
                select(func.count()).where(Message.id.in_(ids), Message.body_state == "ready")
            )
        if ready == 30:
            break
        assert time.monotonic() < deadline, f"only {ready} of 30 bodies ready"
        await asyncio.sleep(0.5)

    # Stored once each: one message.status event per message.
    async with d.db.reader() as session:
        payloads = (
            await session.execute(
                select(EventLogEntry.payload).where(
                    EventLogEntry.organization_id == d.org.id,
                    EventLogEntry.type == EVT_MESSAGE_STATUS,
                )
            )
        ).scalars()
        per_message = Counter(int(p["id"]) for p in payloads)
    assert all(per_message[i] == 1 for i in ids), per_message
    # Fetched once each, except those in flight when the worker died: those once more, by
    # the new worker, after their lease ran out.
    gets = [
        r
        for r in d.control.get("/requests", params={"path_contains": "/Messages/SM"}).json()
        if r["method"] == "GET"
    ]
    per_sid = Counter(r["path"].rsplit("/", 1)[-1].removesuffix(".json") for r in gets)
    assert set(per_sid) == set(sids)
    assert max(per_sid.values()) <= 2
    for s in (s for s, n in per_sid.items() if n == 2):
        first = min(_started(r) for r in gets if r["path"].endswith(f"/{s}.json"))
        assert first < killed_at  # begun by the killed worker


def _started(entry: dict[str, Any]) -> datetime:
    """When the simulator began answering a logged request (it logs when it is done)."""
    at = datetime.fromisoformat(entry["at"].replace("Z", "+00:00"))
    return at - timedelta(milliseconds=entry["duration_ms"])
