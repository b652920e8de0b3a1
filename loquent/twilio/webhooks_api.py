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

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from loquent.context import AppContext, Ctx
from loquent.errors import as_json, error_responses
from loquent.messaging.schemas import BODY_MAX
from loquent.metrics import EVENTS_RECEIVED
from loquent.openapi import ACCOUNT_SID, ADDRESS, MESSAGE_SID, NOT_BLANK
from loquent.orgs.models import Organization
from loquent.twilio import payloads, signature, webhooks
from loquent.twilio.payloads import ClassicCallback, PayloadError

router = APIRouter()

MAX_FORM_BYTES = 256 * 1024  # a callback is a few hundred bytes; MMS adds media URLs
EMPTY_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'
_ERRORS = {
    "e400": "malformed callback",
    "e403": "not signed by a connected account",
    "e413": "body too large",
    "e503": "storage unavailable: Twilio retries (Retry-After)",
}


_FIELDS: dict[str, dict[str, Any]] = {
    "AccountSid": {"type": "string", "pattern": ACCOUNT_SID},
    "MessageSid": {"type": "string", "pattern": MESSAGE_SID},
    "MessageStatus": {
        "type": "string",
        "pattern": NOT_BLANK,
        "description": "Twilio's status; unknown ones are acknowledged and ignored",
    },
    "From": ADDRESS,
    "To": ADDRESS,
    "Body": {"type": "string", "maxLength": BODY_MAX},
    "NumMedia": {"type": "string", "pattern": "^[0-9]{1,2}$"},
    "ErrorCode": {"type": "string", "pattern": "^[0-9]{1,5}$"},
}


def _form_body(*names: str, required: tuple[str, ...]) -> dict[str, Any]:
    """The form Twilio posts, described here: the body is read raw, for the signature."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": list(required),
                        "properties": {name: _FIELDS[name] for name in names},
                    }
                }
            },
        }
    }


class CallbackOut(BaseModel):
    result: str = Field(
        description="created, updated, unchanged, unmatched, or ignored (a status this inbox "
        "does not know)"
    )


class TwiMLResponse(Response):
    media_type = "text/xml"


@router.post(
    "/twilio/status",
    summary="Twilio messaging status callback",
    responses=error_responses(**_ERRORS),
    openapi_extra=_form_body(
        "AccountSid",
        "MessageSid",
        "MessageStatus",
        "From",
        "To",
        "ErrorCode",
        required=("AccountSid", "MessageSid", "MessageStatus", "From", "To"),
    ),
)
async def status_callback(request: Request, ctx: Ctx) -> CallbackOut:
    org, parsed = await _verified(request, ctx, payloads.parse_status_callback)
    if parsed.status is None:  # a status this inbox does not know yet: acknowledge
        outcome = "ignored"
    else:
        outcome = await webhooks.record_message(
            ctx, org, parsed.data, status=parsed.status, inbound=False
        )
    EVENTS_RECEIVED.labels(type="status_callback", outcome=outcome).inc()
    return CallbackOut(result=outcome)


@router.post(
    "/twilio/sms",
    summary="Twilio inbound messaging webhook (answers empty TwiML)",
    response_class=TwiMLResponse,
    responses={
        200: {
            "description": "an empty TwiML document: no reply",
            "content": {"text/xml": {"schema": {"type": "string"}}},
        },
        **as_json(error_responses(**_ERRORS)),
    },
    openapi_extra=_form_body(
        "AccountSid",
        "MessageSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        required=("AccountSid", "MessageSid", "From", "To"),
    ),
)
async def inbound_webhook(request: Request, ctx: Ctx) -> TwiMLResponse:
    org, parsed = await _verified(request, ctx, payloads.parse_inbound_webhook)
    outcome = await webhooks.record_message(ctx, org, parsed.data, status="received", inbound=True)
    EVENTS_RECEIVED.labels(type="inbound_webhook", outcome=outcome).inc()
    return TwiMLResponse(EMPTY_TWIML)


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
