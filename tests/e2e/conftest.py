"""End-to-end fixtures: the simulator and the app as real servers on loopback ports.

Both run as subprocesses (``python -m loquent.simulator`` and ``loquent serve``) against a
SQLite file migrated here, so the tests see exactly what a deployment would: real sockets,
real SSE streams, the in-process worker fetching bodies from the simulator. Three
organizations are seeded, each connected to its own simulated Twilio account with a sink
pointing at the app:

- ``acme``: the inbox under test;
- ``globex``: a second organization whose user must see none of acme's messages;
- ``initech``: the one whose credentials and signatures are made to fail (settings page).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio

if TYPE_CHECKING:
    from playwright.async_api import Browser

ARTIFACTS_DIR = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
SECRET_KEY = "e2e-" + secrets.token_hex(16)
PASSWORD = "correct horse battery staple"
STARTUP_TIMEOUT_S = 30.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end tests against real servers")


@dataclass(frozen=True)
class SeededOrg:
    key: str
    org_id: int
    email: str
    account_sid: str
    auth_token: str
    lines: tuple[str, ...]
    api_token: str


@dataclass
class Stack:
    app_url: str
    sim_url: str
    database_url: str
    logs_dir: Path
    orgs: dict[str, SeededOrg] = field(default_factory=dict)
    password: str = PASSWORD  # every seeded user's

    def sim(self, method: str, path: str, **kwargs: Any) -> Any:
        """Call the simulator's control API (``/_sim/...``)."""
        response = httpx.request(method, f"{self.sim_url}/_sim{path}", timeout=30, **kwargs)
        assert response.status_code < 400, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else None

    def console_sms(self, org: str, to: str, body: str, **extra: Any) -> str:
        """A text "sent from the Twilio Console" on the org's first line; returns its SID."""
        seeded = self.orgs[org]
        sent = self.sim(
            "POST",
            f"/accounts/{seeded.account_sid}/console-sms",
            json={"from": seeded.lines[0], "to": to, "body": body, "wait": True, **extra},
        )
        return str(sent["sid"])

    def api(self, org: str, path: str) -> httpx.Response:
        """The app's JSON API as the org's script user (bearer token)."""
        return httpx.get(
            f"{self.app_url}{path}",
            timeout=30,
            headers={"Authorization": f"Bearer {self.orgs[org].api_token}"},
        )

    def contact_id(self, org: str, phone: str, timeout_s: float = 15.0) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            items = self.api(org, "/api/contacts?limit=200").json()["items"]
            for item in items:
                if item["phone"] == phone:
                    return int(item["id"])
            if time.monotonic() > deadline:
                raise AssertionError(f"no contact {phone} in {org}: {items}")
            time.sleep(0.2)

    def wait_body_ready(self, org: str, contact_id: int, timeout_s: float = 20.0) -> None:
        """Until no message of the conversation is still waiting for its body."""
        deadline = time.monotonic() + timeout_s
        while True:
            items = self.api(org, f"/api/contacts/{contact_id}/messages").json()["items"]
            if items and all(m["body_state"] != "pending" for m in items):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"bodies still pending: {items}")
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], log_file: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    tail = log_file.read_text(errors="replace")[-4000:] if log_file.exists() else ""
    raise RuntimeError(f"{url} did not come up (exit code {process.poll()}):\n{tail}")


def _start(command: list[str], env: dict[str, str], log_file: Path) -> subprocess.Popen[bytes]:
    with log_file.open("wb") as log:
        return subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


async def _seed_database(database_url: str, orgs: list[dict[str, Any]]) -> dict[str, SeededOrg]:
    from loquent.config import Settings
    from loquent.context import AppContext
    from loquent.orgs import service

    settings = Settings(database_url=database_url, secret_key=SECRET_KEY)
    ctx = AppContext.from_settings(settings)
    seeded: dict[str, SeededOrg] = {}
    try:
        async with ctx.db.session() as session:
            for spec in orgs:
                org = await service.create_organization(
                    session,
                    ctx.box,
                    name=spec["name"],
                    twilio_account_sid=spec["account_sid"],
                    twilio_auth_token=spec["auth_token"],
                )
                for number in spec["lines"]:
                    await service.add_phone_number(session, org.id, number)
                user = await service.get_or_create_user(session, spec["email"], PASSWORD)
                await service.ensure_member(session, user, org.id, "owner")
                token = await service.create_api_token(session, user, org.id, "e2e")
                seeded[spec["key"]] = SeededOrg(
                    key=spec["key"],
                    org_id=org.id,
                    email=spec["email"],
                    account_sid=spec["account_sid"],
                    auth_token=spec["auth_token"],
                    lines=tuple(spec["lines"]),
                    api_token=token,
                )
            await session.commit()
    finally:
        await ctx.close()
    return seeded


ORG_SPECS = [
    {
        "key": "acme",
        "name": "Acme Clinic",
        "email": "ops@acme.test",
        "lines": ["+14155550100", "+14155550101"],
    },
    {"key": "globex", "name": "Globex", "email": "ops@globex.test", "lines": ["+14155550200"]},
    {"key": "initech", "name": "Initech", "email": "ops@initech.test", "lines": ["+14155550300"]},
]


@contextlib.contextmanager
def running_stack(root: Path, **extra_env: str) -> Iterator[Stack]:
    """The simulator and the app as subprocesses on a fresh SQLite file under ``root``,
    seeded with ``ORG_SPECS``; ``extra_env`` adds or overrides the app's settings."""
    from loquent.migrate import upgrade

    database_url = f"sqlite+aiosqlite:///{root / 'loquent.db'}"
    upgrade(database_url)

    app_port, sim_port = _free_port(), _free_port()
    app_url, sim_url = f"http://127.0.0.1:{app_port}", f"http://127.0.0.1:{sim_port}"
    env = {
        **os.environ,
        "LOQUENT_DATABASE_URL": database_url,
        "LOQUENT_SECRET_KEY": SECRET_KEY,
        "LOQUENT_PUBLIC_URL": app_url,
        "LOQUENT_TWILIO_API_BASE": sim_url,
        "LOQUENT_TWILIO_EVENTS_API_BASE": sim_url,
        "LOQUENT_RUN_WORKER": "true",
        "LOQUENT_WORKER_POLL_SECONDS": "1",
        "LOQUENT_ENRICH_BACKOFF_BASE_SECONDS": "0.2",
        "LOQUENT_ENRICH_BACKOFF_MAX_SECONDS": "2",
        "LOQUENT_SSE_PING_SECONDS": "5",
        "LOQUENT_SSE_POLL_SECONDS": "1",
        "LOQUENT_LOG_LEVEL": "WARNING",
        "LOQUENT_SIMULATOR_URL": sim_url,
        **extra_env,
    }
    stack = Stack(app_url=app_url, sim_url=sim_url, database_url=database_url, logs_dir=root)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        sim_log = root / "simulator.log"
        processes.append(
            _start(
                [
                    sys.executable,
                    "-m",
                    "loquent.simulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(sim_port),
                    "--log-level",
                    "warning",
                ],
                env,
                sim_log,
            )
        )
        _wait_ready(f"{sim_url}/_sim/healthz", processes[-1], sim_log)

        specs = []
        for spec in ORG_SPECS:
            account = stack.sim(
                "POST",
                "/accounts",
                json={
                    "sid": "AC" + secrets.token_hex(16),
                    "auth_token": secrets.token_hex(16),
                    "friendly_name": spec["name"],
                },
            )
            for number in spec["lines"]:
                stack.sim(
                    "POST", f"/accounts/{account['sid']}/numbers", json={"phone_number": number}
                )
            stack.sim(
                "POST",
                f"/accounts/{account['sid']}/sinks",
                json={"destination": f"{app_url}/twilio/events"},
            )
            specs.append(
                {**spec, "account_sid": account["sid"], "auth_token": account["auth_token"]}
            )
        stack.orgs = asyncio.run(_seed_database(database_url, specs))

        app_log = root / "app.log"
        processes.append(
            _start(
                [
                    sys.executable,
                    "-c",
                    "from loquent.cli import main; main()",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(app_port),
                ],
                env,
                app_log,
            )
        )
        _wait_ready(f"{app_url}/healthz", processes[-1], app_log)
        yield stack
    finally:
        for process in reversed(processes):
            _stop(process)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_stack(tmp_path_factory.mktemp("e2e")) as running:
        yield running


# Streams end this soon in ``short_stream_stack``, so a test sees browsers reconnect.
SHORT_STREAM_SECONDS = 3.0


@pytest.fixture(scope="session")
def short_stream_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A stack of its own whose SSE streams end after ``SHORT_STREAM_SECONDS``."""
    with running_stack(
        tmp_path_factory.mktemp("e2e-short-streams"),
        LOQUENT_SSE_MAX_STREAM_SECONDS=str(SHORT_STREAM_SECONDS),
    ) as running:
        yield running


# --- the browser ----------------------------------------------------------------------------

LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-gpu",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--disable-dev-shm-usage",
]


@pytest_asyncio.fixture
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, driven by Playwright (no browser download)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=LAUNCH_ARGS
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS_DIR
