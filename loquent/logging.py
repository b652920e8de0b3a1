"""Structured logging. Secrets never reach a log line: known secret keys are masked and any
value that looks like a credential is redacted before rendering."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    r"(auth_?token|password|secret|authorization|api_?key|cookie|token)", re.I
)
_BASIC_AUTH = re.compile(r"(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]+", re.I)
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
REDACTED = "[redacted]"


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        value = _BASIC_AUTH.sub(r"\1 " + REDACTED, value)
        return _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key != "event" and _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


class _RedactingFilter(logging.Filter):
    """Same rule for stdlib loggers (uvicorn, httpx, sqlalchemy)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = _redact_value(record.msg)
        if record.args:
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.args = tuple(_redact_value(a) for a in args)
        return True


def configure_logging(*, json_logs: bool = False, level: str = "INFO") -> None:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            redact,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.setLevel(level.upper())
    if not any(isinstance(f, _RedactingFilter) for f in root.filters):
        handler = logging.StreamHandler(sys.stderr)
        handler.addFilter(_RedactingFilter())
        root.handlers = [handler]
    # httpx logs every request URL at INFO; the URLs carry no secrets, but keep noise down.
    logging.getLogger("httpx").setLevel(logging.WARNING)
