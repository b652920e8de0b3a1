"""The API's error shape: {"error": {"code": "...", "message": "..."}} with the right status.

The same shape is what the OpenAPI document promises: ``ErrorResponse`` is the schema of
every 4xx/5xx answer, including request validation (422), which FastAPI would otherwise
document as its own ``{"detail": [...]}``. Routes list their real error answers with
``error_responses``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
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


class FieldProblem(BaseModel):
    loc: list[str] = Field(description="where in the request: body, query, path, header …")
    msg: str


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable: invalid_request, not_found …")
    message: str = Field(description="for a person")
    details: list[FieldProblem] | None = Field(
        None, description="invalid_request only: every field that was refused"
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


ERROR_SCHEMA_REF = "#/components/schemas/ErrorResponse"
_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
_WWW_AUTHENTICATE = {"WWW-Authenticate": {"schema": {"type": "string"}}}

# What each status means when a route does not say more.
DEFAULT_DESCRIPTIONS: dict[int, str] = {
    400: "malformed request: a body that is not UTF-8 JSON, or a bad cursor",
    401: "authentication required: a session or a bearer token",
    403: "not allowed: an owner-only action, or a session request without its CSRF token",
    404: "no such resource in this organization",
    409: "conflicts with the current state",
    413: "request body too large",
    422: "invalid request: the fields that were refused are in error.details",
    429: "too many requests: retry after Retry-After seconds",
    502: "Twilio unreachable or failing",
    503: "storage (or Twilio) unavailable: retry after Retry-After seconds",
}


def error_responses(*statuses: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error answers, each with the error schema.

    ``error_responses(401, 422, e404="no such contact")``: positional statuses get the
    default description, ``e<status>=`` keywords a route's own.
    """
    wanted = {status: DEFAULT_DESCRIPTIONS[status] for status in statuses}
    wanted.update({int(key.removeprefix("e")): text for key, text in described.items()})
    responses: dict[int | str, dict[str, Any]] = {}
    for status, description in sorted(wanted.items()):
        entry: dict[str, Any] = {"model": ErrorResponse, "description": description}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        elif status == 401:
            entry["headers"] = _WWW_AUTHENTICATE
        responses[status] = entry
    return responses


def as_json(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The same error answers, named as JSON explicitly: for a route whose own answer is not
    JSON (FastAPI would give a ``model`` the route's media type)."""
    explicit: dict[int | str, dict[str, Any]] = {}
    for status, entry in responses.items():
        entry = dict(entry)
        del entry["model"]
        entry["content"] = {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}}
        explicit[status] = entry
    return explicit


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
        code = {
            400: "bad_request",
            401: "unauthorized",
            404: "not_found",
            405: "method_not_allowed",
        }.get(exc.status_code, "http_error")
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
