"""GET /api/settings — what the settings page shows: the Twilio connection and its health.

The auth token never leaves the server, not even masked; the account SID is shown masked
(``AC••••1234``) so that an operator can tell which account is connected without the page
becoming a place to copy it from.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.context import Ctx
from loquent.errors import ApiError, error_responses
from loquent.messaging import service as messaging
from loquent.orgs import service
from loquent.orgs.auth import CurrentPrincipal
from loquent.orgs.models import Organization, Role
from loquent.orgs.service import Principal

router = APIRouter(prefix="/api", tags=["settings"])

MASK = "••••"
EVENTS_PATH = "/twilio/events"


class OrganizationOut(BaseModel):
    id: int
    name: str


class TwilioConnectionOut(BaseModel):
    connected: bool
    account_sid_masked: str | None
    credentials_valid: bool
    # Why Twilio refused the credentials (401/403 seen by enrichment), if it did.
    credentials_error: str | None
    credentials_checked_at: datetime | None


class PhoneNumberOut(BaseModel):
    id: int
    number: str
    friendly_name: str
    twilio_sid: str | None


class EventSinkOut(BaseModel):
    sink_sid: str | None
    subscription_sid: str | None
    sms_events_active: bool
    verified_at: datetime | None
    # Whether this organization created the sink at Twilio (removal deletes only that).
    created_here: bool
    # Where Twilio must deliver events for this deployment (public base URL + path).
    destination: str


class WebhookHealthOut(BaseModel):
    signature_failures: int
    last_signature_failure_at: datetime | None
    # Events for numbers that are none of the org's lines: acknowledged, counted, skipped.
    unmatched_events: int


class MessageBodiesOut(BaseModel):
    # Bodies still to be fetched from Twilio, and those that ended `failed` (retryable).
    pending: int
    failed: int


class SettingsOut(BaseModel):
    organization: OrganizationOut
    role: Role
    twilio: TwilioConnectionOut
    phone_numbers: list[PhoneNumberOut]
    event_sink: EventSinkOut
    webhooks: WebhookHealthOut
    bodies: MessageBodiesOut


def mask_account_sid(sid: str | None) -> str | None:
    """``AC`` + a mask + the last four characters; short values are masked entirely."""
    if not sid:
        return None
    if len(sid) <= 8:
        return MASK
    return f"{sid[:2]}{MASK}{sid[-4:]}"


async def build_settings(
    session: AsyncSession, principal: Principal, public_url: str
) -> SettingsOut | None:
    """The settings view of the caller's organization (None if it no longer exists)."""
    org = await session.get(Organization, principal.organization_id)
    if org is None:
        return None
    lines = await service.list_lines(session, org.id)
    bodies = await messaging.count_bodies(session, org.id)
    return SettingsOut(
        organization=OrganizationOut(id=org.id, name=org.name),
        role=principal.role,
        twilio=TwilioConnectionOut(
            connected=bool(org.twilio_account_sid and org.twilio_auth_token),
            account_sid_masked=mask_account_sid(org.twilio_account_sid),
            credentials_valid=bool(org.twilio_credentials_valid),
            credentials_error=org.twilio_credentials_error,
            credentials_checked_at=org.twilio_credentials_checked_at,
        ),
        phone_numbers=[
            PhoneNumberOut(
                id=line.id,
                number=line.number,
                friendly_name=line.friendly_name or "",
                twilio_sid=line.twilio_sid,
            )
            for line in lines
        ],
        event_sink=EventSinkOut(
            sink_sid=org.sink_sid,
            subscription_sid=org.subscription_sid,
            sms_events_active=bool(org.sms_events_active),
            verified_at=org.sink_verified_at,
            created_here=bool(org.sink_created_here),
            destination=public_url.rstrip("/") + EVENTS_PATH,
        ),
        webhooks=WebhookHealthOut(
            signature_failures=org.signature_failures or 0,
            last_signature_failure_at=org.last_signature_failure_at,
            unmatched_events=org.unmatched_events or 0,
        ),
        bodies=MessageBodiesOut(pending=bodies.pending, failed=bodies.failed),
    )


@router.get(
    "/settings",
    responses=error_responses(401, 503, e404="the organization no longer exists"),
)
async def get_settings_view(principal: CurrentPrincipal, ctx: Ctx) -> SettingsOut:
    """The Twilio connection (masked account SID, never the token), lines, event sink and
    webhook health of the caller's organization."""
    async with ctx.db.reader() as session:
        view = await build_settings(session, principal, ctx.settings.public_url)
    if view is None:
        raise ApiError(404, "not_found", "the organization no longer exists")
    return view
