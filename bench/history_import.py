"""History import rate: `python -m bench.history_import` (results in bench/results/).

The simulator and the app run as their own processes (`python -m loquent.simulator`,
`loquent serve` with its in-process worker), so the figure is the app's, not shared with the
simulator on one interpreter. The account holds ``--messages`` texts on two lines; one
import pages them all (``PageSize`` 1000) and the rate is messages / (202 → finished).
PostgreSQL too when ``LOQUENT_BENCH_POSTGRES_URL`` names a server (a throwaway database is
created next to it).
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
from datetime import UTC, datetime
from typing import Any

import httpx

from bench.run import RESULTS, App, _pg_admin
from tests.support.servers import free_port

LINES = ["+14155550100", "+14155550101"]


def _start_simulator(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "loquent.simulator", "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/_sim/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("simulator did not start")


def bench_backend(name: str, database_url: str, messages: int) -> dict[str, Any]:
    sim_port = free_port()
    sim_url = f"http://127.0.0.1:{sim_port}"
    sim = _start_simulator(sim_port)
    app = App(database_url, port=free_port())
    app.env.update(
        {
            "LOQUENT_RUN_WORKER": "true",
            "LOQUENT_TWILIO_API_BASE": sim_url,
            "LOQUENT_CATCHUP_INTERVAL_SECONDS": "0",
            "LOQUENT_WORKER_POLL_SECONDS": "0.5",
        }
    )
    try:
        app.start()
        account, token = "AC" + secrets.token_hex(16), secrets.token_hex(16)
        org = json.loads(
            subprocess.run(
                [sys.executable, "-m", "loquent.cli", "org", "create", "--name", "Bench",
                 "--twilio-account-sid", account, "--json"],
                env={**app.env, "LOQUENT_TWILIO_AUTH_TOKEN": token},
                check=True,
                capture_output=True,
            ).stdout
        )["id"]  # fmt: skip
        for line in LINES:
            app.cli("number", "add", "--org", str(org), line)
        api = app.cli("token", "create", "--org", str(org), "--email", "bench@example.com")
        control = httpx.Client(base_url=f"{sim_url}/_sim", timeout=120)
        control.post("/accounts", json={"sid": account, "auth_token": token}).raise_for_status()
        for line in LINES:
            control.post(f"/accounts/{account}/numbers", json={"phone_number": line})
        control.post(
            f"/accounts/{account}/traffic", json={"count": messages, "counterparts": 1000}
        ).raise_for_status()
        headers = {"Authorization": f"Bearer {api['token']}"}
        began = time.monotonic()
        run = httpx.post(
            f"{app.url}/api/twilio/sync-messages", json={}, headers=headers, timeout=30
        ).json()
        while True:
            state = httpx.get(f"{app.url}/api/twilio/imports/{run['id']}", headers=headers).json()
            if state["state"] != "running":
                break
            time.sleep(0.1)
        elapsed = time.monotonic() - began
        return {
            "backend": name,
            "messages": messages,
            "state": state["state"],
            "imported": state["imported"],
            "pages": state["pages"],
            "seconds": round(elapsed, 2),
            "messages_per_second": round(state["imported"] / elapsed, 1),
        }
    finally:
        app.stop()
        sim.terminate()
        sim.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [bench_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", args.messages)]
    admin_url = os.environ.get("LOQUENT_BENCH_POSTGRES_URL")
    if admin_url:
        name = "loquent_bench_" + secrets.token_hex(4)
        asyncio.run(_pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
        try:
            url = admin_url.rsplit("/", 1)[0] + "/" + name
            results.append(bench_backend("postgresql", url, args.messages))
        finally:
            asyncio.run(_pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {"at": stamp, "cpu_count": os.cpu_count(), "results": results}
    (RESULTS / f"history-import-{stamp}.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
