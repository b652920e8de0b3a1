"""Message shapes: the JSON the API and realtime events carry, and the inputs the service takes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from loquent.messaging.models import Message


class MessageOut(BaseModel):
    id: int
    organization_id: int
    contact_id: int
    phone_number_id: int | None
    channel: str
    direction: str
    from_address: str
    to_address: str
    body: str | None
    body_state: str
    status: str
    error_code: str | None
    source: str | None
    external_id: str | None
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
