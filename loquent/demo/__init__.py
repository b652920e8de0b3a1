"""``loquent demo``: the inbox next to a simulated Twilio account, with a short scenario.

One process, one event loop, two uvicorn servers on loopback (``loquent.servers.ServerTask``):

- the Twilio simulator (``http://127.0.0.1:8899``), standing in for api.twilio.com and
  events.twilio.com;
- the app (``http://127.0.0.1:8000``), configured to call the simulator and to receive its
  Event Streams deliveries at ``/twilio/events``.

``environment`` points the app at the simulator and prepares the database, ``seed`` registers
the demo's account and organization (idempotently), ``scenario`` plays the texts. This module
runs them in order and stops both servers, the app first, on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Any

from loquent.demo.console import say
from loquent.demo.environment import (
    SECRET_KEY_FILE,
    configure_environment,
    demo_secret_key,
    prepare_database,
)
from loquent.demo.scenario import play_scenario
from loquent.demo.seed import DEMO_EMAIL, DEMO_ORG_NAME, FRONT_DESK, REMINDERS, DemoSeed, seed
from loquent.servers import LOOPBACK, ServerStartError, ServerTask, bind
from loquent.simulator.client import DEFAULT_URL as DEFAULT_SIMULATOR_URL
from loquent.simulator.client import SimulatorClient

__all__ = [
    "SECRET_KEY_FILE",
    "DemoOptions",
    "configure_environment",
    "demo_secret_key",
    "run_demo",
]


@dataclass(frozen=True)
class DemoOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    sim_port: int = 8899
    fresh: bool = False
    play_scenario: bool = True
    # Start the scenario when a browser opens the inbox, or after this many seconds.
    wait_for_viewer_seconds: float = 15.0


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
    try:
        return bind(host, port)
    except OSError as exc:
        raise SystemExit(
            f"error: cannot listen on {host}:{port} for the {what} ({exc.strerror}). "
            f"Is another demo running? Choose another port with {option}."
        ) from None


async def _start(server: ServerTask) -> asyncio.Task[None]:
    try:
        return await server.start()
    except ServerStartError as exc:
        raise SystemExit(f"error: {exc}") from None


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
    sim: SimulatorClient, seed: DemoSeed, probe: _ViewerProbe, wait_seconds: float
) -> None:
    if wait_seconds > 0:
        say(f"The scenario starts when the inbox is open in a browser (or in {wait_seconds:g} s).")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(probe.seen.wait(), timeout=wait_seconds)
        await asyncio.sleep(1.0)  # let the page load its list before the first text arrives
    try:
        await play_scenario(sim, seed.account_sid)
    except RuntimeError as exc:  # SimulatorError: refused, or unreachable
        say(f"The scenario stopped early: {exc}")


async def _run(options: DemoOptions) -> None:
    from loquent.app import create_app
    from loquent.config import Settings
    from loquent.simulator.app import create_simulator_app

    app_sock = _bind(options.host, options.port, "app", "--port")
    sim_sock = _bind(LOOPBACK, options.sim_port, "simulator", "--sim-port")
    app_url = f"http://{options.host}:{app_sock.getsockname()[1]}"
    sim_url = f"http://{LOOPBACK}:{sim_sock.getsockname()[1]}"
    configure_environment(app_url, sim_url)
    settings = Settings()

    say(f"Preparing the database ({settings.database_url}) …")
    await asyncio.to_thread(prepare_database, settings.database_url, fresh=options.fresh)

    probe = _ViewerProbe(create_app(settings))
    sim_server = ServerTask(create_simulator_app(), sim_sock, "simulator")
    app_server = ServerTask(probe, app_sock, "app")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # not on Windows: Ctrl-C still works
            loop.add_signal_handler(sig, stop.set)

    started: list[ServerTask] = []
    try:
        tasks = [await _start(sim_server)]
        started.append(sim_server)
        sim = SimulatorClient(sim_url)
        demo_seed = await seed(settings, sim, app_url)
        tasks.append(await _start(app_server))
        started.append(app_server)
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
        app_server.should_exit()
        sim_server.should_exit()
        # The app first: its worker may still be talking to the simulator.
        for server in reversed(started):
            await server.stop()


def run_demo(options: DemoOptions) -> None:
    try:
        asyncio.run(_run(options))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed
        pass
    sys.stdout.flush()
