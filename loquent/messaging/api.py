"""GET /api/contacts/{id}/messages — one conversation, oldest→newest, paged backwards;
POST /api/messages/send — a reply from the inbox (the flow is in ``messaging/send.py``);
POST /api/messages/bodies/retry — an owner puts the organization's failed bodies back in the
enrichment queue (``service.requeue_failed_bodies``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loquent.contacts import service as contacts
from loquent.context import AppContext, get_context
from loquent.errors import ApiError
from loquent.messaging import send, service
from loquent.messaging.schemas import MessageOut, message_json
from loquent.orgs.auth import require_owner, require_principal
from loquent.orgs.service import Principal
from loquent.pagination import decode_keyset, encode_keyset
from loquent.realtime.log import commit

router = APIRouter(prefix="/api", tags=["messages"])


class MessagePage(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None


class RequeuedOut(BaseModel):
    requeued: int


@router.get("/contacts/{contact_id}/messages", response_model=MessagePage)
async def list_messages(
    contact_id: int = Path(ge=1, le=2**62),
    limit: int = Query(50, ge=1, le=200),
    before: str | None = Query(None, max_length=200),
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> dict[str, Any]:
    cursor = None
    if before:
        at, last_id = decode_keyset(before)
        if at is None:  # message cursors always carry a time: this one was made elsewhere
            raise ApiError(400, "invalid_cursor", "cursor is not valid")
        cursor = (at, last_id)
    org_id = principal.organization_id
    async with ctx.db.reader() as session:
        if await contacts.get_contact(session, org_id, contact_id) is None:
            raise ApiError(404, "not_found", "no such contact")
        rows = await service.list_conversation(
            session, org_id, contact_id, limit=limit + 1, before=cursor
        )
    more = len(rows) > limit
    page = rows[1:] if more else rows  # rows are oldest→newest; the extra one is the oldest
    next_cursor = encode_keyset(page[0].created_at, page[0].id) if more else None
    return {"items": [message_json(m) for m in page], "next_cursor": next_cursor}


@router.post("/messages/bodies/retry", response_model=RequeuedOut)
async def retry_failed_bodies(
    principal: Principal = Depends(require_owner),
    ctx: AppContext = Depends(get_context),
) -> RequeuedOut:
    """Fetch every body that ended ``failed`` again, from a fresh start. Owner only: it
    spends the organization's Twilio API calls."""
    async with ctx.db.session() as session:
        requeued = await service.requeue_failed_bodies(session, principal.organization_id)
        await commit(session, ctx.notifier)  # wakes the worker
    return RequeuedOut(requeued=requeued)


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: int = Field(ge=1, le=2**62)
    phone_number_id: int | None = Field(
        None, ge=1, le=2**62, description="default: the line of the contact's latest message"
    )
    body: str = Field(description=f"1 to {send.MAX_BODY_CHARS} characters, not only whitespace")


class ErrorOut(BaseModel):
    code: str
    message: str
    failed_message: MessageOut | None = None


class ErrorEnvelope(BaseModel):
    error: ErrorOut


_SEND_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorEnvelope, "description": "no such contact or line in this organization"},
    409: {"model": ErrorEnvelope, "description": "Twilio not connected, or a send in progress"},
    422: {
        "model": ErrorEnvelope,
        "description": "invalid request, or Twilio refused the text (code twilio_<code>, "
        "Twilio's message; failed_message is the stored row, marked failed)",
    },
    502: {"model": ErrorEnvelope, "description": "Twilio unreachable or credentials rejected"},
    503: {"model": ErrorEnvelope, "description": "Twilio rate limited the account"},
}


@router.post("/messages/send", status_code=201, response_model=MessageOut, responses=_SEND_ERRORS)
async def send_message(
    payload: SendIn,
    idempotency_key: str | None = Header(
        None,
        alias="Idempotency-Key",
        description="a retry with the same key returns the first answer instead of sending again",
    ),
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> JSONResponse:
    request = send.SendRequest(
        contact_id=payload.contact_id,
        body=payload.body,
        phone_number_id=payload.phone_number_id,
        idempotency_key=idempotency_key,
    )
    send_ctx = send.SendContext(
        db=ctx.db, notifier=ctx.notifier, settings=ctx.settings, box=ctx.box, http=ctx.http
    )
    try:
        outcome = await send.send_message(send_ctx, principal.organization_id, request)
    except send.SendRejected as exc:
        raise ApiError(exc.status_code, exc.code, exc.message) from None
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    return JSONResponse(outcome.payload, status_code=outcome.status_code, headers=headers)
