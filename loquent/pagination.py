"""Opaque keyset cursors: base64 of a small JSON list. Bad cursors are the client's fault (400)."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any

from loquent.errors import ApiError


def encode_cursor(*values: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(values)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, arity: int) -> list[Any]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        values = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise ApiError(400, "invalid_cursor", "cursor is not valid") from None
    if not isinstance(values, list) or len(values) != arity:
        raise ApiError(400, "invalid_cursor", "cursor is not valid")
    return values


def encode_keyset(at: datetime | None, row_id: int) -> str:
    """A (time, id) keyset position; the time may be None (rows that sort last)."""
    return encode_cursor(at.isoformat() if at is not None else None, row_id)


def decode_keyset(cursor: str, *, allow_null_time: bool = False) -> tuple[datetime | None, int]:
    at_raw, row_id = decode_cursor(cursor, 2)
    if not isinstance(row_id, int) or isinstance(row_id, bool):
        raise ApiError(400, "invalid_cursor", "cursor is not valid")
    if at_raw is None and allow_null_time:
        return None, row_id
    try:
        at = datetime.fromisoformat(at_raw)
    except (TypeError, ValueError):
        raise ApiError(400, "invalid_cursor", "cursor is not valid") from None
    return at, row_id
