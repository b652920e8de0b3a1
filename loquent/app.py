"""The ASGI application: wiring only, no business logic."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from loquent import __version__
from loquent.config import Settings, get_settings
from loquent.contacts.api import router as contacts_router
from loquent.context import AppContext
from loquent.errors import install_error_handlers
from loquent.logging import configure_logging
from loquent.messaging.api import router as messages_router
from loquent.messaging.media_api import router as media_router
from loquent.metrics import CONTENT_TYPE, PROCESS_STARTED, mark_process_dead, render
from loquent.middleware import RequestContextMiddleware
from loquent.openapi import operation_id
from loquent.orgs.api import router as settings_router
from loquent.readiness import Part, readiness
from loquent.realtime.api import router as realtime_router
from loquent.twilio.api import router as twilio_account_router
from loquent.twilio.events_api import router as twilio_events_router
from loquent.twilio.history_api import router as twilio_history_router
from loquent.twilio.webhooks_api import router as twilio_webhooks_router
from loquent.web.pages import install_web, storage_outage_page


class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadinessOut(BaseModel):
    status: Literal["ok", "degraded", "unavailable"]
    database: Part
    redis: Part | None = Field(None, description="only when Redis is configured")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(json_logs=settings.log_json, level=settings.log_level, sql=settings.log_sql)
    ctx = AppContext.from_settings(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await ctx.start()
        PROCESS_STARTED.set_to_current_time()
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
            await app.state.login_throttle.aclose()
            await ctx.close()
            mark_process_dead(os.getpid())

    app = FastAPI(
        title="Loquent",
        version=__version__,
        description="Multi-tenant SMS inbox for organizations that bring their own Twilio account.",
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.ctx = ctx
    install_error_handlers(app, outage_page=storage_outage_page)
    app.include_router(twilio_events_router, tags=["twilio webhooks"])
    app.include_router(twilio_webhooks_router, tags=["twilio webhooks"])
    app.include_router(contacts_router)
    app.include_router(messages_router)
    app.include_router(media_router)
    app.include_router(realtime_router)
    app.include_router(settings_router)
    app.include_router(twilio_account_router)
    app.include_router(twilio_history_router)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> HealthOut:
        """Liveness: the process answers. Touches nothing else (see /readyz)."""
        return HealthOut(status="ok")

    @app.get(
        "/readyz",
        tags=["ops"],
        response_model=ReadinessOut,
        responses={
            # A probe's answer, not an error: load balancers read the status code, people
            # the parts.
            503: {"model": ReadinessOut, "description": "not ready: the parts say which"},
        },
    )
    async def readyz() -> JSONResponse:
        """Readiness: the database answers (SQLite: a write could start), Redis if set."""
        ready, body = await readiness(ctx)
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={
            200: {
                "description": "Prometheus text format, all worker processes",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        },
    )
    async def metrics() -> Response:
        return Response(render(), media_type=CONTENT_TYPE)

    install_web(app)
    app.add_middleware(RequestContextMiddleware)  # outermost of ours: sees every answer
    return app
