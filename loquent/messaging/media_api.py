"""MMS media over HTTP: a message's media list, and each file relayed from Twilio.

The files are relayed rather than linked because Twilio's media URLs need the account's
credentials; the browser loads them from here with its session like any other resource.
They are streamed as they arrive from Twilio, never held whole in memory.
"""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

from loquent.context import AppContext, Ctx
from loquent.errors import ApiError, error_responses
from loquent.messaging import media
from loquent.openapi import MAX_ID
from loquent.orgs.auth import CurrentPrincipal

router = APIRouter(prefix="/api", tags=["messages"])

MEDIA_SID_PATTERN = r"^ME[0-9a-fA-F]{32}$"
# Media never changes once Twilio has it; the browser may keep it for a while, but only for
# this user (it is behind a session).
CACHE_CONTROL = "private, max-age=3600"
# For files opened directly from their URL: nothing in them may run, as on raw-file hosts.
CONTENT_SECURITY_POLICY = "default-src 'none'; style-src 'unsafe-inline'; sandbox"


class MediaItemOut(BaseModel):
    sid: str
    content_type: str
    url: str  # this API's proxy for the file, never Twilio's URL


class MediaListOut(BaseModel):
    items: list[MediaItemOut]


MessageId = Annotated[int, Path(ge=1, le=MAX_ID)]

# The relay answers with the file's own type: images, audio, video and plain text inline,
# anything else as an attachment (application/octet-stream when Twilio gave none).
_FILE = {"schema": {"type": "string", "format": "binary"}}
MEDIA_CONTENT_TYPES = ("image/*", "audio/*", "video/*", "text/*", "application/*")


@router.get(
    "/messages/{message_id}/media",
    responses=error_responses(401, 503, e404="no such message", e422="invalid message id"),
)
async def list_media(
    request: Request, principal: CurrentPrincipal, ctx: Ctx, message_id: MessageId
) -> MediaListOut:
    async with ctx.db.reader() as session:
        try:
            items = await media.list_media(session, principal.organization_id, message_id)
        except media.MediaNotFound as exc:
            raise ApiError(404, "not_found", exc.message) from None
    return MediaListOut(
        items=[
            MediaItemOut(
                sid=item.sid,
                content_type=item.content_type,
                url=request.app.url_path_for(
                    "get_media_content", message_id=str(message_id), media_sid=item.sid
                ),
            )
            for item in items
        ]
    )


@router.get(
    "/messages/{message_id}/media/{media_sid}",
    name="get_media_content",
    response_class=Response,
    responses={
        200: {
            "content": dict.fromkeys(MEDIA_CONTENT_TYPES, _FILE),
            "description": "The file, streamed from Twilio",
        },
        **error_responses(
            401,
            e404="no such message or media",
            e409="Twilio is not connected",
            e422="invalid message id or media SID",
            e429="too many media downloads in flight for this organization",
            e502="Twilio unreachable, credentials rejected, or the file is too large",
            e503="Twilio rate limited the account, or storage unavailable",
        ),
    },
)
async def get_media_content(
    request: Request,
    principal: CurrentPrincipal,
    ctx: Ctx,
    message_id: MessageId,
    media_sid: Annotated[str, Path(pattern=MEDIA_SID_PATTERN)],
) -> Response:
    try:
        download = await media.open_media(
            db=ctx.db,
            box=ctx.box,
            http=ctx.http,
            settings=ctx.settings,
            slots=_slots(request, ctx),
            org_id=principal.organization_id,
            message_id=message_id,
            media_sid=media_sid,
        )
    except media.MediaNotFound as exc:
        raise ApiError(404, "not_found", exc.message) from None
    except media.TwilioNotConnected as exc:
        raise ApiError(409, "twilio_not_connected", exc.message) from None
    except media.CredentialsRejected as exc:
        raise ApiError(502, "twilio_credentials_rejected", exc.message) from None
    except media.MediaTooLarge as exc:
        raise ApiError(502, "media_too_large", exc.message) from None
    except media.MediaBusy as exc:
        raise ApiError(
            429, "too_many_media_downloads", exc.message, {"Retry-After": _seconds(exc.retry_after)}
        ) from None
    except media.MediaUnavailable as exc:
        if exc.retry_after is not None:
            raise ApiError(
                503, "twilio_rate_limited", exc.message, {"Retry-After": _seconds(exc.retry_after)}
            ) from None
        raise ApiError(502, "twilio_unavailable", exc.message) from None
    return RelayResponse(download)


class RelayResponse(StreamingResponse):
    """Streams a media download and always ends it, however the response ends: finished,
    failed, or abandoned by the browser (the body iterator alone is not always closed)."""

    def __init__(self, download: media.MediaDownload) -> None:
        headers = _headers(download)
        if download.content_length is not None:
            headers["Content-Length"] = str(download.content_length)
        super().__init__(download.body(), media_type=download.content_type, headers=headers)
        self.download = download

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.download.aclose()


def _slots(request: Request, ctx: AppContext) -> media.FetchSlots:
    """This process's per-organization download slots (one table per app)."""
    slots: media.FetchSlots | None = getattr(request.app.state, "media_slots", None)
    if slots is None:
        slots = media.FetchSlots(ctx.settings.media_per_org_concurrency)
        request.app.state.media_slots = slots
    return slots


def _seconds(value: float) -> str:
    return str(max(1, math.ceil(value)))


def _headers(download: media.MediaDownload) -> dict[str, str]:
    disposition = "inline" if download.inline else "attachment"
    return {
        "Cache-Control": CACHE_CONTROL,
        "Content-Disposition": f'{disposition}; filename="{download.filename}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
