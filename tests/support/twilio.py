"""Building and signing Event Streams deliveries exactly as Twilio does."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime
from typing import Any

from twilio.request_validator import RequestValidator

MESSAGE_STATUS_SCHEMA = "https://events-schemas.twilio.com/Messaging.MessageStatus/4"
INBOUND_SCHEMA = "https://events-schemas.twilio.com/Messaging.InboundMessageV1/6"


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_event(
    status: str, *, sid: str, account: str, from_: str, to: str, at: str | None = None, **extra: Any
) -> dict[str, Any]:
    at = at or _now()
    event_type = f"com.twilio.messaging.message.{status}"
    return {
        "specversion": "1.0",
        "type": event_type,
        "source": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        "id": new_sid("EZ"),
        "dataschema": MESSAGE_STATUS_SCHEMA,
        "datacontenttype": "application/json",
        "time": at,
        "data": {
            "messageSid": sid,
            "timestamp": at,
            "accountSid": account,
            "eventName": event_type,
            "apiVersion": "2010-04-01",
            "from": from_,
            "to": to,
            "messageStatus": status.upper(),
            "numberOfSegments": 1,
            **extra,
        },
    }


def inbound_event(
    *, sid: str, account: str, from_: str, to: str, body: str, at: str | None = None
) -> dict[str, Any]:
    at = at or _now()
    event_type = "com.twilio.messaging.inbound-message.received"
    return {
        "specversion": "1.0",
        "type": event_type,
        "source": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
        "id": new_sid("EZ"),
        "dataschema": INBOUND_SCHEMA,
        "datacontenttype": "application/json",
        "time": at,
        "data": {
            "messageSid": sid,
            "timestamp": at,
            "accountSid": account,
            "eventName": event_type,
            "from": from_,
            "to": to,
            "body": body,
            "numMedia": 0,
            "numSegments": 1,
        },
    }


def signed_request(
    public_url: str, body: str | bytes | list[Any] | dict[str, Any], token: str
) -> tuple[str, bytes, dict[str, str]]:
    """(url, body bytes, headers) for a delivery signed with ``token``."""
    if isinstance(body, (list, dict)):
        body = json.dumps(body)
    raw = body.encode() if isinstance(body, str) else body
    url = f"{public_url}/twilio/events?bodySHA256={hashlib.sha256(raw).hexdigest()}"
    signature = RequestValidator(token).compute_signature(url, {})
    return url, raw, {"X-Twilio-Signature": signature, "Content-Type": "application/json"}
