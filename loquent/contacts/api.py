"""GET /api/contacts — the contact list, ordered as the inbox shows it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from loquent.contacts import service
from loquent.contacts.schemas import ContactListItem, ContactPage
from loquent.context import Ctx
from loquent.errors import error_responses
from loquent.messaging import service as messaging
from loquent.messaging.schemas import MessageOut
from loquent.orgs.auth import CurrentPrincipal
from loquent.pagination import decode_keyset, encode_keyset

router = APIRouter(prefix="/api", tags=["contacts"])


@router.get(
    "/contacts",
    responses=error_responses(
        401, 503, e400="the cursor is not valid", e422="invalid limit or cursor"
    ),
)
async def list_contacts(
    principal: CurrentPrincipal,
    ctx: Ctx,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> ContactPage:
    """Contacts by latest activity (never contacted last), each with its latest message."""
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
            last_message=(
                MessageOut.model_validate(latest[contact.id], from_attributes=True)
                if contact.id in latest
                else None
            ),
        )
        for contact, number in page
    ]
    next_cursor = None
    if more and page:
        tail = page[-1][0]
        next_cursor = encode_keyset(tail.last_contacted_at, tail.id)
    return ContactPage(items=items, next_cursor=next_cursor)
