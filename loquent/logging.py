"""Structured logging. Secrets never reach a log line.

Every record — our structlog events and the standard library's (uvicorn's access and error
lines, SQLAlchemy, httpx) — goes through one handler whose ``ProcessorFormatter`` runs the
same chain: request id from the context, level, time, redaction, then one renderer (JSON in
production). So a line that skipped redaction, or that is not JSON when JSON is asked for,
cannot exist: there is no other handler.

Redaction: values under secret-looking keys are masked; credentials inside strings (Basic/
Bearer headers, passwords in URLs, session cookies) are masked; SQL parameters are never
logged. Database and HTTP driver loggers stay at WARNING even at DEBUG — at DEBUG they print
every statement with its parameters (CSRF tokens, token digests, message bodies) — unless
``LOQUENT_LOG_SQL`` asks for statements, which are then logged without their parameters.
"""

from __future__ import annotations

import logging
import logging.config
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = re.compile(
    r"(auth_?token|password|secret|authorization|api_?key|cookie|token|csrf)", re.I
)
_BASIC_AUTH = re.compile(r"(Basic|Bearer)\s+[A-Za-z0-9+/=._~-]+", re.I)
_URL_CREDENTIALS = re.compile(r"(://[^/\s:@]+:)[^@\s/]+@")
# name=value pairs whose name says secret (cookies, query strings, form fields, headers).
_SECRET_PAIRS = re.compile(
    r"((?:auth_?token|password|secret|api_?key|token|csrf[\w-]*|session[\w-]*|"
    r"loquent[\w-]*)\s*[=:]\s*)([^\s&;,'\"]+)",
    re.I,
)
_API_TOKEN = re.compile(r"\blq_[A-Za-z0-9_-]{8,}")
REDACTED = "[redacted]"
SQL_PARAMETERS_REDACTED = "[parameters redacted]"

# Loggers that print request/statement detail at DEBUG/INFO. WARNING keeps their errors.
DRIVER_LOGGERS = (
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "redis",
    "httpx",
    "httpcore",
    "hpack",
    "multipart",
    "python_multipart",
    "sse_starlette",  # prints every frame (message bodies) at DEBUG
)
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def redact_text(value: str) -> str:
    value = _BASIC_AUTH.sub(r"\1 " + REDACTED, value)
    value = _URL_CREDENTIALS.sub(r"\1" + REDACTED + "@", value)
    value = _SECRET_PAIRS.sub(r"\1" + REDACTED, value)
    return _API_TOKEN.sub("lq_" + REDACTED, value)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and _SECRET_KEYS.search(k) else _redact_value(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v) for v in value)
    return value


def redact(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key == "_record" or key == "_from_structlog":
            continue
        if key != "event" and _SECRET_KEYS.search(key):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(event_dict[key])
    return event_dict


def _stdlib_record(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A standard-library record: name its logger."""
    record: logging.LogRecord | None = event_dict.get("_record")
    if record is not None and not event_dict.get("_from_structlog"):
        event_dict.setdefault("logger", record.name)
    return event_dict


class _SqlParametersFilter(logging.Filter):
    """SQLAlchemy logs a statement's parameters as a ``%r`` argument of its own record
    ("[generated in 0.0001s] ('a message body', …)"): keep the text, drop the parameters.
    A filter, because it must see the arguments before the message is formatted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if (
            record.name.startswith("sqlalchemy.engine")
            and isinstance(record.msg, str)
            and "%r" in record.msg
            and record.args
        ):
            args = record.args if isinstance(record.args, tuple) else (record.args,)
            record.msg = record.msg.replace("%r", "%s")
            record.args = tuple(
                a if isinstance(a, str | int | float) else SQL_PARAMETERS_REDACTED for a in args
            )
        return True


def _processors(json_logs: bool) -> list[Any]:
    """The chain every record passes: context, level, time, exception text, redaction."""
    chain: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _stdlib_record,
    ]
    if json_logs:  # the console renderer prints exceptions itself (after redaction of values)
        chain.append(structlog.processors.format_exc_info)
    chain.append(redact)
    return chain


def make_formatter(json_logs: bool = False) -> structlog.stdlib.ProcessorFormatter:
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if json_logs
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_processors(json_logs),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            renderer,
        ],
    )


class LoquentHandler(logging.StreamHandler):  # type: ignore[type-arg,unused-ignore]
    """The one handler on the root logger."""

    def __init__(self, stream: Any = None) -> None:
        super().__init__(stream)
        self.addFilter(_SqlParametersFilter())


def route_uvicorn_loggers() -> None:
    """uvicorn's own configuration gives its loggers handlers of their own that do not
    propagate; take them back so their lines are redacted and rendered like ours."""
    for name in _UVICORN_LOGGERS:
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers = []
        uvicorn_logger.propagate = True


def configure_logging(*, json_logs: bool = False, level: str = "INFO", sql: bool = False) -> None:
    """Send every record, ours and the libraries', through one redacting formatter."""
    level = level.upper()
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.stdlib.add_logger_name,
            *_processors(json_logs),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = LoquentHandler(sys.stderr)
    handler.setFormatter(make_formatter(json_logs))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level)
    route_uvicorn_loggers()
    quiet = logging.WARNING
    for name in DRIVER_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    if sql:
        logging.getLogger("sqlalchemy.engine").setLevel(logging.INFO)


def uvicorn_log_config(*, json_logs: bool, level: str) -> dict[str, Any]:
    """A dictConfig for uvicorn (``log_config=``) that routes its loggers, in every worker
    process it spawns, to the same redacting handler before anything is logged."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"loquent": {"()": "loquent.logging.make_formatter", "json_logs": json_logs}},
        "handlers": {
            "loquent": {
                "class": "loquent.logging.LoquentHandler",
                "formatter": "loquent",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in _UVICORN_LOGGERS
        },
        "root": {"handlers": ["loquent"], "level": level.upper()},
    }
