"""Contact shapes the API returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from loquent.contacts.models import ContactSource
from loquent.messaging.schemas import MessageOut


class ContactListItem(BaseModel):
    id: int
    name: str = Field(description="first and last name, or the number for a stub")
    phone: str | None = Field(description="the preferred number (E.164, or a sender id)")
    source: ContactSource
    last_contacted_at: datetime | None
    last_message: MessageOut | None


class ContactPage(BaseModel):
    items: list[ContactListItem]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")
