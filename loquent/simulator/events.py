"""CloudEvents 1.0 as Twilio Event Streams emits them for messaging."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from loquent.simulator.representations import API_VERSION, message_path
from loquent.simulator.state import Message, iso_millis, new_sid, utcnow

STATUS_EVENT_PREFIX = "com.twilio.messaging.message."
INBOUND_RECEIVED = "com.twilio.messaging.inbound-message.received"
SINK_TEST_EVENT = "com.twilio.eventstreams.test-event"

# Statuses that Event Streams reports, and the event type for each.
STATUS_EVENT_TYPES: dict[str, str] = {
    status: STATUS_EVENT_PREFIX + status
    for status in ("queued", "sent", "delivered", "undelivered", "failed", "read")
}
MESSAGE_EVENT_TYPES: tuple[str, ...] = (*STATUS_EVENT_TYPES.values(), INBOUND_RECEIVED)

SCHEMA_BASE = "https://events-schemas.twilio.com"
STATUS_SCHEMA_VERSION = 4
INBOUND_SCHEMA_VERSION = 6
STATUS_SCHEMA = f"{SCHEMA_BASE}/Messaging.MessageStatus/{STATUS_SCHEMA_VERSION}"
INBOUND_SCHEMA = f"{SCHEMA_BASE}/Messaging.InboundMessageV1/{INBOUND_SCHEMA_VERSION}"
SINK_TEST_SCHEMA = f"{SCHEMA_BASE}/EventStreams.TestSink/1"

# The current schema version of each message event type: what a subscription gets when it
# names a type without a version.
SCHEMA_VERSIONS: dict[str, int] = {
    **dict.fromkeys(STATUS_EVENT_TYPES.values(), STATUS_SCHEMA_VERSION),
    INBOUND_RECEIVED: INBOUND_SCHEMA_VERSION,
}


def new_event_id() -> str:
    return new_sid("EZ")


def _envelope(
    event_type: str, source: str, data: dict[str, Any], at: datetime, schema: str | None
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "specversion": "1.0",
        "type": event_type,
        "source": source,
        "id": new_event_id(),
    }
    if schema is not None:
        event["dataschema"] = schema
    event["datacontenttype"] = "application/json"
    event["time"] = iso_millis(at)
    event["data"] = data
    return event


def status_event(
    message: Message,
    status: str,
    *,
    error_code: int | None = None,
    include_body: bool = False,
    at: datetime | None = None,
) -> dict[str, Any]:
    """A ``Messaging.MessageStatus`` event for ``message`` reaching ``status``."""
    at = at or utcnow()
    event_type = STATUS_EVENT_TYPES[status]
    data: dict[str, Any] = {
        "messageSid": message.sid,
        "timestamp": iso_millis(at),
        "accountSid": message.account_sid,
        "eventName": event_type,
        "apiVersion": API_VERSION,
        "from": message.from_,
        "to": message.to,
        "messageStatus": status.upper(),
        "numberOfSegments": message.num_segments,
    }
    if status in ("undelivered", "failed"):
        data["errorCode"] = error_code if error_code is not None else message.error_code
    if message.messaging_service_sid:
        data["messagingServiceSid"] = message.messaging_service_sid
    if include_body:
        data["body"] = message.body
    source = f"{message_path(message.account_sid, message.sid)}.json"
    return _envelope(event_type, source, data, at, STATUS_SCHEMA)


def inbound_event(message: Message, *, at: datetime | None = None) -> dict[str, Any]:
    """A ``Messaging.InboundMessageV1`` event for a received message."""
    at = at or utcnow()
    data = {
        "messageSid": message.sid,
        "timestamp": iso_millis(at),
        "accountSid": message.account_sid,
        "eventName": INBOUND_RECEIVED,
        "from": message.from_,
        "to": message.to,
        "body": message.body,
        "numMedia": len(message.media),
        "numSegments": message.num_segments,
    }
    source = f"{message_path(message.account_sid, message.sid)}.json"
    return _envelope(INBOUND_RECEIVED, source, data, at, INBOUND_SCHEMA)


def new_test_id() -> str:
    return new_sid("TE")


def sink_test_event(
    account_sid: str, test_id: str | None = None, *, at: datetime | None = None
) -> dict[str, Any]:
    """The event ``POST /v1/Sinks/{sid}/Test`` sends: source "Sink", the account SID as its
    id, and the id of this test in ``data.test_id`` (what ``/Validate`` takes as TestId)."""
    data = {"test_id": test_id or new_test_id()}
    event = _envelope(SINK_TEST_EVENT, "Sink", data, at or utcnow(), SINK_TEST_SCHEMA)
    event["id"] = account_sid
    return event


def with_schema_version(event: dict[str, Any], version: int | None) -> dict[str, Any]:
    """The event as a subscription to ``version`` of its schema receives it."""
    schema = event.get("dataschema")
    if version is None or not isinstance(schema, str) or "/" not in schema:
        return event
    name = schema.rsplit("/", 1)[0]
    return {**event, "dataschema": f"{name}/{version}"}


def message_sid_of(event: dict[str, Any]) -> str | None:
    data = event.get("data")
    return data.get("messageSid") if isinstance(data, dict) else None
