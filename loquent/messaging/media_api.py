"""MMS media over HTTP: a message's media list, and each file relayed from Twilio.

The files are relayed rather than linked because Twilio's media URLs need the account's
credentials; the browser loads them from here with its session like any other resource.
"""

from __future__ import annotations

import math

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response
from pydantic import BaseModel

from loquent.context import AppContext, get_context
from loquent.errors import ApiError
from loquent.messaging import media
from loquent.orgs.auth import require_principal
from loquent.orgs.service import Principal

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


MessageId = Path(ge=1, le=2**62)


@router.get("/messages/{message_id}/media", response_model=MediaListOut)
async def list_media(
    request: Request,
    message_id: int = MessageId,
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
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
    responses={200: {"content": {"application/octet-stream": {}}, "description": "The file"}},
)
async def get_media_content(
    message_id: int = MessageId,
    media_sid: str = Path(pattern=MEDIA_SID_PATTERN),
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> Response:
    try:
        file = await media.fetch_media(
            db=ctx.db,
            box=ctx.box,
            http=ctx.http,
            settings=ctx.settings,
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
    except media.MediaUnavailable as exc:
        if exc.retry_after is not None:
            retry = str(max(1, math.ceil(exc.retry_after)))
            raise ApiError(
                503, "twilio_rate_limited", exc.message, {"Retry-After": retry}
            ) from None
        raise ApiError(502, "twilio_unavailable", exc.message) from None
    return Response(content=file.content, media_type=file.content_type, headers=_headers(file))


def _headers(file: media.MediaFile) -> dict[str, str]:
    disposition = "inline" if file.inline else "attachment"
    return {
        "Cache-Control": CACHE_CONTROL,
        "Content-Disposition": f'{disposition}; filename="{file.filename}"',
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
