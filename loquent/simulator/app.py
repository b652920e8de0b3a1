"""``create_simulator_app()``: the simulator as one ASGI app.

One server answers for both Twilio hosts (``api.twilio.com`` paths under ``/2010-04-01`` and
``events.twilio.com`` paths under ``/v1``) plus the ``/_sim`` control API.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from loquent.simulator import control, events_api, twilio_api
from loquent.simulator.auth import basic_user
from loquent.simulator.config import SimulatorConfig
from loquent.simulator.core import Simulator
from loquent.simulator.errors import TwilioError, handle_twilio_error

TWILIO_PREFIXES = ("/2010-04-01/", "/v1/")
CONTROL_PREFIX = "/_sim/"
# Control paths any client may use: the media host and the health check.
PUBLIC_CONTROL_PATHS = ("/_sim/media-content/", "/_sim/healthz")


def _is_loopback(request: Request) -> bool:
    if request.client is None:  # e.g. a Unix socket: local by construction
        return True
    host = request.client.host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def create_simulator_app(
    config: SimulatorConfig | None = None, *, http_client: httpx.AsyncClient | None = None
) -> FastAPI:
    """Build a simulator with empty state.

    ``http_client`` is used for webhook deliveries; pass one with an ASGI transport to deliver
    into an in-process app without sockets. The simulator closes only a client it created.
    """
    sim = Simulator(config, http_client)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await sim.aclose()

    app = FastAPI(
        title="Loquent Twilio simulator",
        lifespan=lifespan,
        docs_url="/_sim/docs",
        redoc_url=None,
        openapi_url="/_sim/openapi.json",
    )
    app.state.simulator = sim
    app.add_exception_handler(TwilioError, handle_twilio_error)
    app.include_router(twilio_api.router)
    app.include_router(events_api.router)
    app.include_router(control.router)

    @app.middleware("http")
    async def front_door(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        path = request.url.path
        if path.startswith(CONTROL_PREFIX):
            if (
                sim.config.control_loopback_only
                and not path.startswith(PUBLIC_CONTROL_PATHS)
                and not _is_loopback(request)
            ):
                return JSONResponse({"detail": "the control API answers loopback only"}, 403)
            return await call_next(request)
        if not path.startswith(TWILIO_PREFIXES):
            return await call_next(request)
        return await _twilio_request(sim, request, call_next)

    return app


async def _twilio_request(
    sim: Simulator, request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """Apply fault rules to a Twilio API request, then log it (without its password)."""
    started = time.perf_counter()
    path = request.url.path
    rule = sim.faults.take(request.method, path)
    response: Response | None = None
    if rule is not None:
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        error = rule.error(path)
        if error is not None:
            response = error.response()
    if response is None:
        response = await call_next(request)
    if rule is not None and rule.set_cookie:
        response.headers.append("set-cookie", rule.set_cookie)
    sim.log_request(
        method=request.method,
        path=path,
        query=request.url.query,
        auth_user=basic_user(request),
        cookies=sorted(request.cookies),
        status=response.status_code,
        duration_ms=(time.perf_counter() - started) * 1000,
        fault_id=rule.id if rule is not None and rule.status is not None else None,
    )
    return response
