"""GET /api/contacts — the contact list, ordered as the inbox shows it."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query

from loquent.contacts import service
from loquent.contacts.schemas import ContactListItem, ContactPage
from loquent.context import AppContext, get_context
from loquent.messaging import service as messaging
from loquent.messaging.schemas import message_json
from loquent.orgs.auth import require_principal
from loquent.orgs.service import Principal
from loquent.pagination import decode_keyset, encode_keyset

router = APIRouter(prefix="/api", tags=["contacts"])


@router.get("/contacts", response_model=ContactPage)
async def list_contacts(
    limit: int = Query(50, ge=1, le=200),
    cursor: str | None = Query(None, max_length=200),
    principal: Principal = Depends(require_principal),
    ctx: AppContext = Depends(get_context),
) -> ContactPage:
    after = decode_keyset(cursor, allow_null_time=True) if cursor else None
    org_id = principal.organization_id
    async with ctx.db.reader() as session:
        rows = await service.list_contacts(session, org_id, limit=limit + 1, after=after)
        page, more = rows[:limit], len(rows) > limit
        latest = await messaging.last_messages(session, org_id, [c.id for c, _ in page])
    items = [
        ContactListItem(
            id=contact.id,
            name=service.display_name(contact, number),
            phone=number,
            source=contact.source,
            last_contacted_at=contact.last_contacted_at,
            last_message=message_json(latest[contact.id]) if contact.id in latest else None,
        )
        for contact, number in page
    ]
    next_cursor = None
    if more and page:
        tail = page[-1][0]
        next_cursor = encode_keyset(tail.last_contacted_at, tail.id)
    return ContactPage(items=items, next_cursor=next_cursor)
