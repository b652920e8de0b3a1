"""``loquent demo``: the inbox next to a simulated Twilio account, with a short scenario.

One process, one event loop, two uvicorn servers on loopback:

- the Twilio simulator (``http://127.0.0.1:8899``), standing in for api.twilio.com and
  events.twilio.com;
- the app (``http://127.0.0.1:8000``), configured to call the simulator and to receive its
  Event Streams deliveries at ``/twilio/events``.

Seeding is idempotent: the database keeps the demo organization between runs (the
simulator's state lives in memory, so it is registered again on every start, with a fresh
auth token stored in both). Then the scenario plays texts "sent from the Twilio Console",
an inbound reply, a late ``delivered`` and a duplicate delivery, a couple of seconds apart,
so whoever has the inbox open watches messages arrive, bodies fill in and contacts move to
the top.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import signal
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

DEMO_EMAIL = "demo@loquent.local"
DEMO_ORG_NAME = "Harbor Dental"
DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///.demo/loquent.db"
# A fixed, well-formed SID, so the same organization is found again on the next run.
DEMO_ACCOUNT_SID = "AC" + hashlib.sha256(b"loquent demo account").hexdigest()[:32]
# The simulator answers message fetches this much later, so the "loading message…"
# placeholder is on screen long enough to be seen before the body replaces it.
BODY_FETCH_DELAY_MS = 1500
STEP_PAUSE_SECONDS = 2.5
DEFAULT_SIMULATOR_URL = "http://127.0.0.1:8899"


@dataclass(frozen=True)
class Line:
    number: str
    name: str


FRONT_DESK = Line("+14155550100", "Front desk")
REMINDERS = Line("+14155550142", "Reminders")
LINES = (FRONT_DESK, REMINDERS)

MAYA = "+12125550123"  # seeded with a name; the others appear as numbers, as stubs do
SAM = "+13105550147"
ALEX = "+16175550188"


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    sim_port: int = 8899
    fresh: bool = False
    play_scenario: bool = True
    # Start the scenario when a browser opens the inbox, or after this many seconds.
    wait_for_viewer_seconds: float = 15.0


@dataclass(frozen=True)
class DemoSeed:
    account_sid: str
    password: str
    org_id: int


def say(text: str = "") -> None:
    print(text, flush=True)


# --- servers ---------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """A uvicorn server that leaves Ctrl-C to the demo, which stops both servers in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class _ViewerProbe:
    """ASGI wrapper noting when a browser first opens the live stream (``/api/events``)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/events":
            self.seen.set()
        await self.app(scope, receive, send)


def _bind(host: str, port: int, what: str, option: str) -> socket.socket:
    """Bind now, so a busy port is a clear message instead of a stack trace later."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(
            f"error: cannot listen on {host}:{port} for the {what} ({exc.strerror}). "
            f"Is another demo running? Choose another port with {option}."
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


async def _start(server: _Server, sock: socket.socket, name: str) -> asyncio.Task[None]:
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    while not server.started:
        if task.done():
            # uvicorn has logged why; it ends a failed startup with SystemExit.
            with contextlib.suppress(BaseException):
                task.result()
            raise SystemExit(f"error: the {name} could not start (see the log above)")
        await asyncio.sleep(0.02)
    return task


def _server(app: Any) -> _Server:
    return _Server(
        uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
        )
    )


# --- configuration and database -------------------------------------------------------------


DEMO_DATA_DIR = Path(".demo")
SECRET_KEY_FILE = "secret.key"


def demo_secret_key(data_dir: Path) -> str:
    """The demo's own LOQUENT_SECRET_KEY: made once, kept in its data directory (owner-only),
    and reused on later runs, so the tokens it stored stay readable."""
    path = data_dir / SECRET_KEY_FILE
    try:
        key = path.read_text().strip()
    except FileNotFoundError:
        key = ""
    if key:
        return key
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def _configure_environment(app_url: str, sim_url: str) -> None:
    """The app reaches "Twilio" only through its configurable base URLs: point them here."""
    os.environ.setdefault("LOQUENT_DATABASE_URL", DEFAULT_DATABASE_URL)
    if not os.environ.get("LOQUENT_SECRET_KEY"):
        sqlite_file = _sqlite_path(os.environ["LOQUENT_DATABASE_URL"])
        data_dir = sqlite_file.parent if sqlite_file is not None else DEMO_DATA_DIR
        os.environ["LOQUENT_SECRET_KEY"] = demo_secret_key(data_dir)
    os.environ["LOQUENT_PUBLIC_URL"] = app_url
    os.environ["LOQUENT_TWILIO_API_BASE"] = sim_url
    os.environ["LOQUENT_TWILIO_EVENTS_API_BASE"] = sim_url
    os.environ.setdefault("LOQUENT_LOG_LEVEL", "WARNING")  # keep the demo's output readable
    os.environ["LOQUENT_SIMULATOR_URL"] = sim_url  # for `loquent simulate` in this process


def _sqlite_path(database_url: str) -> Path | None:
    if not database_url.startswith("sqlite"):
        return None
    _, _, path = database_url.partition(":///")
    return Path(path) if path and path != ":memory:" else None


def _prepare_database(database_url: str, *, fresh: bool) -> None:
    from loquent.migrate import upgrade

    path = _sqlite_path(database_url)
    if path is not None:
        if fresh:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
    elif fresh:
        say("note: --fresh only resets SQLite databases; keeping the existing data")
    upgrade(database_url)


# --- seeding ---------------------------------------------------------------------------------


async def _sim(client: httpx.AsyncClient, path: str, payload: dict[str, Any]) -> Any:
    response = await client.post(f"/_sim{path}", json=payload)
    if response.status_code >= 400:
        raise RuntimeError(f"simulator refused {path}: {response.status_code} {response.text}")
    return response.json() if response.content else None


async def seed(settings: Any, sim: httpx.AsyncClient, app_url: str) -> DemoSeed:
    """Register the account, its lines and the sink on the simulator, and the organization,
    its lines and the demo user in the database. Safe to run on every start."""
    from loquent.contacts import service as contacts
    from loquent.context import AppContext
    from loquent.orgs import service as orgs

    token = secrets.token_hex(16)
    sid = DEMO_ACCOUNT_SID
    await _sim(sim, "/accounts", {"sid": sid, "auth_token": token, "friendly_name": DEMO_ORG_NAME})
    line_sids = {}
    for line in LINES:
        added = await _sim(
            sim,
            f"/accounts/{sid}/numbers",
            {"phone_number": line.number, "friendly_name": line.name},
        )
        line_sids[line.number] = added["sid"]
    sink = await _sim(
        sim,
        f"/accounts/{sid}/sinks",
        {"destination": app_url.rstrip("/") + "/twilio/events", "description": "Loquent demo"},
    )
    await _sim(
        sim,
        "/faults",
        {
            "method": "GET",
            "path_regex": r"/Messages/(SM|MM)[0-9a-f]{32}\.json$",
            "delay_ms": BODY_FETCH_DELAY_MS,
        },
    )

    password = os.environ.get("LOQUENT_DEMO_PASSWORD") or secrets.token_urlsafe(9)
    ctx = AppContext.from_settings(settings)
    try:
        async with ctx.db.session() as session:
            org = await orgs.find_org_by_account_sid(session, sid)
            if org is None:
                org = await orgs.create_organization(session, ctx.box, name=DEMO_ORG_NAME)
            await orgs.set_twilio_credentials(
                session, ctx.box, org, account_sid=sid, auth_token=token
            )
            for line in LINES:
                await orgs.add_phone_number(
                    session,
                    org.id,
                    line.number,
                    twilio_sid=line_sids[line.number],
                    friendly_name=line.name,
                )
            org.sink_sid = sink["sink_sid"]
            org.subscription_sid = sink["subscription_sid"]
            org.sms_events_active = True
            user = await orgs.get_or_create_user(session, DEMO_EMAIL, password)
            await orgs.ensure_member(session, user, org.id, "owner")
            maya = await contacts.resolve_or_create(session, org.id, MAYA, source="manual")
            if not (maya.first_name or maya.last_name):
                maya.first_name, maya.last_name = "Maya", "Patel"
            org_id = org.id
            await session.commit()
    finally:
        await ctx.close()
    return DemoSeed(account_sid=sid, password=password, org_id=org_id)


# --- the scenario ----------------------------------------------------------------------------


async def play_scenario(sim: httpx.AsyncClient, account_sid: str) -> None:
    base = f"/accounts/{account_sid}"

    async def console(line: Line, to: str, body: str, **extra: Any) -> str:
        sent = await _sim(
            sim,
            f"{base}/console-sms",
            {"from": line.number, "to": to, "body": body, "wait": True, **extra},
        )
        return str(sent["sid"])

    async def pause() -> None:
        await asyncio.sleep(STEP_PAUSE_SECONDS)

    say("Scenario:")
    say(f"  1. Twilio Console: {FRONT_DESK.name} texts Maya Patel (delivered comes later)")
    first = await console(
        FRONT_DESK,
        MAYA,
        "Hi Maya, this is Harbor Dental: your cleaning is confirmed for "
        "Thursday at 10:00. Reply here if you need to change it.",
        statuses=["queued", "sent"],
    )
    await pause()

    say(f"  2. Twilio Console: {REMINDERS.name} texts {SAM} (each event sent twice, shuffled)")
    await console(
        REMINDERS,
        SAM,
        "Reminder: your crown fitting is tomorrow at 14:30. Please arrive 10 minutes early.",
        statuses=["queued", "sent", "delivered"],
        duplicate=2,
        shuffle=True,
    )
    await pause()

    say("  3. Maya replies to the front desk")
    await _sim(
        sim,
        f"{base}/inbound-sms",
        {"from": MAYA, "to": FRONT_DESK.number, "body": "Thanks! See you Thursday.", "wait": True},
    )
    await pause()

    say("  4. The late 'delivered' for the first text arrives")
    await _sim(sim, f"{base}/messages/{first}/events", {"statuses": ["delivered"], "wait": True})
    await pause()

    say(f"  5. Twilio Console: {FRONT_DESK.name} texts {ALEX}, who moves to the top")
    await console(
        FRONT_DESK,
        ALEX,
        "Your new patient forms are ready: fill them in before your visit on Monday.",
        statuses=["queued", "sent", "delivered"],
    )
    await pause()

    say("  6. Twilio redelivers an event it already delivered (the inbox keeps one copy)")
    await _sim(sim, f"{base}/messages/{first}/events", {"statuses": ["delivered"], "wait": True})
    say("Scenario done.")


# --- the whole demo --------------------------------------------------------------------------


def _banner(app_url: str, sim_url: str, seed: DemoSeed, database_url: str) -> None:
    rule = "─" * 72
    say(rule)
    say("  Loquent demo is running")
    say("")
    say(f"  Open      {app_url}/")
    say(f"  Email     {DEMO_EMAIL}")
    say(f"  Password  {seed.password}")
    say("")
    say(
        f"  Organization  {DEMO_ORG_NAME}, lines {FRONT_DESK.number} ({FRONT_DESK.name}) and "
        f"{REMINDERS.number} ({REMINDERS.name})"
    )
    say(f"  Simulator     {sim_url} (stands in for Twilio; account {seed.account_sid})")
    say(f"  Database      {database_url}")
    say("")
    # `loquent simulate` finds the simulator on its default port by itself.
    sim_option = "" if sim_url == DEFAULT_SIMULATOR_URL else f" --sim-url {sim_url}"
    say("  Send more texts by hand, from another terminal (with the venv active):")
    say(
        f"    loquent simulate external-sms{sim_option} --from {FRONT_DESK.number} "
        "--to +12025550111 --body 'Sent from the Console'"
    )
    say(
        f"    loquent simulate inbound-sms{sim_option} --from +12025550111 "
        f"--to {FRONT_DESK.number} --body 'A reply'"
    )
    say("")
    say("  Press Ctrl-C to stop.")
    say(rule)


async def _play_when_watched(
    sim: httpx.AsyncClient, seed: DemoSeed, probe: _ViewerProbe, wait_seconds: float
) -> None:
    if wait_seconds > 0:
        say(f"The scenario starts when the inbox is open in a browser (or in {wait_seconds:g} s).")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe.seen.wait(), timeout=wait_seconds)
        await asyncio.sleep(1.0)  # let the page load its list before the first text arrives
    try:
        await play_scenario(sim, seed.account_sid)
    except (httpx.HTTPError, RuntimeError) as exc:
        say(f"The scenario stopped early: {exc}")


async def _run(options: DemoOptions) -> None:
    from loquent.app import create_app
    from loquent.config import Settings
    from loquent.simulator.app import create_simulator_app

    app_sock = _bind(options.host, options.port, "app", "--port")
    sim_sock = _bind("127.0.0.1", options.sim_port, "simulator", "--sim-port")
    app_url = f"http://{options.host}:{app_sock.getsockname()[1]}"
    sim_url = f"http://127.0.0.1:{sim_sock.getsockname()[1]}"
    _configure_environment(app_url, sim_url)
    settings = Settings()

    say(f"Preparing the database ({settings.database_url}) …")
    await asyncio.to_thread(_prepare_database, settings.database_url, fresh=options.fresh)

    sim_server = _server(create_simulator_app())
    probe = _ViewerProbe(create_app(settings))
    app_server = _server(probe)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows: Ctrl-C still works
            loop.add_signal_handler(sig, stop.set)

    tasks: list[asyncio.Task[None]] = []
    try:
        tasks.append(await _start(sim_server, sim_sock, "simulator"))
        async with httpx.AsyncClient(base_url=sim_url, timeout=30.0) as sim:
            demo_seed = await seed(settings, sim, app_url)
            tasks.append(await _start(app_server, app_sock, "app"))
            _banner(app_url, sim_url, demo_seed, settings.database_url)
            scenario = None
            if options.play_scenario:
                scenario = asyncio.create_task(
                    _play_when_watched(sim, demo_seed, probe, options.wait_for_viewer_seconds)
                )
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not stop.is_set():
                say("error: a server stopped unexpectedly")
            if scenario is not None:
                scenario.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await scenario
    finally:
        say("Stopping …")
        app_server.should_exit = True
        sim_server.should_exit = True
        # The app first: its worker may still be talking to the simulator.
        for task in reversed(tasks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task


def run_demo(options: DemoOptions) -> None:
    try:
        asyncio.run(_run(options))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        pass
    sys.stdout.flush()
