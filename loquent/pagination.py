"""Opaque keyset cursors: base64 of a small JSON list. Bad cursors are the client's fault (400)."""

from __future__ import annotations

import base64
import binascii
import json
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
