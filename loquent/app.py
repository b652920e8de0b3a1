"""The ASGI application: wiring only, no business logic."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from loquent.config import Settings, get_settings
from loquent.contacts.api import router as contacts_router
from loquent.context import AppContext
from loquent.errors import install_error_handlers
from loquent.logging import configure_logging
from loquent.messaging.api import router as messages_router
from loquent.messaging.media_api import router as media_router
from loquent.orgs.api import router as settings_router
from loquent.realtime.api import router as realtime_router
from loquent.twilio.events_api import router as twilio_events_router
from loquent.twilio.history_api import router as twilio_history_router
from loquent.web.pages import install_web


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(json_logs=settings.log_json, level=settings.log_level)
    ctx = AppContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        worker = None
        sync = None
        if settings.run_worker:
            from loquent.jobs.worker import Worker
            from loquent.twilio.catchup import SyncRunner

            worker = Worker(
                db=ctx.db, notifier=ctx.notifier, settings=settings, box=ctx.box, http=ctx.http
            )
            await worker.start()
            # History imports and catch-up after downtime run beside enrichment.
            sync = SyncRunner(
                db=ctx.db, notifier=ctx.notifier, settings=settings, box=ctx.box, http=ctx.http
            )
            await sync.start()
        app.state.worker = worker
        try:
            yield
        finally:
            if sync is not None:
                await sync.stop()
            if worker is not None:
                await worker.stop()
            await ctx.close()

    app = FastAPI(
        title="Loquent",
        version="0.1.0",
        description="Multi-tenant SMS inbox for organizations that bring their own Twilio account.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    install_error_handlers(app)
    app.include_router(twilio_events_router, tags=["twilio"])
    app.include_router(contacts_router)
    app.include_router(messages_router)
    app.include_router(media_router)
    app.include_router(realtime_router)
    app.include_router(settings_router)
    app.include_router(twilio_history_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> Any:
        try:
            async with ctx.db.reader() as session:
                await session.execute(text("SELECT 1"))
        except Exception:
            return JSONResponse({"status": "unavailable", "database": "down"}, status_code=503)
        return {"status": "ok", "database": "ok"}

    @app.get("/metrics", tags=["ops"], response_class=Response)
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    install_web(app)
    return app
