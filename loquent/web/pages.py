"""Wires the browser-facing side into the app: pages, login, static files."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from starlette.types import Scope

from loquent.web.guards import LoginRequired, login_redirect
from loquent.web.inbox import router as inbox_router
from loquent.web.login import router as login_router
from loquent.web.templating import STATIC_DIR, STATIC_PREFIX, render
from loquent.web.throttle import LoginThrottle


def install_web(app: FastAPI) -> None:
    app.state.login_throttle = LoginThrottle(redis_url=app.state.ctx.settings.redis_url)
    app.include_router(login_router)
    app.include_router(inbox_router)
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")

    @app.exception_handler(LoginRequired)
    async def _to_login(_: Request, exc: LoginRequired) -> Response:
        return login_redirect(exc.next_path)


def storage_outage_page(scope: Scope) -> Response:
    """What a browser sees while the database is unavailable (the JSON 503 is for scripts)."""
    return render(
        Request(scope),
        "error.html",
        {
            "title": "Temporarily unavailable",
            "message": "Loquent cannot reach its database right now. Nothing was changed. "
            "Try again in a few seconds.",
            "back_href": scope.get("path") if scope.get("method") == "GET" else None,
            "back_label": "Try again",
        },
        status_code=503,
        headers={"Retry-After": "5"},
    )
