"""Load benchmarks: `make bench` (or `python -m bench.run`). Results go to bench/results/.

For each database (a SQLite file; PostgreSQL too when LOQUENT_BENCH_POSTGRES_URL names a
server database, next to which a scratch database is created and dropped), in one run:

- ingest: wrk posts pre-signed Event Streams deliveries (new SIDs in every delivery, so
  each event is an external capture) of 1 and of 20 events, first at full speed (events/s),
  then at a fixed offered rate (half the app's measured capacity; p50/p99 latency). Every
  figure is taken against the bare baseline (bench/baseline.py: signature check, JSON
  parse, one INSERT … ON CONFLICT DO NOTHING per event, same database) and against the app
  (`loquent serve`), and reported as a ratio, so a busy machine still compares like with
  like.
- sse: 1,000 SSE clients of one organization (bench/sse_clients.py, two processes) while
  events arrive at 20/s; latency from the webhook being accepted to each stream's frame,
  frames delivered, streams dropped, event-log reads per event, server RSS.

Writes bench/results/<name>.json (with nproc, CPU model, memory, load average) and prints
a table. About 6 minutes with both databases.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import secrets
import shutil
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
WRK_SCRIPT = ROOT / "bench" / "wrk" / "deliveries.lua"
LINE = "+14155550100"


# --- machine and processes ---------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "memory_mb": mem_kb // 1024,
        "load_average_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": _wrk_version(),
    }


def _wrk_version() -> str:
    out = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    return (out.stdout + out.stderr).splitlines()[0] if (out.stdout + out.stderr) else "?"


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A server process on a loopback port, its log kept in bench/results/."""

    def __init__(self, name: str, env: dict[str, str], port: int | None = None) -> None:
        self.name = name
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, *argv: str) -> None:
        log = RESULTS / f"server-{self.name}.log"
        with log.open("wb") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, *argv], env=self.env, stdout=sink, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start; see {log}")

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now and at its peak."""
        assert self.proc is not None
        values = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values[key] = round(int(rest.split()[0]) / 1024, 1)
        return {"rss": values.get("VmRSS", 0.0), "peak": values.get("VmHWM", 0.0)}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Tenant:
    """The organization the deliveries are for."""

    def __init__(self) -> None:
        self.account = "AC" + secrets.token_hex(16)
        self.token = secrets.token_hex(16)
        self.api_token = ""


def app_env(database_url: str, public_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "LOQUENT_DATABASE_URL": database_url,
        "LOQUENT_PUBLIC_URL": public_url,
        "LOQUENT_SECRET_KEY": "bench-secret-" + secrets.token_hex(8),
        "LOQUENT_RUN_WORKER": "false",  # measure the webhook and SSE paths alone
        "LOQUENT_LOG_LEVEL": "WARNING",
    }


def _cli(env: dict[str, str], *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, "-m", "loquent.cli", *args], env=env, check=True, capture_output=True
    ).stdout
    return json.loads(out) if "--json" in args else None


def seed(env: dict[str, str], tenant: Tenant) -> None:
    _cli(env, "migrate")
    org = _cli(
        {**env, "LOQUENT_TWILIO_AUTH_TOKEN": tenant.token},
        *("org", "create", "--name", "Bench", "--twilio-account-sid", tenant.account, "--json"),
    )["id"]
    _cli(env, "number", "add", "--org", str(org), LINE, "--json")
    tenant.api_token = _cli(
        env, "token", "create", "--org", str(org), "--email", "bench@example.com", "--json"
    )["token"]


# --- deliveries ----------------------------------------------------------------------------


def _event(sid: str, account: str, to: str) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return {
        "specversion": "1.0",
        "type": "com.twilio.messaging.message.sent",
        "source": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        "id": "EZ" + secrets.token_hex(16),
        "datacontenttype": "application/json",
        "time": now,
        "data": {
            "messageSid": sid,
            "timestamp": now,
            "accountSid": account,
            "from": LINE,
            "to": to,
            "messageStatus": "SENT",
        },
    }


def signed(public_url: str, tenant: Tenant, events: list[dict[str, Any]]) -> tuple[str, str, str]:
    """(path with query, signature, body) exactly as Twilio signs a JSON delivery."""
    body = json.dumps(events)
    path = f"/twilio/events?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    signature = RequestValidator(tenant.token).compute_signature(public_url + path, {})
    return path, signature, body


_counter = iter(range(10**9))


def presign(path: Path, public_url: str, tenant: Tenant, deliveries: int, size: int) -> Path:
    with path.open("w") as sink:
        for _ in range(deliveries):
            events = []
            for _ in range(size):
                n = next(_counter)
                events.append(_event("SM" + secrets.token_hex(16), tenant.account, _to(n)))
            sink.write("\n".join(signed(public_url, tenant, events)) + "\n")
    return path


def _to(n: int) -> str:
    return f"+1415{6000000 + n % 3_000_000:07d}"  # a new contact for most events


def run_wrk(
    url: str, requests_file: Path, *, connections: int, seconds: int, delay_ms: float = 0
) -> dict[str, Any]:
    env = {**os.environ, "BENCH_DELAY_MS": f"{delay_ms:.3f}"}
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(WRK_SCRIPT),
            url,
            "--",
            str(requests_file),
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"^BENCH_JSON (.*)$", out, re.M)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{out}")
    summary: dict[str, Any] = json.loads(match.group(1))
    summary["seconds"] = round(summary.pop("duration_us") / 1e6, 2)
    summary["deliveries_per_second"] = round(summary["requests"] / summary["seconds"], 1)
    summary["latency_ms"] = {k: round(v / 1000, 2) for k, v in summary.pop("latency_us").items()}
    return summary


def _lines(path: Path) -> int:
    with path.open() as source:
        return sum(1 for _ in source) // 3


def ingest(
    baseline: Server, app: Server, tenant: Tenant, tmp: Path, args: argparse.Namespace
) -> list[dict[str, Any]]:
    figures = []
    for size in (1, 20):
        made = args.deliveries if size == 1 else max(args.deliveries // 8, 200)
        full = presign(tmp / f"full-{size}.txt", app.url, tenant, made, size)
        # Fewer connections for large deliveries: 32 × 20 events in flight would only queue
        # (and outlast a short run).
        connections = args.connections if size == 1 else max(2, args.connections // 8)
        rows: dict[str, Any] = {"events_per_delivery": size, "connections": connections}
        for server in (baseline, app):
            result = run_wrk(server.url, full, connections=connections, seconds=args.seconds)
            result["events_per_second"] = round(result["deliveries_per_second"] * size, 1)
            result["reused_deliveries"] = max(0, result["requests"] - made)
            result["memory_mb"] = server.memory_mb()
            rows[f"{server.name}_max"] = result
        # A fixed offered rate both can sustain: half of what the app reached.
        rate = max(0.5, rows["app_max"]["deliveries_per_second"] / 2)
        paced = presign(
            tmp / f"paced-{size}.txt",
            app.url,
            tenant,
            int(rate * args.seconds * 1.3) + 50,
            size,
        )
        connections = 8 if size == 1 else 2
        for server in (baseline, app):
            result = run_wrk(
                server.url,
                paced,
                connections=connections,
                seconds=args.seconds,
                delay_ms=connections * 1000 / rate,
            )
            result["offered_deliveries_per_second"] = round(rate, 1)
            result["memory_mb"] = server.memory_mb()
            rows[f"{server.name}_paced"] = result
        rows["ratio_app_to_baseline"] = round(
            rows["app_max"]["events_per_second"] / rows["baseline_max"]["events_per_second"], 3
        )
        figures.append(rows)
        print(
            f"  ingest {size:>2}/delivery: baseline {rows['baseline_max']['events_per_second']}"
            f" ev/s, app {rows['app_max']['events_per_second']} ev/s",
            flush=True,
        )
    return figures


# --- SSE fan-out ---------------------------------------------------------------------------


def _metric(url: str, name: str, labels: str = "") -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line):
            head, _, value = line.rpartition(" ")
            if head.split("{")[0] == name:
                total += float(value)
    return total


async def _post_paced(app: Server, tenant: Tenant, rate: float, seconds: float) -> dict[str, float]:
    """Post one-event deliveries at ``rate``; the time each SID's delivery was accepted."""
    accepted: dict[str, float] = {}
    count = int(rate * seconds)
    requests = []
    for _ in range(count):
        sid = "SM" + secrets.token_hex(16)
        requests.append((sid, signed(app.url, tenant, [_event(sid, tenant.account, _to(0))])))
    async with httpx.AsyncClient(timeout=30) as http:

        async def post(sid: str, request: tuple[str, str, str]) -> None:
            path, signature, body = request
            try:
                response = await http.post(
                    app.url + path,
                    content=body,
                    headers={"X-Twilio-Signature": signature, "Content-Type": "application/json"},
                )
            except httpx.HTTPError:
                return  # not accepted: not expected on the streams either
            if response.status_code == 200:
                accepted[sid] = time.time()

        started = time.monotonic()
        tasks = []
        for i, (sid, request) in enumerate(requests):
            await asyncio.sleep(max(0.0, started + i / rate - time.monotonic()))
            tasks.append(asyncio.create_task(post(sid, request)))
        await asyncio.gather(*tasks)
    return accepted


def sse_fanout(app: Server, tenant: Tenant, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    processes = 2
    per_process = args.sse_clients // processes
    memory_idle = app.memory_mb()
    clients = []
    for i in range(processes):
        out = tmp / f"sse-{i}.json"
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.sse_clients",
                "--url",
                app.url,
                "--streams",
                str(per_process),
                "--out",
                str(out),
            ],
            env={**os.environ, "BENCH_API_TOKEN": tenant.api_token},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        clients.append((proc, out))
    connected_at = time.monotonic()
    connected = 0
    for proc, _ in clients:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().split()
        connected += int(line[1]) if len(line) == 2 and line[0] == "READY" else 0
    connect_seconds = time.monotonic() - connected_at
    time.sleep(1.0)
    memory_connected = app.memory_mb()
    reads_before = _metric(app.url, "loquent_event_log_reads_total", 'kind="live"') + _metric(
        app.url, "loquent_event_log_reads_total", 'kind="recheck"'
    )
    dropped_before = _metric(app.url, "loquent_sse_dropped_total")
    accepted = asyncio.run(_post_paced(app, tenant, args.sse_rate, args.sse_seconds))
    time.sleep(args.sse_drain)
    reads = (
        _metric(app.url, "loquent_event_log_reads_total", 'kind="live"')
        + _metric(app.url, "loquent_event_log_reads_total", 'kind="recheck"')
        - reads_before
    )
    dropped = _metric(app.url, "loquent_sse_dropped_total") - dropped_before
    memory_loaded = app.memory_mb()
    latencies: list[float] = []
    totals = {"frames": 0, "out_of_order": 0, "duplicates": 0, "ended_by_server": 0, "failed": 0}
    for proc, out in clients:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=60)
        result = json.loads(out.read_text())
        for key in totals:
            totals[key] += result[key]
        for sid, times in result["receipts"].items():
            if sid in accepted:
                latencies.extend(t - accepted[sid] for t in times)
    expected = connected * len(accepted)
    return {
        "clients": args.sse_clients,
        "connected": connected,
        "connect_seconds": round(connect_seconds, 1),
        "events_offered": int(args.sse_rate * args.sse_seconds),
        "events": len(accepted),  # accepted with 200 while the streams were open
        "rate_per_second": args.sse_rate,
        "frames_expected": expected,
        "frames_received": len(latencies),
        "delivered_fraction": round(len(latencies) / expected, 4) if expected else 0.0,
        "streams_dropped": dropped,
        "event_log_reads": reads,
        "event_log_reads_per_event": round(reads / max(1, len(accepted)), 2),
        "latency_ms": _percentiles(latencies),
        **{k: v for k, v in totals.items() if k != "frames"},
        "memory_mb": {
            "idle": memory_idle,
            "clients_connected": memory_connected,
            "after_events": memory_loaded,
        },
    }


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)

    return {
        "p50": at(0.5),
        "p99": at(0.99),
        "max": at(1.0),
        "mean": round(statistics.mean(values) * 1000, 1),
    }


# --- one database --------------------------------------------------------------------------


def bench_backend(name: str, database_url: str, args: argparse.Namespace) -> dict[str, Any]:
    print(f"{name}:", flush=True)
    tenant = Tenant()
    port = _free_port()
    env = app_env(database_url, f"http://127.0.0.1:{port}")
    seed(env, tenant)
    baseline = Server("baseline", {**os.environ, "BENCH_AUTH_TOKEN": tenant.token})
    app = Server("app", env, port=port)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        try:
            baseline.start(
                "-m",
                "bench.baseline",
                "--database-url",
                database_url,
                "--port",
                str(baseline.port),
                "--public-url",
                app.url,  # the same pre-signed files serve both
            )
            app.start("-m", "loquent.cli", "serve", "--port", str(app.port))
            figures = ingest(baseline, app, tenant, tmp, args)
        finally:
            baseline.stop()
            app.stop()
        # A fresh process, so its memory is the streams' and not what ingest left behind.
        sse_app = Server("app-sse", env, port=port)
        try:
            sse_app.start("-m", "loquent.cli", "serve", "--port", str(sse_app.port))
            sse = sse_fanout(sse_app, tenant, tmp, args)
        finally:
            sse_app.stop()
        print(
            f"  sse: {sse['delivered_fraction']:.1%} of frames, p99 "
            f"{sse['latency_ms'].get('p99')} ms",
            flush=True,
        )
    return {"backend": name, "ingest": figures, "sse": sse}


async def _pg_admin(admin_url: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_url.replace("postgresql+asyncpg://", "postgresql://"))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


# --- report --------------------------------------------------------------------------------


def table(document: dict[str, Any]) -> str:
    rows = [
        ("backend", "figure", "baseline", "app", "app/base"),
    ]
    for result in document["results"]:
        backend = result["backend"]
        for figure in result["ingest"]:
            size = figure["events_per_delivery"]
            base, app = figure["baseline_max"], figure["app_max"]
            rows.append(
                (
                    backend,
                    f"events/s, {size}/delivery, c={figure['connections']}",
                    f"{base['events_per_second']:.0f}",
                    f"{app['events_per_second']:.0f}",
                    f"{figure['ratio_app_to_baseline']:.3f}",
                )
            )
            base_p, app_p = figure["baseline_paced"], figure["app_paced"]
            rows.append(
                (
                    backend,
                    f"p50/p99 ms at {app_p['offered_deliveries_per_second']:.1f} deliveries/s",
                    f"{base_p['latency_ms']['p50']}/{base_p['latency_ms']['p99']}",
                    f"{app_p['latency_ms']['p50']}/{app_p['latency_ms']['p99']}",
                    "",
                )
            )
            rows.append(
                (
                    backend,
                    f"server RSS MB after {size}/delivery",
                    f"{base['memory_mb']['rss']}",
                    f"{app_p['memory_mb']['rss']}",
                    "",
                )
            )
        sse = result["sse"]
        lat = sse["latency_ms"]
        rows.append(
            (
                backend,
                f"SSE {sse['connected']} clients, {sse['rate_per_second']:.0f} ev/s offered: "
                "accepted, frames delivered, p50/p99 ms",
                "",
                f"{sse['events']}/{sse['events_offered']}, {sse['delivered_fraction']:.1%}, "
                f"{lat.get('p50')}/{lat.get('p99')}",
                "",
            )
        )
        rows.append(
            (
                backend,
                "SSE RSS MB idle/connected/after; dropped; log reads per event",
                "",
                f"{sse['memory_mb']['idle']['rss']}/{sse['memory_mb']['clients_connected']['rss']}"
                f"/{sse['memory_mb']['after_events']['rss']}; {sse['streams_dropped']:.0f}; "
                f"{sse['event_log_reads_per_event']}",
                "",
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default=None, help="results file name (default: a timestamp)")
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--deliveries", type=int, default=12000, help="pre-signed, 1-event")
    parser.add_argument("--sse-clients", type=int, default=1000)
    parser.add_argument("--sse-rate", type=float, default=20.0)
    parser.add_argument("--sse-seconds", type=float, default=20.0)
    parser.add_argument("--sse-drain", type=float, default=5.0)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk (make bench does it when root)")

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document: dict[str, Any] = {
        "at": stamp,
        "machine": machine_info(),
        "params": vars(args),
        "results": [],
    }
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        document["results"].append(bench_backend("sqlite", url, args))
    admin_url = os.environ.get("LOQUENT_BENCH_POSTGRES_URL")
    if admin_url:
        # A throwaway database next to the one named, so the benchmark never touches data.
        name = "loquent_bench_" + secrets.token_hex(4)
        asyncio.run(_pg_admin(admin_url, f'CREATE DATABASE "{name}"'))
        try:
            url = admin_url.rsplit("/", 1)[0] + "/" + name
            document["results"].append(bench_backend("postgresql", url, args))
        finally:
            asyncio.run(_pg_admin(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    document["seconds"] = round(time.monotonic() - started, 1)
    document["machine"]["load_average_at_end"] = os.getloadavg()
    out = RESULTS / f"{args.name or 'bench-' + stamp}.json"
    out.write_text(json.dumps(document, indent=2))
    (RESULTS / "latest.json").write_text(json.dumps(document, indent=2))
    print()
    print(table(document))
    print(f"\nwritten to {out.relative_to(ROOT)} in {document['seconds']} s")


if __name__ == "__main__":
    main()
