"""Request bodies of the ``/_sim`` control API (``control``): what each control request may
carry, with the limits and allowed values checked before a route runs, so a bad request is a
422 that changed nothing."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from loquent.simulator.delivery import JSON_CONTENT_TYPE, DeliveryOptions
from loquent.simulator.events import MESSAGE_EVENT_TYPES, STATUS_EVENT_TYPES
from loquent.simulator.state import STATUS_RANK

E164 = r"^\+[1-9]\d{1,14}$"
ACCOUNT_SID = r"^AC[0-9a-fA-F]{32}$"
DEFAULT_STATUSES = ["queued", "sent", "delivered"]


def _check_statuses(statuses: list[str]) -> list[str]:
    unknown = [status for status in statuses if status not in STATUS_EVENT_TYPES]
    if unknown:
        raise ValueError(f"unknown statuses {unknown}; known: {sorted(STATUS_EVENT_TYPES)}")
    return statuses


class ControlModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class DeliveryControls(ControlModel):
    duplicate: int = Field(1, ge=1, le=100, description="deliver each event this many times")
    shuffle: bool = False
    batch: bool = Field(False, description="all events in one request instead of one each")
    concurrent: bool = Field(False, description="send the requests at once")
    delay_ms: int = Field(0, ge=0, le=60_000, description="pause between requests")
    seed: int | None = Field(None, description="makes shuffle reproducible")
    wait: bool = Field(False, description="await delivery and return the results")

    def options(self) -> DeliveryOptions:
        return DeliveryOptions(
            duplicate=self.duplicate,
            shuffle=self.shuffle,
            batch=self.batch,
            concurrent=self.concurrent,
            delay_s=self.delay_ms / 1000,
            seed=self.seed,
        )


class AccountIn(ControlModel):
    sid: str | None = Field(None, pattern=ACCOUNT_SID)
    auth_token: str | None = Field(None, min_length=1)
    friendly_name: str | None = None


class RotateTokenIn(ControlModel):
    auth_token: str | None = Field(None, min_length=1)


class SigningKeyIn(ControlModel):
    key_sid: str | None = Field(None, min_length=1)
    secret: str | None = Field(None, min_length=1)
    algorithm: Literal["HMAC_SHA256", "HMAC_SHA1"] = "HMAC_SHA256"


class NumberIn(ControlModel):
    phone_number: str = Field(pattern=E164)
    friendly_name: str | None = None


class SinkIn(ControlModel):
    destination: str
    types: list[str] | None = None
    batch_events: bool = True
    description: str | None = None

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("types must not be empty")
            unknown = [t for t in value if t not in MESSAGE_EVENT_TYPES]
            if unknown:
                raise ValueError(f"unknown types {unknown}; known: {list(MESSAGE_EVENT_TYPES)}")
        return value


class ConsoleSmsIn(DeliveryControls):
    from_: str = Field(alias="from", pattern=E164)
    to: str = Field(pattern=E164)
    body: str = ""
    media_urls: list[str] = Field(default_factory=list)
    statuses: list[str] = Field(default_factory=lambda: list(DEFAULT_STATUSES), min_length=1)
    error_code: int | None = None
    include_body: bool = Field(False, description="put the body in the status events too")
    deliver: bool = Field(True, description="false: only create the message, send no events")
    date_created: datetime | None = None

    _statuses = field_validator("statuses")(_check_statuses)


class InboundSmsIn(DeliveryControls):
    from_: str = Field(alias="from", pattern=E164)
    to: str = Field(pattern=E164)
    body: str = ""
    media_urls: list[str] = Field(default_factory=list)
    deliver: bool = True
    date_created: datetime | None = None


class SeedMessage(ControlModel):
    from_: str = Field(alias="from", pattern=E164)
    to: str = Field(pattern=E164)
    body: str = ""
    direction: Literal["outbound-api", "inbound"] = "outbound-api"
    status: str | None = Field(None, description="default: delivered, or received if inbound")
    error_code: int | None = None
    media_urls: list[str] = Field(default_factory=list)
    date_created: datetime | None = None

    @field_validator("status")
    @classmethod
    def _known_status(cls, value: str | None) -> str | None:
        if value is not None and value not in STATUS_RANK:
            raise ValueError(f"unknown status {value!r}; known: {sorted(STATUS_RANK)}")
        return value


class SeedMessagesIn(ControlModel):
    messages: list[SeedMessage] = Field(min_length=1, max_length=100_000)


class TrafficIn(ControlModel):
    """Many messages at once, sent "while the app was down": stored, never delivered."""

    count: int = Field(ge=1, le=200_000)
    lines: list[str] | None = Field(
        None, description="the account's numbers that send/receive (default: all of them)"
    )
    inbound_share: float = Field(0.5, ge=0, le=1, description="share of inbound texts")
    counterparts: int = Field(100, ge=1, le=100_000, description="distinct other numbers")
    counterpart_prefix: str = Field("+1628", pattern=r"^\+[1-9]\d{0,6}$")
    start: datetime | None = Field(None, description="the oldest message's time (default: now)")
    spacing_ms: int = Field(1000, ge=0, le=86_400_000, description="time between messages")
    body_prefix: str = Field("Message", max_length=100)
    media_every: int = Field(0, ge=0, description="every Nth message is an MMS (0: none)")
    return_sids: bool = False


class MessageEventsIn(DeliveryControls):
    statuses: list[str] = Field(min_length=1)
    error_code: int | None = None
    include_body: bool = False

    @field_validator("statuses")
    @classmethod
    def _known_statuses(cls, value: list[str]) -> list[str]:
        unknown = [s for s in value if s not in STATUS_EVENT_TYPES and s != "received"]
        if unknown:
            raise ValueError(f"unknown statuses {unknown}")
        return value


class DeliverRawIn(ControlModel):
    account_sid: str | None = None
    destination: str | None = Field(None, description="default: every sink of the account")
    body: Any = Field(description="sent as is if a string, else JSON-encoded")
    sign: bool = True
    auth_token: str | None = Field(
        None, description="sign with this token (HMAC-SHA1), not the account's token or key"
    )
    signature_override: str | None = None
    signed_body: str | None = Field(None, description="hash and sign this body but send `body`")
    include_body_sha256: bool = True
    content_type: str = JSON_CONTENT_TYPE
    headers: dict[str, str] = Field(default_factory=dict)


class FaultIn(ControlModel):
    method: str | None = None
    path_regex: str
    status: int | None = Field(None, ge=400, le=599)
    count: int | None = Field(None, ge=0, description="null: fault every matching request")
    after: int = Field(0, ge=0, description="let this many matching requests pass first")
    retry_after: float | None = Field(None, ge=0)
    delay_ms: int | None = Field(None, ge=0, le=120_000)
    set_cookie: str | None = Field(
        None, max_length=4096, description="add this Set-Cookie header to matching answers"
    )

    @field_validator("path_regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


class SendRejectionIn(ControlModel):
    to: str = Field(pattern=E164)
    code: int = Field(ge=10000, le=99999, description="Twilio error code, e.g. 21610")
    message: str | None = Field(None, description="default: Twilio's message for the code")


class ConfigPatch(ControlModel):
    media_base_url: str | None = None
    media_size_bytes: int | None = Field(None, ge=1, le=256 * 1024 * 1024)
    media_chunk_delay_ms: int | None = Field(None, ge=0, le=10_000)
    media_content_length: bool | None = None
    early_status_events: bool | None = None
    outbound_statuses: list[str] | None = None
    outbound_status_delay_ms: int | None = Field(None, ge=0)
    retry_backoff_ms: list[int] | None = None
    delivery_timeout_ms: int | None = Field(None, ge=1)
    max_page_size: int | None = Field(None, ge=1, le=1000)

    @field_validator("outbound_statuses")
    @classmethod
    def _known_statuses(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_statuses(value)


class DrainIn(ControlModel):
    timeout_s: float = Field(10.0, ge=0, le=300)


# Health, configuration, reset
