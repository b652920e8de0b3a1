"""What the running process shares: settings, database, notifier, secrets, HTTP client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import httpx
from fastapi import Depends, Request

from loquent.config import Settings
from loquent.db import Database
from loquent.orgs.crypto import SecretBox
from loquent.realtime.fanout import Hub
from loquent.realtime.notifier import Notifier, build_notifier
from loquent.twilio.client import build_http_client


@dataclass
class AppContext:
    settings: Settings
    db: Database
    notifier: Notifier
    box: SecretBox
    http: httpx.AsyncClient
    hub: Hub

    @classmethod
    def from_settings(cls, settings: Settings) -> AppContext:
        db = Database(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
        notifier = build_notifier(settings.redis_url)
        return cls(
            settings=settings,
            db=db,
            notifier=notifier,
            box=SecretBox(settings.secret_keys),
            # The one outbound client of the process, shared by every organization: from the
            # one factory, so it keeps no cookies and follows no redirects.
            http=build_http_client(timeout=settings.twilio_timeout_seconds),
            hub=Hub(
                db,
                notifier,
                poll_seconds=settings.sse_poll_seconds,
                backlog=settings.sse_backlog,
            ),
        )

    async def start(self) -> None:
        await self.notifier.start()

    async def close(self) -> None:
        await self.hub.close()
        await self.notifier.stop()
        await self.http.aclose()
        await self.db.dispose()


async def get_context(request: Request) -> AppContext:
    """The process's context. Async so FastAPI calls it on the event loop, not in a thread."""
    ctx: AppContext = request.app.state.ctx
    return ctx


# What a route declares to get the context: ``ctx: Ctx``.
Ctx = Annotated[AppContext, Depends(get_context)]
