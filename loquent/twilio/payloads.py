"""Parsing Event Streams deliveries: a JSON array of CloudEvents 1.0 (or a single one).

Parsing is strict about what the inbox relies on and lenient about everything else:
unknown event types are kept (to be acknowledged and ignored), unknown fields are ignored,
``data`` may arrive as a JSON-encoded string. Every rejection is a ``PayloadError`` with a
message fit for the 400 answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

INBOUND_TYPE = "com.twilio.messaging.inbound-message.received"
STATUS_TYPE_PREFIX = "com.twilio.messaging.message."
STATUS_TYPES = {
    STATUS_TYPE_PREFIX + s: s
    for s in ("queued", "sent", "delivered", "undelivered", "failed", "read")
}
SINK_TEST_TYPE = "com.twilio.eventstreams.test-event"

MAX_EVENTS = 1000
_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_MESSAGE_SID = re.compile(r"^(SM|MM)[0-9a-fA-F]{32}$")
_MAX_ADDRESS = 64
_MAX_BODY = 10_000


class PayloadError(ValueError):
    """The delivery can never become valid: answer 400."""


@dataclass(frozen=True)
class CloudEvent:
    type: str
    id: str
    account_sid: str
    data: dict[str, Any]
    time: datetime | None


@dataclass(frozen=True)
class MessageEventData:
    """The fields of a messaging event the inbox uses, validated."""

    message_sid: str
    from_address: str
    to_address: str
    occurred_at: datetime | None
    body: str | None
    error_code: str | None
    num_media: int | None


def parse_delivery(raw: bytes) -> list[CloudEvent]:
    try:
        document = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError(f"body is not valid JSON: {exc}") from None
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise PayloadError("body must be a CloudEvent object or an array of CloudEvents")
    if not document:
        raise PayloadError("the array of events is empty")
    if len(document) > MAX_EVENTS:
        raise PayloadError(f"too many events in one delivery (at most {MAX_EVENTS})")
    return [_parse_event(item, index) for index, item in enumerate(document)]


def _parse_event(item: Any, index: int) -> CloudEvent:
    where = f"event[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(f"{where} is not a JSON object")
    event_type = _required_str(item, "type", where)
    event_id = _required_str(item, "id", where)
    data = item.get("data")
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError:
            raise PayloadError(f"{where}.data is a string but not valid JSON") from None
    if event_type == SINK_TEST_TYPE:
        # The sink test names its account in `id`, not in data.
        if not _ACCOUNT_SID.match(event_id):
            raise PayloadError(f"{where}: a sink test event carries the account SID as its id")
        return CloudEvent(
            type=event_type,
            id=event_id,
            account_sid=event_id,
            data=data if isinstance(data, dict) else {},
            time=_parse_time(item.get("time")),
        )
    if not isinstance(data, dict):
        raise PayloadError(f"{where}.data must be a JSON object")
    account_sid = _required_str(data, "accountSid", f"{where}.data")
    if not _ACCOUNT_SID.match(account_sid):
        raise PayloadError(f"{where}.data.accountSid is not a Twilio account SID")
    event = CloudEvent(
        type=event_type,
        id=event_id,
        account_sid=account_sid,
        data=data,
        time=_parse_time(item.get("time")),
    )
    if is_handled(event_type):
        message_data(event, index)  # validate now, so a bad event rejects the whole delivery
    return event


def is_handled(event_type: str) -> bool:
    return event_type == INBOUND_TYPE or event_type in STATUS_TYPES


def message_data(event: CloudEvent, index: int = 0) -> MessageEventData:
    where = f"event[{index}].data"
    data = event.data
    sid = _required_str(data, "messageSid", where)
    if not _MESSAGE_SID.match(sid):
        raise PayloadError(f"{where}.messageSid is not a Twilio message SID")
    from_address = _required_str(data, "from", where)
    to_address = _required_str(data, "to", where)
    for name, value in (("from", from_address), ("to", to_address)):
        if len(value) > _MAX_ADDRESS:
            raise PayloadError(f"{where}.{name} is too long")
    body = data.get("body")
    if body is not None and not isinstance(body, str):
        raise PayloadError(f"{where}.body must be a string")
    if body is not None and len(body) > _MAX_BODY:
        raise PayloadError(f"{where}.body is too long")
    error_code = data.get("errorCode")
    if error_code is not None and (
        isinstance(error_code, bool) or not isinstance(error_code, (str, int))
    ):
        raise PayloadError(f"{where}.errorCode must be a string or a number")
    num_media = data.get("numMedia")
    if num_media is not None:
        num_media = _as_count(num_media, f"{where}.numMedia")
    occurred_at = _parse_time(data.get("timestamp")) or event.time
    return MessageEventData(
        message_sid=sid,
        from_address=from_address.strip(),
        to_address=to_address.strip(),
        occurred_at=occurred_at,
        body=body,
        error_code=str(error_code) if error_code not in (None, "") else None,
        num_media=num_media,
    )


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{where}.{key} is required and must be a non-empty string")
    return value


def _as_count(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PayloadError(f"{where} must be a whole number")
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > 100:
        raise PayloadError(f"{where} must be a whole number from 0 to 100")
    return value


def _parse_time(value: Any) -> datetime | None:
    """ISO 8601 times; anything unparseable is treated as absent (it is informational)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
