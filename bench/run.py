"""Load benchmarks: `make bench` (or `python -m bench.run`). Results go to bench/results/.

Starts the real app (`loquent serve`) on a loopback port against a fresh database, seeds an
organization through the CLI, then drives signed Event Streams deliveries at it:

- capture: every delivery is a status event for a new SID (the external-capture path)
- race:    bursts of concurrent deliveries for the same SID (sent/delivered duplicates)
- sse:     time from POST to the `messaging.message.new` frame on an open SSE stream

Targets the runner checks (figures are printed and saved either way): capture p95 well under
Twilio's 5 s answer window, exactly one row per SID after the race.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from twilio.request_validator import RequestValidator

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LINE = "+14155550100"


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _event(status: str, sid: str, account: str, to: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "specversion": "1.0",
        "type": f"com.twilio.messaging.message.{status}",
        "source": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        "id": _sid("EZ"),
        "datacontenttype": "application/json",
        "time": now,
        "data": {
            "messageSid": sid,
            "timestamp": now,
            "accountSid": account,
            "from": LINE,
            "to": to,
            "messageStatus": status.upper(),
        },
    }


class App:
    def __init__(self, database_url: str, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "LOQUENT_DATABASE_URL": database_url,
            "LOQUENT_PUBLIC_URL": self.url,
            "LOQUENT_SECRET_KEY": "bench-secret",
            "LOQUENT_RUN_WORKER": "false",  # measure the webhook path alone
            "LOQUENT_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "loquent.cli", *args, "--json"],
            env=self.env,
            check=True,
            capture_output=True,
        ).stdout
        return json.loads(out)

    def start(self) -> None:
        subprocess.run(
            [sys.executable, "-m", "loquent.cli", "migrate"],
            env=self.env,
            check=True,
            capture_output=True,
        )
        self.log = RESULTS / f"server-{self.port}.log"
        with self.log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loquent.cli", "serve", "--port", str(self.port)],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("app did not start")

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def _signed(
    app: App, events: list[dict[str, Any]], token: str
) -> tuple[str, bytes, dict[str, str]]:
    body = json.dumps(events).encode()
    url = f"{app.url}/twilio/events?bodySHA256={hashlib.sha256(body).hexdigest()}"
    return (
        url,
        body,
        {
            "X-Twilio-Signature": RequestValidator(token).compute_signature(url, {}),
            "Content-Type": "application/json",
        },
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)


async def capture_load(
    app: App, account: str, token: str, total: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)

    async def worker(http: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            to = f"+1415556{i % 10000:04d}"
            url, body, headers = _signed(app, [_event("sent", _sid("SM"), account, to)], token)
            started = time.perf_counter()
            response = await http.post(url, content=body, headers=headers)
            latencies.append(time.perf_counter() - started)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

    started = time.perf_counter()
    async with httpx.AsyncClient(
        timeout=30, limits=httpx.Limits(max_connections=concurrency)
    ) as http:
        await asyncio.gather(*[worker(http) for _ in range(concurrency)])
    elapsed = time.perf_counter() - started
    return {
        "deliveries": total,
        "concurrency": concurrency,
        "seconds": round(elapsed, 2),
        "events_per_second": round(total / elapsed, 1),
        "status_codes": statuses,
        "latency_ms": {
            "p50": _pct(latencies, 0.5),
            "p95": _pct(latencies, 0.95),
            "p99": _pct(latencies, 0.99),
            "max": _pct(latencies, 1.0),
            "mean": round(statistics.mean(latencies) * 1000, 2),
        },
    }


async def race(
    app: App, account: str, token: str, api_token: str, sids: int, burst: int
) -> dict[str, Any]:
    started = time.perf_counter()
    made = []
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=burst)) as http:
        for n in range(sids):
            sid = _sid("SM")
            made.append(sid)
            to = f"+1415557{n:04d}"
            requests = [
                _signed(app, [_event("sent" if i % 2 else "delivered", sid, account, to)], token)
                for i in range(burst)
            ]
            responses = await asyncio.gather(
                *[http.post(u, content=b, headers=h) for u, b, h in requests]
            )
            assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
        elapsed = time.perf_counter() - started
        rows = 0
        cursor = None
        while True:
            page = (
                await http.get(
                    app.url + "/api/contacts?limit=200" + (f"&cursor={cursor}" if cursor else ""),
                    headers={"Authorization": f"Bearer {api_token}"},
                )
            ).json()
            rows += sum(1 for c in page["items"] if c["phone"].startswith("+1415557"))
            cursor = page["next_cursor"]
            if not cursor:
                break
    return {
        "sids": sids,
        "burst": burst,
        "seconds": round(elapsed, 2),
        "contacts_created": rows,
        "exactly_one_each": rows == sids,
    }


async def sse_latency(
    app: App, account: str, token: str, api_token: str, samples: int
) -> dict[str, Any]:
    latencies: list[float] = []
    async with (
        httpx.AsyncClient(timeout=httpx.Timeout(30, read=60)) as http,
        http.stream(
            "GET", app.url + "/api/events", headers={"Authorization": f"Bearer {api_token}"}
        ) as stream,
    ):
        lines = stream.aiter_lines()
        await asyncio.sleep(0.3)
        for i in range(samples):
            url, body, headers = _signed(
                app, [_event("sent", _sid("SM"), account, f"+1415558{i:04d}")], token
            )
            started = time.perf_counter()
            await http.post(url, content=body, headers=headers)
            async for line in lines:
                if line.startswith("event: messaging.message.new"):
                    break
            latencies.append(time.perf_counter() - started)
    return {
        "samples": samples,
        "post_to_frame_ms": {
            "p50": _pct(latencies, 0.5),
            "p95": _pct(latencies, 0.95),
            "max": _pct(latencies, 1.0),
        },
    }


async def bench_backend(name: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    app = App(database_url, port=args.port)
    app.start()
    try:
        account = "AC" + secrets.token_hex(16)
        token = secrets.token_hex(16)
        env_token = {**app.env, "LOQUENT_TWILIO_AUTH_TOKEN": token}
        org = json.loads(
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "loquent.cli",
                    "org",
                    "create",
                    "--name",
                    "Bench",
                    "--twilio-account-sid",
                    account,
                    "--json",
                ],
                env=env_token,
                check=True,
                capture_output=True,
            ).stdout
        )["id"]
        app.cli("number", "add", "--org", str(org), LINE)
        api_token = app.cli("token", "create", "--org", str(org), "--email", "bench@example.com")[
            "token"
        ]
        rss_before = app.rss_mb()
        result = {
            "backend": name,
            "capture": await capture_load(app, account, token, args.deliveries, args.concurrency),
            "race": await race(app, account, token, api_token, args.race_sids, args.burst),
            "sse": await sse_latency(app, account, token, api_token, args.sse_samples),
            "rss_mb": {"after_start": round(rss_before, 1), "after_load": round(app.rss_mb(), 1)},
        }
        return result
    finally:
        app.stop()


async def _pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--race-sids", type=int, default=20)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--sse-samples", type=int, default=50)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()

    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = [
            asyncio.run(bench_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", args))
        ]
    admin_url = os.environ.get("LOQUENT_BENCH_POSTGRES_URL")
    if admin_url:
        # A throwaway database next to the one named, so the benchmark never touches data.
        name = "loquent_bench_" + secrets.token_hex(4)
        asyncio.run(_pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
        try:
            url = admin_url.rsplit("/", 1)[0] + "/" + name
            results.append(asyncio.run(bench_backend("postgresql", url, args)))
        finally:
            asyncio.run(_pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {"at": stamp, "cpu_count": os.cpu_count(), "params": vars(args), "results": results}
    (RESULTS / f"webhook-{stamp}.json").write_text(json.dumps(document, indent=2))
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2))
    print(json.dumps(document, indent=2))
    failures = [
        r["backend"]
        for r in results
        if not r["race"]["exactly_one_each"] or r["capture"]["latency_ms"]["p95"] > 2000
    ]
    if failures:
        sys.exit(f"benchmark targets missed on: {failures}")


if __name__ == "__main__":
    main()
