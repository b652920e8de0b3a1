"""The inbox pages: ``/messaging``, ``/messaging/{contact_id}`` and ``/settings``.

Pages render the frame (who is signed in, which conversation is open); ``static/inbox.js``
fills in the contact list and the feed from the JSON API and keeps them live over SSE. Each
page records the organization's newest event id, so the script's first SSE connection
resumes from the moment the page was rendered and nothing that happens while it loads is
lost.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.contacts import service as contacts
from loquent.context import Ctx
from loquent.messaging import send as sends
from loquent.orgs.api import build_settings
from loquent.orgs.models import Organization, User
from loquent.orgs.service import Principal
from loquent.realtime import log as event_log
from loquent.web.guards import page_principal
from loquent.web.templating import render

router = APIRouter(include_in_schema=False)
PagePrincipal = Annotated[Principal, Depends(page_principal)]

_MAX_ID = 2**62


async def _frame(session: AsyncSession, principal: Principal) -> dict[str, Any]:
    """What every signed-in page shows: the organization, the user, the session's CSRF token."""
    org = await session.get(Organization, principal.organization_id)
    user = await session.get(User, principal.user_id)
    return {
        "org_name": org.name if org else "",
        "user_email": user.email if user else "",
        "csrf_token": principal.csrf_token or "",
    }


def not_found_page(request: Request, frame: dict[str, Any] | None = None) -> Response:
    return render(
        request,
        "error.html",
        {
            **(frame or {}),
            "title": "Conversation not found",
            "message": "There is no such conversation in this organization.",
            "back_href": "/messaging",
            "back_label": "Back to the inbox",
        },
        status_code=404,
    )


@router.get("/")
async def home() -> RedirectResponse:
    return RedirectResponse("/messaging", status_code=303)


@router.get("/messaging")
async def inbox(
    request: Request,
    principal: PagePrincipal,
    ctx: Ctx,
) -> Response:
    async with ctx.db.reader() as session:
        frame = await _frame(session, principal)
        cursor = await event_log.latest_id(session, principal.organization_id)
    return render(
        request,
        "messaging.html",
        {**frame, "active": "inbox", "contact": None, "event_cursor": cursor},
    )


@router.get("/messaging/{contact_id}")
async def conversation(
    request: Request,
    contact_id: str,
    principal: PagePrincipal,
    ctx: Ctx,
) -> Response:
    # The id is parsed here rather than typed in the signature, so a bad id gets the
    # same HTML 404 page as another organization's contact instead of a JSON 422.
    parsed = int(contact_id) if contact_id.isdigit() and len(contact_id) <= 19 else None
    async with ctx.db.reader() as session:
        frame = await _frame(session, principal)
        contact = None
        if parsed is not None and 0 < parsed < _MAX_ID:
            contact = await contacts.get_contact(session, principal.organization_id, parsed)
        if contact is None:
            return not_found_page(request, {**frame, "active": "inbox"})
        number = await contacts.preferred_number(session, contact.id)
        compose = await sends.compose_options(session, principal.organization_id, contact.id)
        cursor = await event_log.latest_id(session, principal.organization_id)
    name = contacts.display_name(contact, number)
    return render(
        request,
        "messaging.html",
        {
            **frame,
            "active": "inbox",
            "contact": {"id": contact.id, "name": name, "phone": number or ""},
            "compose": compose,
            "event_cursor": cursor,
        },
    )


@router.get("/settings")
async def settings_page(
    request: Request,
    principal: PagePrincipal,
    ctx: Ctx,
) -> Response:
    async with ctx.db.reader() as session:
        frame = await _frame(session, principal)
        view = await build_settings(session, principal, ctx.settings.public_url)
    if view is None:
        return render(
            request,
            "error.html",
            {
                **frame,
                "title": "Organization not found",
                "message": "This organization no longer exists.",
            },
            status_code=404,
        )
    return render(request, "settings.html", {**frame, "active": "settings", "view": view})
