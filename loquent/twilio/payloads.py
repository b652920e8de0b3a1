"""Parsing Twilio's messaging webhooks: Event Streams deliveries (a JSON array of CloudEvents
1.0, or a single one) and the classic form-encoded status callback and inbound webhook.

Parsing is strict about what the inbox relies on and lenient about everything else:
unknown event types are kept (to be acknowledged and ignored), unknown fields are ignored,
``data`` may arrive as a JSON-encoded string. Every rejection is a ``PayloadError`` with a
message fit for the 400 answer.

What parses can be stored, on SQLite and PostgreSQL alike: the limits are the columns'
(``messaging.schemas``), a body is cleaned (NUL removed, lone surrogates → U+FFFD) because
it is the customer's text, and identifiers or addresses that storage cannot hold are refused.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from loquent.messaging.capture import normalize_address
from loquent.messaging.schemas import (
    ADDRESS_MAX,
    BODY_MAX,
    ERROR_CODE_MAX,
    LINE_NUMBER_MAX,
    MESSAGE_SID_MAX,
    NUM_MEDIA_MAX,
    clean_text,
    is_clean_identifier,
)
from loquent.messaging.statuses import STATUSES

INBOUND_TYPE = "com.twilio.messaging.inbound-message.received"
STATUS_TYPE_PREFIX = "com.twilio.messaging.message."
STATUS_TYPES = {
    STATUS_TYPE_PREFIX + s: s
    for s in ("queued", "sent", "delivered", "undelivered", "failed", "read")
}
SINK_TEST_TYPE = "com.twilio.eventstreams.test-event"

MAX_EVENTS = 1000
MAX_DEPTH = 32  # CloudEvents are a few levels deep; tags may add a couple more
MAX_FORM_FIELDS = 200
_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_MESSAGE_SID = re.compile(r"(SM|MM)[0-9a-fA-F]{32}")
# Messaging events name their account in `source`: /2010-04-01/Accounts/AC…/Messages/SM….json
_SOURCE_ACCOUNT = re.compile(r"/\d{4}-\d{2}-\d{2}/Accounts/(AC[0-9a-fA-F]{32})(?:[/.].*)?", re.S)
_DIGITS = re.compile(r"[0-9]{1,4}")
if MESSAGE_SID_MAX < 34:  # the column must hold Twilio's 34-character SIDs
    raise RuntimeError("message.external_id is shorter than a Twilio SID")


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
    """The fields of a messaging event the inbox uses, validated and fit for storage."""

    message_sid: str
    from_address: str
    to_address: str
    occurred_at: datetime | None
    body: str | None
    error_code: str | None
    num_media: int | None


# --- Event Streams ----------------------------------------------------------------------------


def parse_delivery(raw: bytes) -> list[CloudEvent]:
    document = _load_json(raw, "body")
    if isinstance(document, dict):
        document = [document]
    if not isinstance(document, list):
        raise PayloadError("body must be a CloudEvent object or an array of CloudEvents")
    if not document:
        raise PayloadError("the array of events is empty")
    if len(document) > MAX_EVENTS:
        raise PayloadError(f"too many events in one delivery (at most {MAX_EVENTS})")
    return [_parse_event(item, index) for index, item in enumerate(document)]


def _load_json(raw: bytes | str, what: str) -> Any:
    try:
        document = json.loads(raw)
    except RecursionError:
        # The C decoder recurses per level and stops near the interpreter's recursion
        # limit, long before reading the rest: a 100,000-level document costs nothing.
        raise PayloadError(f"{what} is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer of > 4300 digits
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    if _depth_exceeds(document, MAX_DEPTH):
        raise PayloadError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
    return document


def _depth_exceeds(document: Any, limit: int) -> bool:
    """Iterative, so it cannot itself run out of stack."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            children: Any = value.values()
        elif isinstance(value, list):
            children = value
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _parse_event(item: Any, index: int) -> CloudEvent:
    where = f"event[{index}]"
    if not isinstance(item, dict):
        raise PayloadError(f"{where} is not a JSON object")
    event_type = _required_str(item, "type", where)
    event_id = _required_str(item, "id", where)
    data = item.get("data")
    if isinstance(data, str):
        data = _load_json(data, f"{where}.data")
    if event_type == SINK_TEST_TYPE:
        # The sink test names its account in `id`, not in data.
        if not _ACCOUNT_SID.fullmatch(event_id):
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
    event = CloudEvent(
        type=event_type,
        id=event_id,
        account_sid=_account_of(item, data, where),
        data=data,
        time=_parse_time(item.get("time")),
    )
    if is_handled(event_type):
        message_data(event, index)  # validate now, so a bad event rejects the whole delivery
    return event


def _account_of(item: dict[str, Any], data: dict[str, Any], where: str) -> str:
    """``data.accountSid``, or the account named by ``source`` when data omits it (observed
    on inbound-message events): refusing those would lose a customer's text."""
    source = item.get("source")
    match = _SOURCE_ACCOUNT.fullmatch(source) if isinstance(source, str) else None
    from_source = match.group(1) if match else None
    if "accountSid" not in data or data["accountSid"] is None:
        if from_source is None:
            raise PayloadError(
                f"{where}.data.accountSid is required (or a source naming the account)"
            )
        return from_source
    account_sid = data["accountSid"]
    if not isinstance(account_sid, str) or not _ACCOUNT_SID.fullmatch(account_sid):
        raise PayloadError(f"{where}.data.accountSid is not a Twilio account SID")
    if from_source is not None and from_source != account_sid:
        raise PayloadError(f"{where}: data.accountSid and source name different accounts")
    return account_sid


def is_handled(event_type: str) -> bool:
    return event_type == INBOUND_TYPE or event_type in STATUS_TYPES


def message_data(event: CloudEvent, index: int = 0) -> MessageEventData:
    data = event.data
    return message_fields(
        where=f"event[{index}].data",
        names=("messageSid", "from", "to", "body", "errorCode", "numMedia"),
        sid=data.get("messageSid"),
        from_address=data.get("from"),
        to_address=data.get("to"),
        body=data.get("body"),
        error_code=data.get("errorCode"),
        num_media=data.get("numMedia"),
        occurred_at=_parse_time(data.get("timestamp")) or event.time,
        inbound=event.type == INBOUND_TYPE,
    )


# --- classic webhooks (form-encoded) ---------------------------------------------------------


@dataclass(frozen=True)
class ClassicCallback:
    """A status callback or an inbound-message webhook, validated."""

    account_sid: str
    status: str | None  # None for an unknown status value: acknowledged and ignored
    data: MessageEventData


def parse_form(raw: bytes) -> dict[str, str]:
    """``application/x-www-form-urlencoded`` → the params Twilio signed (one value each)."""
    try:
        text = raw.decode("utf-8")
        pairs = parse_qsl(
            text,
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=MAX_FORM_FIELDS,
            errors="strict",
        )
    except (UnicodeDecodeError, ValueError):
        raise PayloadError(
            "body must be a UTF-8 form (application/x-www-form-urlencoded)"
        ) from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:
            raise PayloadError(f"form field {name} is repeated")
        form[name] = value
    return form


def parse_status_callback(form: Mapping[str, str]) -> ClassicCallback:
    """Messaging status callback: MessageSid, MessageStatus (SmsStatus on older accounts),
    AccountSid, From, To, ErrorCode, …"""
    status = (form.get("MessageStatus") or form.get("SmsStatus") or "").strip().lower()
    if not status:
        raise PayloadError("MessageStatus is required")
    return ClassicCallback(
        account_sid=_form_account(form),
        status=status if status in STATUSES else None,
        data=_form_fields(form, inbound=False),
    )


def parse_inbound_webhook(form: Mapping[str, str]) -> ClassicCallback:
    """Inbound messaging webhook: MessageSid (SmsSid), AccountSid, From, To, Body, NumMedia."""
    return ClassicCallback(
        account_sid=_form_account(form),
        status="received",
        data=_form_fields(form, inbound=True),
    )


def _form_account(form: Mapping[str, str]) -> str:
    account_sid = form.get("AccountSid")
    if not account_sid or not _ACCOUNT_SID.fullmatch(account_sid):
        raise PayloadError("AccountSid is required and must be a Twilio account SID")
    return account_sid


def _form_fields(form: Mapping[str, str], *, inbound: bool) -> MessageEventData:
    sid_name = "MessageSid" if form.get("MessageSid") else "SmsSid"
    return message_fields(
        where="form",
        names=(sid_name, "From", "To", "Body", "ErrorCode", "NumMedia"),
        sid=form.get(sid_name),
        from_address=form.get("From"),
        to_address=form.get("To"),
        body=form.get("Body") if inbound else None,
        error_code=form.get("ErrorCode"),
        num_media=form.get("NumMedia") or None,
        occurred_at=None,
        inbound=inbound,
    )


# --- shared field rules ----------------------------------------------------------------------


def message_fields(
    *,
    where: str,
    names: tuple[str, str, str, str, str, str],
    sid: Any,
    from_address: Any,
    to_address: Any,
    body: Any,
    error_code: Any,
    num_media: Any,
    occurred_at: datetime | None,
    inbound: bool,
) -> MessageEventData:
    """The one set of rules for both webhook kinds: accept exactly what storage can hold."""
    sid_name, from_name, to_name, body_name, error_name, media_name = names
    if not isinstance(sid, str) or not _MESSAGE_SID.fullmatch(sid):
        raise PayloadError(f"{where}.{sid_name} is required and must be a Twilio message SID")
    sender = _address(from_address, f"{where}.{from_name}", ADDRESS_MAX)
    # An inbound text's `to` becomes one of the organization's lines.
    recipient = _address(
        to_address, f"{where}.{to_name}", LINE_NUMBER_MAX if inbound else ADDRESS_MAX
    )
    if body is not None:
        if not isinstance(body, str):
            raise PayloadError(f"{where}.{body_name} must be a string")
        body = clean_text(body)
        if len(body) > BODY_MAX:
            raise PayloadError(f"{where}.{body_name} is longer than {BODY_MAX} characters")
    return MessageEventData(
        message_sid=sid,
        from_address=sender,
        to_address=recipient,
        occurred_at=occurred_at,
        body=body,
        error_code=_error_code(error_code, f"{where}.{error_name}"),
        num_media=None if num_media is None else _as_count(num_media, f"{where}.{media_name}"),
    )


def _address(value: Any, where: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{where} is required and must be a non-empty string")
    value = value.strip()
    if not is_clean_identifier(value):
        raise PayloadError(f"{where} contains characters an address cannot have")
    if len(value) > 200 or len(normalize_address(value)) > limit:
        raise PayloadError(f"{where} is longer than {limit} characters")
    return str(value)


def _error_code(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise PayloadError(f"{where} must be a string or a number")
    if isinstance(value, int):
        if not 0 <= value < 10**ERROR_CODE_MAX:
            raise PayloadError(f"{where} must have at most {ERROR_CODE_MAX} digits")
        return str(value)
    text = value.strip()
    if not text:
        return None
    if len(text) > ERROR_CODE_MAX or not is_clean_identifier(text):
        raise PayloadError(f"{where} must be at most {ERROR_CODE_MAX} printable characters")
    return text


def _required_str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{where}.{key} is required and must be a non-empty string")
    return value


def _as_count(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise PayloadError(f"{where} must be a whole number")
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        value = int(value)
    if not isinstance(value, int) or value < 0 or value > NUM_MEDIA_MAX:
        raise PayloadError(f"{where} must be a whole number from 0 to {NUM_MEDIA_MAX}")
    return value


def _parse_time(value: Any) -> datetime | None:
    """ISO 8601 times; anything unparseable or out of range is treated as absent (it is
    informational: the message is stored at the time it arrived instead)."""
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        return None
    if not 1970 <= parsed.year <= 9998:
        return None  # the edges of the calendar overflow later arithmetic and some drivers
    return parsed
