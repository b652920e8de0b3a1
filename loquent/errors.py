"""The API's error shape: {"error": {"code": "...", "message": "..."}} with the right status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loquent.db import is_storage_outage

log = structlog.get_logger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


# Renders the page a browser gets when storage is unavailable. The web package provides it
# (app.py passes it in), so this module never imports the web UI.
OutagePage = Callable[[Scope], Response]


def install_error_handlers(app: FastAPI, *, outage_page: OutagePage | None = None) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(p) for p in err.get("loc", ())], "msg": err.get("msg", "")}
            for err in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        message = f"{'.'.join(first['loc'][1:] or first['loc'])}: {first['msg']}"
        return JSONResponse(
            error_body("invalid_request", message, details=details), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(
            exc.status_code, "http_error"
        )
        return JSONResponse(
            error_body(code, str(exc.detail)),
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request.failed", path=request.url.path)
        return JSONResponse(error_body("internal_error", "internal error"), status_code=500)

    app.add_middleware(StorageOutageMiddleware, outage_page=outage_page)


class StorageOutageMiddleware:
    """Turn "the database is unreachable / locked" into 503 + Retry-After.

    A 503 tells Twilio (and any client) to retry; it must never look like a 2xx or a 400.
    Pure ASGI rather than an exception handler: Starlette's catch-all handler re-raises
    after answering, which can cut the connection before the answer is flushed.
    """

    def __init__(self, app: ASGIApp, outage_page: OutagePage | None = None) -> None:
        self.app = app
        self.outage_page = outage_page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if started or not is_storage_outage(exc):
                raise
            log.warning("storage.unavailable", path=scope.get("path"), error=type(exc).__name__)
            response: Response
            if self.outage_page is not None and _wants_html(scope):
                response = self.outage_page(scope)
                response.status_code = 503
                response.headers["Retry-After"] = "5"
            else:
                response = JSONResponse(
                    error_body("storage_unavailable", "storage is unavailable, retry later"),
                    status_code=503,
                    headers={"Retry-After": "5"},
                )
            await response(scope, receive, send)


def _wants_html(scope: Scope) -> bool:
    """A browser navigating (a page, a form post) rather than a script or a webhook."""
    for name, value in scope.get("headers", ()):
        if name == b"accept":
            return b"text/html" in value
    return False
