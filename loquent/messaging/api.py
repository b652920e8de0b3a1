"""GET /api/contacts/{id}/messages — one conversation, oldest→newest, paged backwards;
POST /api/messages/send — a reply from the inbox (the flow is in ``messaging/send.py``);
POST /api/messages/bodies/retry — an owner puts the organization's failed bodies back in the
enrichment queue (``service.requeue_failed_bodies``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from loquent.contacts import service as contacts
from loquent.context import Ctx
from loquent.errors import ApiError, ErrorDetail, error_responses
from loquent.messaging import send, service
from loquent.messaging.schemas import MessageOut
from loquent.openapi import MAX_ID, NOT_BLANK
from loquent.orgs.auth import CurrentPrincipal, OwnerPrincipal
from loquent.pagination import decode_keyset, encode_keyset
from loquent.realtime.log import commit

router = APIRouter(prefix="/api", tags=["messages"])


class MessagePage(BaseModel):
    items: list[MessageOut] = Field(description="oldest first")
    next_cursor: str | None = Field(description="pass as ?before= for older messages")


class RequeuedOut(BaseModel):
    requeued: int


@router.get(
    "/contacts/{contact_id}/messages",
    responses=error_responses(
        401, 503, e400="the cursor is not valid", e404="no such contact", e422="invalid parameters"
    ),
)
async def list_messages(
    principal: CurrentPrincipal,
    ctx: Ctx,
    contact_id: Annotated[int, Path(ge=1, le=MAX_ID)],
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    before: Annotated[str | None, Query(max_length=200)] = None,
) -> MessagePage:
    """One conversation, oldest to newest, paged backwards from the newest."""
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
    return MessagePage(
        items=[MessageOut.model_validate(m, from_attributes=True) for m in page],
        next_cursor=next_cursor,
    )


@router.post("/messages/bodies/retry", responses=error_responses(401, 403, 503))
async def retry_failed_bodies(principal: OwnerPrincipal, ctx: Ctx) -> RequeuedOut:
    """Fetch every body that ended ``failed`` again, from a fresh start. Owner only: it
    spends the organization's Twilio API calls."""
    async with ctx.db.session() as session:
        requeued = await service.requeue_failed_bodies(session, principal.organization_id)
        await commit(session, ctx.notifier)  # wakes the worker
    return RequeuedOut(requeued=requeued)


class SendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    contact_id: int = Field(ge=1, le=MAX_ID)
    phone_number_id: int | None = Field(
        None, ge=1, le=MAX_ID, description="default: the line of the contact's latest message"
    )
    # The limits are documented here and checked in ``send`` (422 empty_body, body_too_long).
    body: str = Field(
        description=f"1 to {send.MAX_BODY_CHARS} characters, not only whitespace",
        json_schema_extra={
            "minLength": 1,
            "maxLength": send.MAX_BODY_CHARS,
            "pattern": NOT_BLANK,
        },
    )


class SendErrorDetail(ErrorDetail):
    failed_message: MessageOut | None = Field(
        None, description="Twilio refused the text: the stored row, marked failed"
    )


class SendErrorResponse(BaseModel):
    error: SendErrorDetail


def _send_errors() -> dict[int | str, dict[str, Any]]:
    responses = error_responses(
        400,
        401,
        403,
        e404="no such contact or line in this organization",
        e409="Twilio not connected, or a send in progress",
        e502="Twilio unreachable or credentials rejected",
        e503="Twilio rate limited the account, or storage unavailable",
    )
    responses[422] = {
        "model": SendErrorResponse,
        "description": "invalid request, or Twilio refused the text (code twilio_<code>, "
        "Twilio's message; failed_message is the stored row, marked failed)",
    }
    responses[200] = {"model": MessageOut, "description": "a retry's replayed answer"}
    return responses


@router.post("/messages/send", status_code=201, response_model=MessageOut, responses=_send_errors())
async def send_message(
    payload: SendIn,
    principal: CurrentPrincipal,
    ctx: Ctx,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="a retry with the same key returns the first answer instead of "
            "sending again (checked in ``send``: 422 invalid_idempotency_key)",
            json_schema_extra={"pattern": f"^[\\x20-\\x7e]{{1,{send.MAX_IDEMPOTENCY_KEY_CHARS}}}$"},
        ),
    ] = None,
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
