"""B3, enrichment drain: `python -m bench.enrichment_drain` (results in bench/results/).

``--bodies`` pending bodies (10,000 by default) of one organization, the simulator answering
every Twilio API call after ``--delay-ms`` (a delay fault; 100 ms, the middle of 50–150 ms,
as the simulator's delay is fixed). The same backlog is drained twice, by one worker in this
process: one GET per body (listing off, ``enrich_list_threshold=0``), then by listing
``Messages.json``. Reported: seconds, bodies/s, Twilio calls, and for one-by-one the
theoretical rate of the per-organization cap (cap / latency) and the share of it reached.

The simulator runs as its own process, so its event loop does not share this one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from sqlalchemy import insert

import loquent.models  # noqa: F401 - registers every table
from loquent.config import Settings
from loquent.contacts.models import Contact
from loquent.db import Database, utcnow
from loquent.jobs.worker import Worker
from loquent.messaging.models import Message
from loquent.migrate import upgrade
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.realtime.notifier import Notifier
from tests.support.servers import free_port

RESULTS = Path(__file__).parent / "results"
LINE = "+14155550100"


def start_simulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loquent.simulator", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180  # a loaded machine starts it slowly
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_sim/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("simulator did not start")


async def arrange(db: Database, box: SecretBox, account: str, token: str, sids: list[str]) -> int:
    now = utcnow()
    async with db.session() as session:
        org = Organization(
            name="Bench", twilio_account_sid=account, twilio_auth_token=box.encrypt(token)
        )
        session.add(org)
        await session.flush()
        contact = Contact(organization_id=org.id, source="external_sms")
        session.add(contact)
        await session.flush()
        rows = [
            {
                "organization_id": org.id,
                "contact_id": contact.id,
                "direction": "outbound",
                "from_address": LINE,
                "to_address": "+14155559999",
                "status": "sent",
                "source": "external",
                "external_id": sid,
                "created_at": now,
                "updated_at": now,
                "body_state": "pending",
                "body_attempts": 0,
                "body_not_found": 0,
                "num_media": 0,
                "body_next_attempt_at": now,
            }
            for sid in sids
        ]
        for start in range(0, len(rows), 1000):
            await session.execute(insert(Message), rows[start : start + 1000])
        await session.commit()
        return org.id


async def drain_once(
    mode: str, database_url: str, sim_url: str, bodies: int, delay_ms: int, cap: int
) -> dict[str, Any]:
    control = httpx.Client(base_url=f"{sim_url}/_sim", timeout=300)
    control.post("/reset").raise_for_status()
    account, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
    control.post("/accounts", json={"sid": account, "auth_token": token}).raise_for_status()
    traffic = control.post(
        f"/accounts/{account}/traffic",
        json={
            "count": bodies,
            "lines": [LINE],
            "inbound_share": 0,
            "spacing_ms": 50,
            "start": (datetime.now(UTC) - timedelta(minutes=30)).isoformat(),
            "return_sids": True,
        },
    )
    traffic.raise_for_status()
    sids = traffic.json()["sids"]
    settings = Settings(
        database_url=database_url,
        secret_key=SecretStr("bench-secret"),
        twilio_api_base=sim_url,
        twilio_timeout_seconds=10.0,
        worker_poll_seconds=0.5,
        worker_batch_size=max(20, 2 * cap),
        worker_per_org_concurrency=cap,
        enrich_list_threshold=0 if mode == "one_by_one" else 100,
    )
    db = Database(database_url)
    box = SecretBox(settings.secret_keys)
    await arrange(db, box, account, token, sids)
    control.post(
        "/faults", json={"path_regex": r"^/2010-04-01/", "delay_ms": delay_ms}
    ).raise_for_status()
    control.delete("/requests").raise_for_status()
    worker = Worker(db=db, notifier=Notifier(), settings=settings, box=box)
    began = time.monotonic()
    await worker.start()
    drained = await worker.drain(3600, include_scheduled=True)
    elapsed = time.monotonic() - began
    await worker.stop()
    await db.dispose()
    log = control.get("/requests").json()
    list_calls = sum(1 for r in log if r["path"].endswith("/Messages.json"))
    result: dict[str, Any] = {
        "mode": mode,
        "bodies": bodies,
        "drained": drained,
        "outcomes": dict(worker.outcomes),
        "seconds": round(elapsed, 2),
        "bodies_per_second": round(bodies / elapsed, 1),
        "list_calls": list_calls,
        # The simulator keeps the last 10,000 requests only.
        "single_gets_logged": sum(
            1 for r in log if "/Messages/" in r["path"] and "/Media" not in r["path"]
        ),
    }
    if mode == "one_by_one":
        theoretical = cap / (delay_ms / 1000)
        result["theoretical_bodies_per_second"] = round(theoretical, 1)
        result["share_of_theoretical"] = round(bodies / elapsed / theoretical, 3)
    control.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bodies", type=int, default=10_000)
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--cap", type=int, default=4, help="per-organization concurrency")
    parser.add_argument("--modes", default="one_by_one,listing")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    sim_port = free_port()
    sim = start_simulator(sim_port)
    results = []
    try:
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as tmp:
                url = f"sqlite+aiosqlite:///{tmp}/bench.db"
                upgrade(url)
                results.append(
                    asyncio.run(
                        drain_once(
                            mode,
                            url,
                            f"http://127.0.0.1:{sim_port}",
                            args.bodies,
                            args.delay_ms,
                            args.cap,
                        )
                    )
                )
                print(json.dumps(results[-1]), flush=True)
    finally:
        sim.terminate()
        sim.wait(timeout=15)
    by_mode = {r["mode"]: r for r in results}
    if {"one_by_one", "listing"} <= by_mode.keys():
        speedup = by_mode["one_by_one"]["seconds"] / max(by_mode["listing"]["seconds"], 1e-9)
    else:
        speedup = None
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {
        "at": stamp,
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
        "delay_ms": args.delay_ms,
        "per_org_cap": args.cap,
        "results": results,
        "listing_speedup": None if speedup is None else round(speedup, 1),
    }
    (RESULTS / f"enrichment-drain-{stamp}.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
