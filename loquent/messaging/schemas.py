"""Message shapes: the JSON the API and realtime events carry, and the inputs the service takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, String

from loquent.contacts.models import ContactPhone
from loquent.messaging.models import BodyState, Direction, Message, MessageSource
from loquent.messaging.statuses import MessageStatus
from loquent.orgs.models import PhoneNumber


def _column_length(column: ColumnElement[Any]) -> int:
    """The storage limit of a String column: the single source of the parsers' limits."""
    if not isinstance(column.type, String) or column.type.length is None:
        raise TypeError(f"{column} is not a String column with a length")
    return column.type.length


# What a status report or inbound text may carry, derived from the columns it is written to.
# SQLite would store longer values, PostgreSQL refuses them: parsing refuses them first, on
# both, so a delivery is accepted or rejected as a whole before anything is written.
MESSAGE_SID_MAX = _column_length(Message.__table__.c.external_id)
ADDRESS_MAX = min(
    _column_length(Message.__table__.c.from_address),
    _column_length(Message.__table__.c.to_address),
    _column_length(ContactPhone.__table__.c.number),
)
LINE_NUMBER_MAX = _column_length(PhoneNumber.__table__.c.number)  # an inbound text's `to`
ERROR_CODE_MAX = _column_length(Message.__table__.c.error_code)
BODY_MAX = 10_000  # Text column; Twilio's own limit is 1,600 characters
NUM_MEDIA_MAX = 100


def clean_text(value: str) -> str:
    """User text as both backends can store it: NUL removed (PostgreSQL refuses it), lone
    UTF-16 surrogates (a multi-part SMS cut inside an emoji) replaced with U+FFFD.
    A body is the customer's words; a damaged character is better than a lost text."""
    if "\x00" in value:
        value = value.replace("\x00", "")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # Through UTF-16: a split pair is joined again, each lone half becomes one U+FFFD.
        value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return value


def is_clean_identifier(value: str) -> bool:
    """Addresses and codes must be printable text that UTF-8 can carry; anything else is a
    malformed request (400), never silently rewritten: it names who a message belongs to."""
    return value.isprintable() and clean_text(value) == value


class MessageOut(BaseModel):
    """A message as the API and the realtime events carry it."""

    id: int
    organization_id: int
    contact_id: int
    phone_number_id: int | None = Field(description="the organization's line it went through")
    channel: Literal["sms"]
    direction: Direction
    from_address: str
    to_address: str
    body: str | None = Field(description="null until fetched from Twilio (see body_state)")
    body_state: BodyState
    status: MessageStatus
    error_code: str | None
    source: MessageSource | None = Field(description="null for rows older than the column")
    external_id: str | None = Field(description="Twilio's message SID (SM…/MM…)")
    num_media: int
    created_at: datetime
    updated_at: datetime


def message_json(message: Message) -> dict[str, Any]:
    return MessageOut.model_validate(message, from_attributes=True).model_dump(mode="json")


@dataclass(frozen=True)
class StatusReport:
    """A delivery-status report for one message, whatever its origin (Event Streams today)."""

    message_sid: str
    status: str
    from_address: str
    to_address: str
    occurred_at: datetime | None = None
    error_code: str | None = None
    body: str | None = None
    num_media: int | None = None


@dataclass(frozen=True)
class InboundText:
    """A text received on one of the organization's lines."""

    message_sid: str
    from_address: str
    to_address: str
    body: str | None
    occurred_at: datetime | None = None
    num_media: int = 0


@dataclass(frozen=True)
class FetchedMedia:
    sid: str
    content_type: str


@dataclass(frozen=True)
class FetchedMessage:
    """What Twilio's REST API says about a message, reduced to what the inbox stores."""

    body: str
    status: str | None
    error_code: str | None
    num_media: int
    created_at: datetime | None
    media: list[FetchedMedia] = field(default_factory=list)
