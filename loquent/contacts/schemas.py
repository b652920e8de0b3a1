from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


class ContactListItem(BaseModel):
    id: int
    name: str
    phone: str | None
    source: str
    last_contacted_at: datetime | None
    last_message: dict[str, Any] | None


class ContactPage(BaseModel):
    items: list[ContactListItem]
    next_cursor: str | None
