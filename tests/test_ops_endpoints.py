"""/metrics, /readyz and /healthz as an operator relies on them: under ``serve --workers 2``
one scrape adds up every process, requests are counted per route template; /readyz sees a
SQLite file another process is writing to, and /healthz stays a cheap liveness check."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from loquent.servers import free_port
from tests.conftest import running_stack
from tests.support.app_process import LoquentProcess, base_env

pytestmark = pytest.mark.timeout(180)


def _samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (dict(sample.labels), sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


def _count(samples: list[tuple[dict[str, str], float]], **labels: str) -> float:
    return sum(v for lab, v in samples if all(lab.get(k) == x for k, x in labels.items()))


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _multiproc_dir(pid: int) -> Path:
    for child in _children(pid):
        try:
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for entry in environ:
            if entry.startswith(b"PROMETHEUS_MULTIPROC_DIR="):
                return Path(entry.split(b"=", 1)[1].decode())
    raise AssertionError("serve --workers 2 started its workers without a metrics directory")


def _per_process_healthz(directory: Path) -> dict[int, float]:
    counts = {}
    for path in directory.glob("counter_*.db"):
        pid = int(path.stem.split("_")[1])
        counts[pid] = sum(
            sample.value
            for metric in MultiProcessCollector.merge([str(path)], accumulate=True)
            for sample in metric.samples
            if sample.name == "http_requests_total" and sample.labels.get("route") == "/healthz"
        )
    return counts


async def test_serve_with_two_workers_reports_every_process_per_route(tmp_path: Path) -> None:
    port = free_port()
    app = LoquentProcess(
        base_env(tmp_path, port, LOQUENT_RUN_WORKER="false", LOQUENT_LOG_LEVEL="WARNING"),
        port,
        tmp_path / "app.log",
    )
    await asyncio.to_thread(app.cli, "migrate")
    await asyncio.to_thread(app.serve, "--workers", "2", ready_path="/readyz")
    try:
        async with httpx.AsyncClient(timeout=20) as client:
            for _ in range(100):  # both workers up (each marks itself at startup)
                text = (await client.get(f"{app.url}/metrics")).text
                if len(_samples(text, "loquent_process_start_time_seconds")) == 2:
                    break
                await asyncio.sleep(0.2)
            started = _samples(text, "loquent_process_start_time_seconds")
            assert len({labels["pid"] for labels, _ in started}) == 2

        directory = _multiproc_dir(app.proc.pid)  # type: ignore[union-attr]
        sent = 0

        async def one_request() -> None:
            async with httpx.AsyncClient(timeout=20) as fresh:  # a new connection each
                assert (await fresh.get(f"{app.url}/healthz")).status_code == 200

        for _ in range(20):  # until both processes have answered some
            await asyncio.gather(*(one_request() for _ in range(16)))
            sent += 16
            per_process = _per_process_healthz(directory)
            if len([c for c in per_process.values() if c > 0]) >= 2:
                break
        assert len([c for c in per_process.values() if c > 0]) == 2, per_process
        async with httpx.AsyncClient(timeout=20) as fresh:
            for contact_id in (101, 202, 303):  # unauthenticated: 401, one route template
                answer = await fresh.get(f"{app.url}/api/contacts/{contact_id}/messages")
                assert answer.status_code == 401

        for _ in range(4):  # whichever process answers the scrape, it sees all of them
            async with httpx.AsyncClient(timeout=20) as fresh:
                text = (await fresh.get(f"{app.url}/metrics")).text
            requests = _samples(text, "http_requests_total")
            assert _count(requests, route="/healthz", method="GET", status="200") == sent
            assert _count(requests, route="/api/contacts/{contact_id}/messages", status="401") == 3
            assert "/api/contacts/101" not in text  # never the raw path
            durations = _samples(text, "http_request_duration_seconds_count")
            assert _count(durations, route="/healthz", method="GET") == sent
    finally:
        await asyncio.to_thread(app.stop)
    assert not directory.exists()  # a fresh directory per run, removed at exit


async def test_readyz_sees_an_outside_writer_while_healthz_stays_cheap(sqlite_url: str) -> None:
    async with running_stack(sqlite_url) as stack, httpx.AsyncClient(timeout=20) as http:
        ready = await http.get(f"{stack.url}/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ok", "database": "ok"})

        path = sqlite_url.split("///", 1)[1]
        holding, release = threading.Event(), threading.Event()

        def hold_write_lock() -> None:  # another process in a long write transaction
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            holding.set()
            release.wait(20)
            conn.execute("ROLLBACK")
            conn.close()

        holder = threading.Thread(target=hold_write_lock)
        holder.start()
        try:
            assert holding.wait(5)
            blocked = await http.get(f"{stack.url}/readyz")
            alive = await http.get(f"{stack.url}/healthz")
        finally:
            release.set()
            await asyncio.to_thread(holder.join)
        assert blocked.status_code == 503
        assert blocked.json() == {"status": "unavailable", "database": "locked"}
        assert (alive.status_code, alive.json()) == (200, {"status": "ok"})
        assert (await http.get(f"{stack.url}/readyz")).status_code == 200
