"""A local stand-in for the parts of Twilio that Loquent uses.

It serves the REST API (``/2010-04-01/...``), the Event Streams API (``/v1/...``) and a control
API (``/_sim/...``) from one ASGI app with in-memory state, and delivers Event Streams webhooks
signed exactly as Twilio signs them. The app under test reaches it only through its configurable
Twilio base URLs.
"""

from loquent.simulator.app import create_simulator_app
from loquent.simulator.config import SimulatorConfig

__all__ = ["SimulatorConfig", "create_simulator_app"]
