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
from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import update

from loquent.context import AppContext, get_context
from loquent.db import utcnow
from loquent.metrics import EVENTS_RECEIVED, WEBHOOK_SECONDS
from loquent.orgs.models import Organization
from loquent.twilio import payloads, signature, webhooks
from loquent.twilio.payloads import CloudEvent, PayloadError

router = APIRouter()

MAX_BODY_BYTES = webhooks.MAX_BODY_BYTES


@router.post(
    "/twilio/events",
    summary="Twilio Event Streams webhook sink",
    responses={
        400: {"description": "malformed delivery"},
        403: {"description": "not signed by a connected account"},
        413: {"description": "larger than 5 MiB"},
        503: {"description": "storage unavailable, retry later"},
    },
)
async def receive_events(
    request: Request, ctx: AppContext = Depends(get_context)
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        return await _receive(request, ctx)
    finally:
        WEBHOOK_SECONDS.observe(time.perf_counter() - started)


async def _receive(request: Request, ctx: AppContext) -> dict[str, Any]:
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
    return {"received": len(events), "results": results}


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
