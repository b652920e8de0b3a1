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

from fastapi import APIRouter, Depends, Query, Request
from sqlalchemy import func, select
from sse_starlette import EventSourceResponse, ServerSentEvent

from loquent.context import AppContext, get_context
from loquent.errors import ApiError
from loquent.metrics import SSE_STREAMS
from loquent.orgs.auth import require_principal
from loquent.orgs.service import Principal, credential_is_live
from loquent.realtime import log as event_log
from loquent.realtime.models import EventLogEntry

router = APIRouter(prefix="/api", tags=["realtime"])

RESYNC = "resync"
_RECONNECT_MS = 1000


@router.get(
    "/events",
    summary="Server-Sent Events stream of this organization's events",
    response_class=EventSourceResponse,
)
async def events(
    request: Request,
    after: int | None = Query(None, ge=0, le=2**62, description="resume after this event id"),
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
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
    if not raw.strip().isdigit() or len(raw) > 19:
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
