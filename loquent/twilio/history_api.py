"""History import API: start an import of the account's past messages and follow it.

``POST /api/twilio/sync-messages`` (owners only) answers 202 with a new (or resumed) run,
or 200 with the one already running — one import per organization at a time. The import
itself runs in the job worker; progress arrives over SSE (``twilio.import.progress``) and
``GET /api/twilio/imports/{id}``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Annotated

from fastapi import APIRouter, Body, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loquent.context import Ctx
from loquent.db import utcnow
from loquent.errors import ApiError, error_responses
from loquent.orgs.auth import CurrentPrincipal, OwnerPrincipal
from loquent.realtime.log import commit, wake_after_commit
from loquent.twilio import history
from loquent.twilio.history import IMPORTS_TOPIC, NotConnected, import_json
from loquent.twilio.import_models import ImportKind, ImportState

router = APIRouter(prefix="/api/twilio", tags=["twilio history"])


class SyncMessagesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(
        None,
        description="Import messages sent on or after this date (YYYY-MM-DD, UTC midnight) "
        "or instant (ISO 8601); omitted: the whole history",
        max_length=40,
    )


_INSTANT = "an ISO 8601 instant in UTC (…Z)"


class ImportOut(BaseModel):
    id: int
    kind: ImportKind
    state: ImportState
    since: str | None = Field(description=_INSTANT)
    imported: int
    skipped: int
    pages: int
    error: str | None = Field(description="why a failed run stopped")
    created_at: str | None = Field(description=_INSTANT)
    finished_at: str | None = Field(description=_INSTANT)


class ImportListOut(BaseModel):
    items: list[ImportOut]


def parse_since(raw: str | None) -> datetime | None:
    """A date means midnight UTC of that day; an instant without a zone is taken as UTC."""
    if raw is None or not raw.strip():
        return None
    value = raw.strip()
    try:
        if len(value) == 10:
            instant = datetime.combine(date.fromisoformat(value), time.min, tzinfo=UTC)
        else:
            instant = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ApiError(
            422, "invalid_since", "since must be a date (YYYY-MM-DD) or an ISO 8601 date-time"
        ) from None
    instant = instant if instant.tzinfo else instant.replace(tzinfo=UTC)
    if instant.year < 2000:
        raise ApiError(422, "invalid_since", "since is before any Twilio message could exist")
    return instant.astimezone(UTC)


@router.post(
    "/sync-messages",
    status_code=202,
    response_model=ImportOut,
    responses={
        200: {"model": ImportOut, "description": "an import is already running"},
        **error_responses(
            400,
            401,
            403,
            503,
            e409="Twilio is not connected",
            e422="since is not a date or instant, is in the future, or before 2000",
        ),
    },
)
async def sync_messages(
    principal: OwnerPrincipal,
    ctx: Ctx,
    payload: Annotated[SyncMessagesIn | None, Body()] = None,
) -> JSONResponse:
    """Start an import of the account's past messages (202), or get the one running (200)."""
    since = parse_since(payload.since if payload else None)
    if since is not None and since > utcnow():
        raise ApiError(422, "invalid_since", "since is in the future")
    async with ctx.db.session() as session:
        try:
            run, started = await history.request_history_import(
                session, principal.organization_id, since
            )
        except NotConnected as exc:
            await session.rollback()
            raise ApiError(409, "twilio_not_connected", str(exc)) from None
        body = import_json(run)
        if started:
            wake_after_commit(session, IMPORTS_TOPIC)
        await commit(session, ctx.notifier)
    return JSONResponse(body, status_code=202 if started else 200)


@router.get("/imports", responses=error_responses(401, 503, e422="invalid kind or limit"))
async def list_imports(
    principal: CurrentPrincipal,
    ctx: Ctx,
    kind: Annotated[
        ImportKind | None, Query(description="history or catchup; omitted: both")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> ImportListOut:
    """The newest imports and catch-ups first."""
    async with ctx.db.reader() as session:
        runs = await history.list_imports(
            session, principal.organization_id, kind=kind, limit=limit
        )
    return ImportListOut(items=[ImportOut(**import_json(run)) for run in runs])


@router.get(
    "/imports/{import_id}",
    responses=error_responses(401, 503, e404="no such import", e422="invalid import id"),
)
async def get_import(
    principal: CurrentPrincipal, ctx: Ctx, import_id: Annotated[int, Path(ge=1, le=2**31 - 1)]
) -> ImportOut:
    """One import's progress."""
    async with ctx.db.reader() as session:
        run = await history.get_import(session, principal.organization_id, import_id)
    if run is None:
        raise ApiError(404, "not_found", "no such import")
    return ImportOut(**import_json(run))
