"""Per-request plumbing at the ASGI edge: a request id on every log line, and HTTP metrics.

Pure ASGI rather than ``BaseHTTPMiddleware``: SSE streams pass through untouched, and the
context variables bound here are the ones uvicorn's access line sees (uvicorn logs it from
inside the application's ``send``, in the request's own task).
"""

from __future__ import annotations

import re
import secrets
import time

import structlog
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loquent.metrics import HTTP_REQUESTS, HTTP_SECONDS

REQUEST_ID_HEADER = "x-request-id"
# A caller's id is kept when it is short and plain (a proxy's or load balancer's id), so one
# request can be followed across hops; anything else is replaced, never logged.
_ACCEPTABLE_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def request_id_from(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER.encode():
            candidate: str = value.decode("latin-1")
            if _ACCEPTABLE_ID.fullmatch(candidate):
                return candidate
            break
    return secrets.token_hex(8)


def route_template(scope: Scope) -> str:
    """The matched route's template (``/api/contacts/{contact_id}``), never the raw path."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if not isinstance(path, str):
        return UNMATCHED_ROUTE
    if isinstance(route, Mount):
        return path.rstrip("/") + "/{path}"  # static files
    return path or "/"


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(scope)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500  # an exception before the answer started becomes uvicorn's 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = route_template(scope)
            method = scope.get("method", "GET")
            method = method if method in _METHODS else "OTHER"  # clients choose this label
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_SECONDS.labels(method, route).observe(time.perf_counter() - started)
