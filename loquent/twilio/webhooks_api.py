"""POST /twilio/status and POST /twilio/sms — Twilio's classic messaging webhooks.

Status callbacks (``StatusCallback`` of a message or Messaging Service) and the inbound
messaging webhook of a number arrive form-encoded, signed over the public URL followed by
the sorted form parameters. They feed the same service functions as Event Streams, with the
same limits and the same 400/403/413/503 answers (``webhooks``); the inbound webhook answers
an empty TwiML document so Twilio sends no reply.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from loquent.context import AppContext, get_context
from loquent.metrics import EVENTS_RECEIVED
from loquent.orgs.models import Organization
from loquent.twilio import payloads, signature, webhooks
from loquent.twilio.payloads import ClassicCallback, PayloadError

router = APIRouter()

MAX_FORM_BYTES = 256 * 1024  # a callback is a few hundred bytes; MMS adds media URLs
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "malformed callback"},
    403: {"description": "not signed by a connected account"},
    413: {"description": "body too large"},
    503: {"description": "storage unavailable, retry later"},
}


@router.post("/twilio/status", summary="Twilio messaging status callback", responses=_ERRORS)
async def status_callback(request: Request, ctx: AppContext = Depends(get_context)) -> Response:
    org, parsed = await _verified(request, ctx, payloads.parse_status_callback)
    if parsed.status is None:  # a status this inbox does not know yet: acknowledge
        outcome = "ignored"
    else:
        outcome = await webhooks.record_message(
            ctx, org, parsed.data, status=parsed.status, inbound=False
        )
    EVENTS_RECEIVED.labels(type="status_callback", outcome=outcome).inc()
    return JSONResponse({"result": outcome})


@router.post(
    "/twilio/sms",
    summary="Twilio inbound messaging webhook (answers empty TwiML)",
    responses={**_ERRORS, 200: {"content": {"text/xml": {}}}},
)
async def inbound_webhook(request: Request, ctx: AppContext = Depends(get_context)) -> Response:
    org, parsed = await _verified(request, ctx, payloads.parse_inbound_webhook)
    outcome = await webhooks.record_message(ctx, org, parsed.data, status="received", inbound=True)
    EVENTS_RECEIVED.labels(type="inbound_webhook", outcome=outcome).inc()
    return Response(EMPTY_TWIML, media_type="text/xml")


async def _verified(
    request: Request, ctx: AppContext, parse: Callable[[Mapping[str, str]], ClassicCallback]
) -> tuple[Organization, ClassicCallback]:
    """Parse (400), then the organization and its signature (403), as Event Streams does."""
    raw = await webhooks.read_body(request, MAX_FORM_BYTES)
    try:
        form = payloads.parse_form(raw)
        parsed = parse(form)
    except PayloadError as exc:
        raise webhooks.reject(400, "invalid_payload", str(exc)) from None
    url = webhooks.public_url(ctx, request)
    given = request.headers.get("x-twilio-signature")
    org = await webhooks.authenticate(
        ctx,
        request,
        parsed.account_sid,
        lambda token, shared_key, settings_header: signature.verify_form(
            url,
            form,
            given,
            auth_token=token,
            shared_key=shared_key,
            settings_header=settings_header,
        ),
    )
    return org, parsed
