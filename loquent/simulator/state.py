"""In-memory store of the simulated Twilio accounts and everything they own.

All access happens on the event loop thread, so plain dicts are enough; no locking.
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime

# Twilio's rank of message statuses. Status never regresses: a lower-ranked update is ignored.
STATUS_RANK: dict[str, int] = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "receiving": 0,
    "received": 1,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "partially_delivered": 3,
    "read": 4,
}

# Error codes Twilio reports for messages that did not make it, when the caller names none.
DEFAULT_ERROR_CODES: dict[str, tuple[int, str]] = {
    "undelivered": (30003, "Unreachable destination handset"),
    "failed": (30008, "Unknown error"),
}

ERROR_MESSAGES: dict[int, str] = {
    30003: "Unreachable destination handset",
    30005: "Unknown destination handset",
    30006: "Landline or unreachable carrier",
    30007: "Message filtered",
    30008: "Unknown error",
}


def new_sid(prefix: str) -> str:
    """A Twilio-style SID: two-letter resource prefix + 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc2822(value: datetime | None) -> str | None:
    """Dates as the 2010-04-01 API writes them: ``Mon, 23 Nov 2026 10:00:00 +0000``."""
    if value is None:
        return None
    return format_datetime(value.astimezone(UTC).replace(microsecond=0))


def iso_seconds(value: datetime) -> str:
    """Dates as the v1 APIs (Event Streams) write them: ``2026-11-23T10:00:00Z``."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_millis(value: datetime) -> str:
    """CloudEvent times: ``2026-11-23T10:00:01.000Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


_GSM7 = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENDED = set("^{}\\[~]|€")


def count_segments(body: str | None) -> int:
    """SMS segments as carriers count them: GSM-7 160/153 characters, otherwise UCS-2 70/67."""
    if not body:
        return 1
    if all(ch in _GSM7 or ch in _GSM7_EXTENDED for ch in body):
        units = sum(2 if ch in _GSM7_EXTENDED else 1 for ch in body)
        single, multi = 160, 153
    else:
        units = len(body.encode("utf-16-le")) // 2
        single, multi = 70, 67
    return 1 if units <= single else -(-units // multi)


def us_friendly_name(phone_number: str) -> str:
    """Twilio's default friendly name for a NANP number, ``(415) 555-0100``."""
    if phone_number.startswith("+1") and len(phone_number) == 12 and phone_number[1:].isdigit():
        digits = phone_number[2:]
        return f"({digits[:3]}) {digits[3:6]}-{digits[6:]}"
    return phone_number


@dataclass
class SigningKey:
    """A webhook SharedKey: deliveries are signed with its secret instead of the auth token."""

    key_sid: str
    secret: str
    algorithm: str  # "HMAC_SHA256" or "HMAC_SHA1"


@dataclass
class Account:
    sid: str
    auth_token: str
    friendly_name: str
    status: str = "active"
    signing_key: SigningKey | None = None
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)


@dataclass
class PhoneNumber:
    sid: str
    account_sid: str
    phone_number: str
    friendly_name: str
    seq: int
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)


@dataclass
class Media:
    sid: str
    account_sid: str
    parent_sid: str
    content_type: str
    content: bytes
    source_url: str | None
    date_created: datetime = field(default_factory=utcnow)


@dataclass
class Message:
    sid: str
    account_sid: str
    from_: str
    to: str
    body: str
    direction: str  # "outbound-api" | "inbound"
    status: str
    seq: int
    date_created: datetime
    date_updated: datetime
    date_sent: datetime | None = None
    error_code: int | None = None
    error_message: str | None = None
    num_segments: int = 1
    media: list[Media] = field(default_factory=list)
    messaging_service_sid: str | None = None
    status_callback: str | None = None

    def set_error(self, error_code: int | None) -> bool:
        """Record why an undelivered/failed message failed (Twilio's default code if none)."""
        if self.status not in DEFAULT_ERROR_CODES:
            return False
        default_code, default_text = DEFAULT_ERROR_CODES[self.status]
        code = error_code if error_code is not None else (self.error_code or default_code)
        if code == self.error_code:
            return False
        self.error_code = code
        self.error_message = ERROR_MESSAGES.get(code, default_text)
        return True

    def apply_status(self, status: str, error_code: int | None = None) -> bool:
        """Move to ``status`` unless that would regress; returns whether anything changed."""
        if STATUS_RANK.get(status, 0) <= STATUS_RANK.get(self.status, 0) and status != self.status:
            return False
        changed = status != self.status
        self.status = status
        now = utcnow()
        if self.date_sent is None and STATUS_RANK.get(status, 0) >= STATUS_RANK["sent"]:
            self.date_sent = now
            changed = True
        if self.set_error(error_code):
            changed = True
        if changed:
            self.date_updated = now
        return changed


@dataclass
class Sink:
    sid: str
    account_sid: str
    description: str
    destination: str
    method: str
    batch_events: bool
    sink_type: str = "webhook"
    status: str = "active"
    last_test_id: str | None = None  # the test event last sent, for /Validate
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)


@dataclass
class Subscription:
    sid: str
    account_sid: str
    sink_sid: str
    description: str
    types: dict[str, int]  # event type -> schema version
    date_created: datetime = field(default_factory=utcnow)
    date_updated: datetime = field(default_factory=utcnow)


class SimStore:
    """Accounts, numbers, messages, media, sinks and subscriptions, keyed by SID."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.accounts: dict[str, Account] = {}
        self.numbers: dict[str, PhoneNumber] = {}
        self.messages: dict[str, Message] = {}
        self.media: dict[str, Media] = {}
        self.sinks: dict[str, Sink] = {}
        self.subscriptions: dict[str, Subscription] = {}
        # Insertion order breaks ties between equal timestamps, so listings are stable.
        self._seq = itertools.count(1)

    # Accounts

    def upsert_account(
        self,
        sid: str | None = None,
        auth_token: str | None = None,
        friendly_name: str | None = None,
    ) -> tuple[Account, bool]:
        """Create an account, or update the token/name of an existing one (idempotent seeding)."""
        existing = self.accounts.get(sid) if sid else None
        if existing is not None:
            if auth_token:
                existing.auth_token = auth_token
            if friendly_name:
                existing.friendly_name = friendly_name
            existing.date_updated = utcnow()
            return existing, False
        account = Account(
            sid=sid or new_sid("AC"),
            auth_token=auth_token or secrets.token_hex(16),
            friendly_name=friendly_name or "Simulated account",
        )
        self.accounts[account.sid] = account
        return account, True

    def rotate_token(self, account: Account, auth_token: str | None = None) -> str:
        account.auth_token = auth_token or secrets.token_hex(16)
        account.date_updated = utcnow()
        return account.auth_token

    # Phone numbers

    def upsert_number(
        self, account_sid: str, phone_number: str, friendly_name: str | None = None
    ) -> PhoneNumber:
        for number in self.numbers.values():
            if number.account_sid == account_sid and number.phone_number == phone_number:
                if friendly_name:
                    number.friendly_name = friendly_name
                return number
        number = PhoneNumber(
            sid=new_sid("PN"),
            account_sid=account_sid,
            phone_number=phone_number,
            friendly_name=friendly_name or us_friendly_name(phone_number),
            seq=next(self._seq),
        )
        self.numbers[number.sid] = number
        return number

    def numbers_for(self, account_sid: str) -> list[PhoneNumber]:
        return sorted(
            (n for n in self.numbers.values() if n.account_sid == account_sid),
            key=lambda n: n.seq,
        )

    # Messages and media

    def add_message(
        self,
        *,
        account_sid: str,
        from_: str,
        to: str,
        body: str,
        direction: str,
        status: str,
        date_created: datetime | None = None,
        error_code: int | None = None,
        messaging_service_sid: str | None = None,
        status_callback: str | None = None,
    ) -> Message:
        created = date_created or utcnow()
        message = Message(
            sid=new_sid("SM"),
            account_sid=account_sid,
            from_=from_,
            to=to,
            body=body,
            direction=direction,
            status=status,
            seq=next(self._seq),
            date_created=created,
            date_updated=created,
            num_segments=count_segments(body),
            messaging_service_sid=messaging_service_sid,
            status_callback=status_callback,
        )
        if direction == "inbound" or STATUS_RANK.get(status, 0) >= STATUS_RANK["sent"]:
            message.date_sent = created
        message.set_error(error_code)
        self.messages[message.sid] = message
        return message

    def add_media(
        self, message: Message, content_type: str, content: bytes, source_url: str | None
    ) -> Media:
        media = Media(
            sid=new_sid("ME"),
            account_sid=message.account_sid,
            parent_sid=message.sid,
            content_type=content_type,
            content=content,
            source_url=source_url,
            date_created=message.date_created,
        )
        message.media.append(media)
        self.media[media.sid] = media
        return media

    def delete_message(self, message: Message) -> None:
        self.messages.pop(message.sid, None)
        for media in message.media:
            self.media.pop(media.sid, None)

    def messages_for(self, account_sid: str | None = None) -> list[Message]:
        """Newest first, as Twilio lists them."""
        return sorted(
            (m for m in self.messages.values() if account_sid in (None, m.account_sid)),
            key=lambda m: (m.date_created, m.seq),
            reverse=True,
        )

    # Event Streams sinks and subscriptions

    def add_sink(
        self,
        account_sid: str,
        *,
        destination: str,
        description: str,
        method: str = "POST",
        batch_events: bool = True,
        sink_type: str = "webhook",
    ) -> Sink:
        sink = Sink(
            sid=new_sid("DG"),
            account_sid=account_sid,
            description=description,
            destination=destination,
            method=method,
            batch_events=batch_events,
            sink_type=sink_type,
        )
        self.sinks[sink.sid] = sink
        return sink

    def delete_sink(self, sink: Sink) -> None:
        """Deleting a sink deletes its subscriptions, as Twilio does."""
        self.sinks.pop(sink.sid, None)
        for sid in [s.sid for s in self.subscriptions.values() if s.sink_sid == sink.sid]:
            del self.subscriptions[sid]

    def sinks_for(self, account_sid: str) -> list[Sink]:
        return sorted(
            (s for s in self.sinks.values() if s.account_sid == account_sid),
            key=lambda s: (s.date_created, s.sid),
        )

    def add_subscription(
        self, account_sid: str, sink_sid: str, description: str, types: dict[str, int]
    ) -> Subscription:
        subscription = Subscription(
            sid=new_sid("DF"),
            account_sid=account_sid,
            sink_sid=sink_sid,
            description=description,
            types=dict(types),
        )
        self.subscriptions[subscription.sid] = subscription
        return subscription

    def subscriptions_for(
        self, account_sid: str, sink_sid: str | None = None
    ) -> list[Subscription]:
        return sorted(
            (
                s
                for s in self.subscriptions.values()
                if s.account_sid == account_sid and sink_sid in (None, s.sink_sid)
            ),
            key=lambda s: (s.date_created, s.sid),
        )

    def subscribed_types(self, sink_sid: str) -> set[str]:
        return set(self.subscribed_versions(sink_sid))

    def subscribed_versions(self, sink_sid: str) -> dict[str, int]:
        """Event type → schema version the sink's subscriptions ask for (the highest wins)."""
        versions: dict[str, int] = {}
        for subscription in self.subscriptions.values():
            if subscription.sink_sid == sink_sid:
                for event_type, version in subscription.types.items():
                    versions[event_type] = max(version, versions.get(event_type, 0))
        return versions
