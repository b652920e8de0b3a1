"""A real `loquent serve` killed with SIGKILL in the middle of a history import: started
again, the worker takes the run over once its lease runs out and resumes at the page after
the last one committed, ending with exactly the counts of an uninterrupted run (SQLite
file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from loquent.servers import ServerThread, free_port
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from tests.test_crash_recovery import AppProcess

LINES = ["+14155550100", "+14155550101"]
TOTAL = 20_000


@pytest.fixture
def sim_server() -> Iterator[ServerThread]:
    server = simulator_thread().start()
    yield server
    server.stop()


async def _query(url: str, sql: str) -> list[Any]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(row) for row in (await conn.execute(text(sql))).all()]
    finally:
        await engine.dispose()


async def _run_row(db_url: str) -> dict[str, Any]:
    rows = await _query(
        db_url, "SELECT state, pages, imported, skipped, next_page_uri FROM message_import"
    )
    assert len(rows) == 1
    state, pages, imported, skipped, cursor = rows[0]
    return {"state": state, "pages": pages, "imported": imported, "skipped": skipped, "c": cursor}


@pytest.mark.timeout(360)  # 20,000 messages twice over, on a shared CI machine
async def test_killed_mid_import_resumes_after_restart_with_the_same_counts(
    tmp_path: Path, sim_server: ServerThread, database_url: str
) -> None:
    sim = Sim(sim_server.url)
    port = free_port()
    account = "AC" + secrets.token_hex(16)
    auth_token = "tok" + secrets.token_hex(16)
    env = {
        **os.environ,
        "LOQUENT_DATABASE_URL": database_url,
        "LOQUENT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOQUENT_SECRET_KEY": "import-crash-key",
        "LOQUENT_TWILIO_API_BASE": sim_server.url,
        "LOQUENT_TWILIO_EVENTS_API_BASE": sim_server.url,
        "LOQUENT_TWILIO_TIMEOUT_SECONDS": "5",
        "LOQUENT_IMPORT_LEASE_SECONDS": "3",
        "LOQUENT_WORKER_POLL_SECONDS": "0.5",
        "LOQUENT_CATCHUP_INTERVAL_SECONDS": "0",
    }
    env.pop("LOQUENT_TWILIO_AUTH_TOKEN", None)
    app = AppProcess(env, port, tmp_path / "app.log")
    await asyncio.to_thread(app.cli, "migrate")
    created = await asyncio.to_thread(
        app.cli,
        "org",
        "create",
        "--name",
        "Crashy",
        "--twilio-account-sid",
        account,
        "--json",
        extra_env={"LOQUENT_TWILIO_AUTH_TOKEN": auth_token},
    )
    org_id = str(json.loads(created)["id"])
    for line in LINES:
        await asyncio.to_thread(app.cli, "number", "add", "--org", org_id, line)
    token = json.loads(
        await asyncio.to_thread(
            app.cli, "token", "create", "--org", org_id, "--email", "o@example.com", "--json"
        )
    )["token"]

    await sim.call("POST", "/accounts", {"sid": account, "auth_token": auth_token})
    for line in LINES:
        await sim.call("POST", f"/accounts/{account}/numbers", {"phone_number": line})
    await sim.call("POST", f"/accounts/{account}/traffic", {"count": TOTAL, "counterparts": 300})
    # Slow pages, so that the kill lands mid-import.
    await sim.add_fault(path_regex=r"/Messages\.json$", method="GET", delay_ms=400)

    await asyncio.to_thread(app.start)
    try:
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(
                f"http://127.0.0.1:{port}/api/twilio/sync-messages",
                json={},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.status_code == 202, response.text
        for _ in range(600):
            if (await _run_row(database_url))["pages"] >= 5:
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(app.kill)
        at_kill = await _run_row(database_url)
        assert at_kill["state"] == "running"
        assert 5 <= at_kill["pages"] < 20
        # What the database holds matches the cursor: every committed page, nothing more.
        [[messages]] = await _query(database_url, "SELECT count(*) FROM message")
        assert messages == at_kill["imported"] == at_kill["pages"] * 1000

        await sim.call("DELETE", "/faults")
        before_restart = len(await sim.call("GET", "/requests", path_contains="/Messages.json"))
        await asyncio.to_thread(app.start)
        for _ in range(600):
            if (await _run_row(database_url))["state"] != "running":
                break
            await asyncio.sleep(0.1)
        done = await _run_row(database_url)
    finally:
        await asyncio.to_thread(app.stop)

    assert done == {"state": "finished", "pages": 20, "imported": TOTAL, "skipped": 0, "c": None}
    [[messages, distinct]] = await _query(
        database_url, "SELECT count(*), count(DISTINCT external_id) FROM message"
    )
    assert messages == distinct == TOTAL
    progress = await _query(
        database_url, "SELECT count(*) FROM event_log WHERE type = 'twilio.import.progress'"
    )
    assert progress == [(20,)]  # each page committed exactly once, across the crash
    # The resumed run started at the page after the last committed one.
    requests = await sim.call("GET", "/requests", path_contains="/Messages.json")
    resumed = [r for r in requests[before_restart:] if r["status"] == 200]
    # (Counted from the restart: before it, a page in flight at the kill, or one retried
    # after a client timeout on a busy machine, is answered by the simulator all the same.)
    pages = [parse_qs(r["query"]).get("Page", ["0"])[0] for r in resumed]
    assert pages[0] == str(at_kill["pages"])  # the page after the last committed one
    assert set(pages) == {str(n) for n in range(at_kill["pages"], 20)}
    assert "import.started" in app.log.read_text()
    assert auth_token not in app.log.read_text()
