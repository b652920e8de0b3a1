"""POST /twilio/events — the Event Streams webhook sink.

Order of checks: size (413) → parse the whole delivery (400) → one account per delivery
(400) → known account and signature (one 403) → record each event in its own transaction.
Twilio retries 429/5xx for hours and drops other 4xx, so 2xx is only answered once every
event is durably recorded (or deliberately ignored), and 503 when storage is unavailable.
Because the whole delivery is validated first, and validation accepts exactly what storage
can hold, an event in the middle of a delivery cannot fail on its data after others were
written.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy import update

from loquent.context import AppContext, Ctx
from loquent.db import utcnow
from loquent.errors import error_responses
from loquent.messaging.schemas import BODY_MAX
from loquent.metrics import EVENTS_RECEIVED, WEBHOOK_SECONDS
from loquent.openapi import ACCOUNT_SID, ADDRESS, MESSAGE_SID, NOT_BLANK
from loquent.orgs.models import Organization
from loquent.twilio import payloads, signature, webhooks
from loquent.twilio.payloads import CloudEvent, PayloadError

router = APIRouter()

MAX_BODY_BYTES = webhooks.MAX_BODY_BYTES


class DeliveryOut(BaseModel):
    received: int = Field(description="events in the delivery")
    results: list[str] = Field(
        description="per event, in order: created, updated, unchanged, unmatched, ignored "
        "or sink_verified"
    )


# The request body is read raw (the signature covers its exact bytes), so it is described
# here rather than parsed by FastAPI.
_CLOUD_EVENT = {
    "type": "object",
    "required": ["specversion", "type", "id", "source", "data"],
    "properties": {
        "specversion": {"type": "string", "enum": ["1.0"]},
        "type": {
            "type": "string",
            "pattern": NOT_BLANK,
            "description": "com.twilio.messaging.…; types the inbox does not handle are ignored",
        },
        "id": {"type": "string", "pattern": NOT_BLANK},
        "source": {"type": "string", "description": "the resource the event is about"},
        "time": {"type": "string", "format": "date-time"},
        "data": {
            "type": "object",
            "required": ["accountSid"],
            "properties": {
                "accountSid": {"type": "string", "pattern": ACCOUNT_SID},
                "messageSid": {"type": "string", "pattern": MESSAGE_SID},
                "from": ADDRESS,
                "to": ADDRESS,
                "body": {"type": "string", "maxLength": BODY_MAX},
            },
        },
    },
}
_DELIVERY_BODY = {
    "required": True,
    "description": "a JSON array of CloudEvents 1.0 (or one event), signed by Twilio",
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    {
                        "type": "array",
                        "items": _CLOUD_EVENT,
                        "minItems": 1,
                        "maxItems": payloads.MAX_EVENTS,
                    },
                    _CLOUD_EVENT,
                ]
            }
        }
    },
}


@router.post(
    "/twilio/events",
    summary="Twilio Event Streams webhook sink",
    openapi_extra={"requestBody": _DELIVERY_BODY},
    responses=error_responses(
        e400="malformed delivery, or events of several accounts",
        e403="not signed by a connected account",
        e413="larger than 5 MiB",
        e503="storage unavailable: Twilio retries (Retry-After)",
    ),
)
async def receive_events(request: Request, ctx: Ctx) -> DeliveryOut:
    started = time.perf_counter()
    try:
        return await _receive(request, ctx)
    finally:
        WEBHOOK_SECONDS.observe(time.perf_counter() - started)


async def _receive(request: Request, ctx: AppContext) -> DeliveryOut:
    raw = await webhooks.read_body(request, MAX_BODY_BYTES)
    try:
        raw_text = raw.decode("utf-8")
        events = payloads.parse_delivery(raw)
    except UnicodeDecodeError:
        raise webhooks.reject(400, "invalid_payload", "body must be UTF-8 JSON") from None
    except PayloadError as exc:
        raise webhooks.reject(400, "invalid_payload", str(exc)) from None

    accounts = {event.account_sid for event in events}
    if len(accounts) != 1:
        raise webhooks.reject(
            400, "mixed_accounts", "all events of one delivery must name the same account"
        )
    url = webhooks.public_url(ctx, request)
    given = request.headers.get("x-twilio-signature")
    org = await webhooks.authenticate(
        ctx,
        request,
        accounts.pop(),
        lambda token, shared_key, settings_header: signature.verify(
            url,
            raw_text,
            given,
            auth_token=token,
            shared_key=shared_key,
            settings_header=settings_header,
        ),
    )
    results = [await _record(ctx, org, event) for event in events]
    return DeliveryOut(received=len(events), results=results)


async def _record(ctx: AppContext, org: Organization, event: CloudEvent) -> str:
    if event.type == payloads.SINK_TEST_TYPE:
        outcome = await webhooks.write(lambda: _sink_verified(ctx, org.id))
    elif not payloads.is_handled(event.type):
        outcome = "ignored"
    else:
        outcome = await webhooks.record_message(
            ctx,
            org,
            payloads.message_data(event),
            status=payloads.STATUS_TYPES.get(event.type, "received"),
            inbound=event.type == payloads.INBOUND_TYPE,
        )
    kind = event.type.rsplit(".", 1)[-1] if payloads.is_handled(event.type) else "other"
    EVENTS_RECEIVED.labels(type=kind, outcome=outcome).inc()
    return str(outcome)


async def _sink_verified(ctx: AppContext, org_id: int) -> str:
    async with ctx.db.session() as session:
        await session.execute(
            update(Organization).where(Organization.id == org_id).values(sink_verified_at=utcnow())
        )
        await session.commit()
    return "sink_verified"
