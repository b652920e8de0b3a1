"""Durability and secrecy of a real `loquent serve` process: killed with bodies pending (some
mid-fetch), started again, every body is fetched; the auth token never reaches the logs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loquent.servers import ServerThread, free_port
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread

LINES = ["+14155550100", "+14155550101"]


class AppProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, extra_env: dict[str, str] | None = None) -> str:
        return subprocess.run(
            [sys.executable, "-m", "loquent.cli", *args],
            env={**self.env, **(extra_env or {})},
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def start(self) -> None:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loquent.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        for _ in range(150):
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            import time

            time.sleep(0.1)
        raise RuntimeError("app did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


@pytest.fixture
def sim_server() -> Iterator[ServerThread]:
    server = simulator_thread().start()
    yield server
    server.stop()


async def _pending_count(db_path: Path) -> dict[str, int]:
    import aiosqlite

    async with aiosqlite.connect(db_path) as conn:
        rows = await conn.execute_fetchall(
            "SELECT body_state, count(*) FROM message GROUP BY body_state"
        )
    return {state: count for state, count in rows}


async def test_killed_with_bodies_pending_then_restarted_fetches_them_all(
    tmp_path: Path, sim_server: ServerThread
) -> None:
    sim = Sim(sim_server.url)
    db_path = tmp_path / "crash.db"
    port = free_port()
    account = "AC" + secrets.token_hex(16)
    auth_token = "tok" + secrets.token_hex(16)
    env = {
        **os.environ,
        "LOQUENT_DATABASE_URL": f"sqlite+aiosqlite:///{db_path}",
        "LOQUENT_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "LOQUENT_SECRET_KEY": "crash-test-key",
        "LOQUENT_TWILIO_API_BASE": sim_server.url,
        "LOQUENT_TWILIO_EVENTS_API_BASE": sim_server.url,
        "LOQUENT_TWILIO_TIMEOUT_SECONDS": "1",
        "LOQUENT_WORKER_LEASE_SECONDS": "3",
        "LOQUENT_WORKER_POLL_SECONDS": "0.5",
        "LOQUENT_ENRICH_BACKOFF_BASE_SECONDS": "0.1",
        "LOQUENT_ENRICH_MAX_ATTEMPTS": "50",
        "LOQUENT_LOG_LEVEL": "DEBUG",
        "LOQUENT_LOG_JSON": "true",
    }
    env.pop("LOQUENT_TWILIO_AUTH_TOKEN", None)
    app = AppProcess(env, port, tmp_path / "app.log")
    await asyncio.to_thread(app.cli, "migrate")
    org = (
        await asyncio.to_thread(
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
    ).strip()
    org_id = org.split(":")[1].strip(" }")
    for line in LINES:
        await asyncio.to_thread(app.cli, "number", "add", "--org", org_id, line)

    await sim.call("POST", "/accounts", {"sid": account, "auth_token": auth_token})
    await sim.call(
        "POST",
        f"/accounts/{account}/sinks",
        {"destination": f"http://127.0.0.1:{port}/twilio/events"},
    )
    # Every body fetch hangs (and times out) until the fault is cleared.
    await sim.add_fault(path_regex=r"/Messages/SM[0-9a-f]+\.json$", method="GET", delay_ms=20_000)

    await asyncio.to_thread(app.start)
    try:
        sids = []
        for i in range(5):
            sent = await sim.console_sms(
                account,
                statuses=["sent"],
                **{"from": LINES[i % 2], "to": f"+1415555{i:04d}", "body": f"body {i}"},
            )
            sids.append(sent["sid"])
        assert await _pending_count(db_path) == {"pending": 5}

        async def fetch_started() -> bool:
            faults = await sim.call("GET", "/faults")
            return sum(f["hits"] for f in faults) >= 1

        for _ in range(100):
            if await fetch_started():
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no body fetch started")
        await asyncio.to_thread(app.kill)  # mid-fetch: leases are held by a dead process
        assert (await _pending_count(db_path)).get("pending") == 5

        await sim.call("DELETE", "/faults")
        await asyncio.to_thread(app.start)
        for _ in range(300):
            if await _pending_count(db_path) == {"ready": 5}:
                break
            await asyncio.sleep(0.1)
        assert await _pending_count(db_path) == {"ready": 5}
    finally:
        await asyncio.to_thread(app.stop)

    logs = app.log.read_text()
    assert "capture.created" in logs  # the logs did record the run...
    assert auth_token not in logs  # ...but never the auth token
    assert auth_token[3:] not in logs
    # uvicorn's own lines went through the same redacting handler: JSON, with request ids.
    records = [json.loads(line) for line in logs.splitlines() if line.strip()]
    access = [r for r in records if r.get("logger") == "uvicorn.access"]
    assert any("/twilio/events" in r["event"] for r in access)
    assert all(r.get("request_id") for r in access)


def test_cli_never_echoes_the_auth_token(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    env: dict[str, Any] = {**os.environ, "LOQUENT_DATABASE_URL": url}
    token = "s3cr3t" + secrets.token_hex(8)
    subprocess.run(
        [sys.executable, "-m", "loquent.cli", "migrate"], env=env, check=True, capture_output=True
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "loquent.cli",
            "org",
            "create",
            "--name",
            "A",
            "--twilio-account-sid",
            "AC" + "1" * 32,
            "--json",
        ],
        env={**env, "LOQUENT_TWILIO_AUTH_TOKEN": token},
        capture_output=True,
        text=True,
        check=True,
    )
    assert token not in result.stdout + result.stderr
    stored = b"".join(p.read_bytes() for p in tmp_path.glob("cli.db*"))  # db, -wal, -shm
    assert b"AC" + b"1" * 32 in stored  # the account SID is there in clear...
    assert token.encode() not in stored  # ...the token only encrypted
