"""The simulator on a loopback port in a background thread (``loquent.servers.ServerThread``),
for tests that need a real Twilio stand-in next to code running on their own event loop."""

from __future__ import annotations

from loquent.servers import ServerThread
from loquent.simulator.app import create_simulator_app
from loquent.simulator.config import SimulatorConfig


def simulator_thread(config: SimulatorConfig | None = None, port: int = 0) -> ServerThread:
    """A (not yet started) simulator server; use as ``with simulator_thread() as sim: sim.url``."""
    return ServerThread(create_simulator_app(config), port=port)
