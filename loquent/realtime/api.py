"""GET /api/events — the organization's realtime events as Server-Sent Events.

Each frame is ``id: <event log id>``, ``event: <type>``, ``data: {"type", "payload"}``. A
client resumes with ``Last-Event-ID`` (or ``?after=`` on its first connection) and gets
exactly the events it missed; if those are no longer in the log, or there are more than
the replay bound, it gets a ``resync`` event and should re-fetch. Streams end after a
maximum lifetime so that browsers reconnect (and land on a healthy process) regularly,
and re-check their session or token every ``LOQUENT_SSE_AUTH_RECHECK_SECONDS``: a stream
ends soon after its user logs out, or its session expires or its token is revoked.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from sqlalchemy import func, select
from sse_starlette import EventSourceResponse, ServerSentEvent

from loquent.context import AppContext, Ctx
from loquent.errors import ApiError, error_responses
from loquent.messaging.events import EVT_MESSAGE_NEW, EVT_MESSAGE_STATUS
from loquent.metrics import SSE_STREAMS
from loquent.openapi import MAX_ID
from loquent.orgs.auth import CurrentPrincipal
from loquent.orgs.service import Principal, credential_is_live
from loquent.realtime import log as event_log
from loquent.realtime.models import EventLogEntry
from loquent.twilio.history_events import (
    EVT_CATCHUP_FINISHED,
    EVT_IMPORT_FINISHED,
    EVT_IMPORT_PROGRESS,
)

router = APIRouter(prefix="/api", tags=["realtime"])

RESYNC = "resync"
_RECONNECT_MS = 1000


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _frame(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One kind of frame: its ``event:`` name and the JSON its ``data:`` line carries."""
    return {
        "type": "object",
        "required": ["event", "data"],
        "properties": {
            "event": {"const": event},
            "id": {"type": "string", "pattern": "^[0-9]+$"},
            "retry": {"type": "integer"},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {
                    "type": "object",
                    "required": ["type", "payload"],
                    "properties": {"type": {"const": event}, "payload": payload},
                },
            },
        },
    }


# Each frame, as OpenAPI 3.2 describes Server-Sent Events (the schema is one event).
EVENT_FRAME = {
    "oneOf": [
        _frame(EVT_MESSAGE_NEW, _ref("MessageOut")),
        _frame(EVT_MESSAGE_STATUS, _ref("MessageOut")),
        _frame(EVT_IMPORT_PROGRESS, _ref("ImportOut")),
        _frame(EVT_IMPORT_FINISHED, _ref("ImportOut")),
        _frame(EVT_CATCHUP_FINISHED, _ref("ImportOut")),
        _frame(
            RESYNC,
            {
                "type": "object",
                "required": ["reason"],
                "properties": {"reason": {"type": "string"}},
            },
        ),
    ]
}


@router.get(
    "/events",
    summary="Server-Sent Events stream of this organization's events",
    response_class=EventSourceResponse,
    responses={
        200: {
            "description": "an endless stream of `id:`, `event:` and `data:` frames; `data` is "
            '`{"type": <event name>, "payload": <message JSON, or import progress>}`',
            "content": {"text/event-stream": {"schema": EVENT_FRAME}},
        },
        **error_responses(
            401, 503, e400="Last-Event-ID is not an event id", e422="invalid `after`"
        ),
    },
)
async def events(
    request: Request,
    principal: CurrentPrincipal,
    ctx: Ctx,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="resume after this event id")
    ] = None,
    last_event_id: Annotated[
        str,
        Header(
            alias="Last-Event-ID",
            description="set by a reconnecting EventSource; wins over `after` (checked "
            "below: 400 invalid_last_event_id)",
            json_schema_extra={"pattern": r"^[ \t]*[0-9]{0,19}[ \t]*$"},
        ),
    ] = "",
) -> EventSourceResponse:
    resume_from = _last_event_id(request)
    if resume_from is None:
        resume_from = after
    SSE_STREAMS.inc()
    return EventSourceResponse(
        _stream(request, ctx, principal, resume_from),
        ping=ctx.settings.sse_ping_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _last_event_id(request: Request) -> int | None:
    raw = request.headers.get("last-event-id")
    if raw is None or raw.strip() == "":
        return None
    if not (raw.strip().isascii() and raw.strip().isdigit()) or len(raw) > 19:
        raise ApiError(400, "invalid_last_event_id", "Last-Event-ID must be an event id")
    return int(raw)


async def _stream(
    request: Request, ctx: AppContext, principal: Principal, resume_from: int | None
) -> AsyncIterator[ServerSentEvent | bytes]:
    settings = ctx.settings
    org_id = principal.organization_id
    deadline = time.monotonic() + settings.sse_max_stream_seconds
    recheck_at = time.monotonic() + settings.sse_auth_recheck_seconds
    cursor, resync = await _starting_point(ctx, org_id, resume_from)
    if resync:
        yield _resync_event(cursor)
    else:
        yield ServerSentEvent(comment="connected", retry=_RECONNECT_MS)

    # The process's hub reads the log once per wake-up for all of the organization's streams.
    async with ctx.hub.subscribe(org_id, after=cursor) as feed:
        while time.monotonic() < deadline:
            # The timeout brings the loop back here regularly even when nothing happens,
            # and in time for the next credential re-check.
            timeout = min(
                settings.sse_poll_seconds,
                max(recheck_at - time.monotonic(), 0.0),
                max(deadline - time.monotonic(), 0.0),
            )
            frames = await feed.next(timeout)
            if frames is None:
                # Too far behind: end the stream; the client reconnects with Last-Event-ID
                # and replays what it missed from the log.
                return
            if frames:
                # One write for everything this stream has pending: a stream that fell
                # behind catches up in one send instead of one per event.
                yield b"".join(frame.data for frame in frames)
            if not frames and await request.is_disconnected():
                return
            if time.monotonic() >= recheck_at:
                # Logout, expiry and revocation end the stream here, not at its lifetime.
                if not await _still_authorized(ctx, principal):
                    return
                recheck_at = time.monotonic() + settings.sse_auth_recheck_seconds


async def _still_authorized(ctx: AppContext, principal: Principal) -> bool:
    async with ctx.db.reader() as session:
        return await credential_is_live(session, principal)


async def _starting_point(
    ctx: AppContext, org_id: int, resume_from: int | None
) -> tuple[int | None, bool]:
    """Where to start reading (None: from now on), and whether the client must resync."""
    if resume_from is None:
        return None, False
    async with ctx.db.reader() as session:
        latest = await event_log.latest_id(session, org_id)
        oldest, newest = await event_log.bounds(session)
        if newest is None or resume_from > newest:
            return latest, resume_from > 0  # an id from another database or a reset log
        if resume_from < await event_log.pruned_through(session):
            return latest, True  # some of what was missed may have been pruned
        if ctx.db.is_sqlite and oldest is not None and resume_from < oldest - 1:
            return latest, True  # SQLite ids are dense: rows below the oldest were deleted
        missed = (
            await session.execute(
                select(func.count())
                .select_from(EventLogEntry)
                .where(EventLogEntry.organization_id == org_id, EventLogEntry.id > resume_from)
            )
        ).scalar_one()
        if missed > ctx.settings.sse_replay_limit:
            return latest, True
        return resume_from, False


def _resync_event(cursor: int | None) -> ServerSentEvent:
    return ServerSentEvent(
        id=str(cursor),
        event=RESYNC,
        data=json.dumps({"type": RESYNC, "payload": {"reason": "missed events are gone"}}),
        retry=_RECONNECT_MS,
    )
