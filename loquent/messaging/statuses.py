"""Twilio message statuses and their order. Events arrive out of order; status never regresses."""

from __future__ import annotations

import enum


class MessageStatus(enum.StrEnum):
    """A message's delivery status, as Twilio's REST API spells it."""

    ACCEPTED = "accepted"
    SCHEDULED = "scheduled"
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    RECEIVING = "receiving"
    RECEIVED = "received"
    READ = "read"
    CANCELED = "canceled"
    PARTIALLY_DELIVERED = "partially_delivered"


STATUSES = tuple(status.value for status in MessageStatus)

_RANK = {
    "accepted": 0,
    "scheduled": 0,
    "queued": 0,
    "sending": 1,
    "sent": 2,
    "delivered": 3,
    "undelivered": 3,
    "failed": 3,
    "partially_delivered": 3,
    "canceled": 3,
    "read": 4,
    # Inbound-only: a received message has arrived; nothing later applies to it.
    "receiving": 1,
    "received": 3,
}

INBOUND_ONLY = frozenset({"receiving", "received"})
TERMINAL_FAILURES = frozenset({"undelivered", "failed", "canceled"})


def rank(status: str) -> int:
    return _RANK.get(status, -1)


def should_advance(current: str, new: str) -> bool:
    """True when ``new`` moves the message forward.

    Equal rank with a different value (delivered after failed, say) keeps the first answer:
    terminal statuses are final, and a duplicate event must not flip-flop the badge.
    """
    if new not in _RANK or new == current:
        return False
    return rank(new) > rank(current)
