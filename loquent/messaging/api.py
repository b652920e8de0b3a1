"""GET /api/contacts/{id}/messages — one conversation, oldest→newest, paged backwards.

POST /api/messages/bodies/retry — an owner puts the organization's failed bodies back in the
enrichment queue (``service.requeue_failed_bodies``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel

from loquent.contacts import service as contacts
from loquent.context import AppContext, get_context
from loquent.errors import ApiError
from loquent.messaging import service
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
        assert at is not None  # message cursors always carry a time
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
