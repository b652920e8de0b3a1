"""The Twilio account lifecycle over HTTP: connect, numbers, event sink (owner only).

Thin: each route calls one flow in ``twilio.account`` / ``numbers`` / ``sink`` and turns a
``LifecycleError`` into the API's error shape. Reading the account's numbers is allowed to
every member (it changes nothing); everything that changes the connection, the lines or
the account at Twilio is for owners.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from loquent.context import AppContext, get_context
from loquent.errors import ApiError
from loquent.orgs.api import mask_account_sid
from loquent.orgs.auth import require_owner, require_principal
from loquent.orgs.service import Principal
from loquent.twilio import account, numbers, sink
from loquent.twilio.account import LifecycleError, Problem

router = APIRouter(prefix="/api/twilio", tags=["twilio account"])

STATUS: dict[Problem, int] = {
    Problem.INVALID_ACCOUNT_SID: 422,
    Problem.INVALID_AUTH_TOKEN: 422,
    Problem.REJECTED_CREDENTIALS: 422,
    Problem.ACCOUNT_INACTIVE: 422,
    Problem.ACCOUNT_IN_USE: 409,
    Problem.NOT_CONNECTED: 409,
    Problem.UNREACHABLE: 502,
    Problem.RATE_LIMITED: 503,
    Problem.TWILIO_ERROR: 502,
    Problem.NUMBER_NOT_ON_ACCOUNT: 422,
    Problem.INVALID_REQUEST: 422,
}
DEFAULT_RETRY_AFTER_SECONDS = 5


def api_error(exc: LifecycleError) -> ApiError:
    headers = None
    if exc.problem is Problem.RATE_LIMITED:
        wait = exc.retry_after if exc.retry_after is not None else DEFAULT_RETRY_AFTER_SECONDS
        headers = {"Retry-After": str(max(1, round(wait)))}
    return ApiError(STATUS[exc.problem], exc.problem.value, exc.message, headers=headers)


class ConnectIn(BaseModel):
    account_sid: str = Field(max_length=64)
    auth_token: str = Field(max_length=256)


class ConnectOut(BaseModel):
    account_sid: str  # masked
    connected: bool


class DisconnectOut(BaseModel):
    connected: bool
    removed: list[str]
    not_removed: list[dict[str, str]]


class AccountNumberOut(BaseModel):
    sid: str
    phone_number: str
    friendly_name: str
    imported: bool


class NumbersOut(BaseModel):
    items: list[AccountNumberOut]


class SyncNumbersIn(BaseModel):
    numbers: list[str] | None = Field(default=None, max_length=numbers.MAX_NUMBERS_PER_REQUEST)


class SyncNumbersOut(BaseModel):
    imported: int
    existing: int


class SinkSetupOut(BaseModel):
    sink_sid: str
    subscription_sid: str
    reused: bool
    test_requested: bool
    destination: str


class SinkRemovalOut(BaseModel):
    removed: list[str]
    left_alone: list[str]


ERRORS: dict[int | str, dict[str, Any]] = {
    403: {"description": "not an owner"},
    409: {"description": "not connected, or the account is connected elsewhere"},
    422: {"description": "invalid input, or Twilio rejected the credentials"},
    502: {"description": "Twilio unreachable or failing"},
    503: {"description": "Twilio rate-limited the request (Retry-After)"},
}


@router.post("/connect", response_model=ConnectOut, responses=ERRORS)
async def connect(
    body: ConnectIn,
    principal: Principal = Depends(require_owner),
    ctx: AppContext = Depends(get_context),
) -> ConnectOut:
    try:
        result = await account.connect(
            ctx, principal.organization_id, body.account_sid, body.auth_token
        )
    except LifecycleError as exc:
        raise api_error(exc) from None
    return ConnectOut(account_sid=mask_account_sid(result.account_sid) or "", connected=True)


@router.post("/disconnect", response_model=DisconnectOut, responses=ERRORS)
async def disconnect(
    principal: Principal = Depends(require_owner), ctx: AppContext = Depends(get_context)
) -> DisconnectOut:
    result = await account.disconnect(ctx, principal.organization_id)
    return DisconnectOut(connected=False, removed=result.removed, not_removed=result.not_removed)


@router.get("/numbers", response_model=NumbersOut, responses=ERRORS)
async def list_numbers(
    principal: Principal = Depends(require_principal), ctx: AppContext = Depends(get_context)
) -> NumbersOut:
    try:
        items = await numbers.list_numbers(ctx, principal.organization_id)
    except LifecycleError as exc:
        raise api_error(exc) from None
    return NumbersOut(
        items=[
            AccountNumberOut(
                sid=n.sid,
                phone_number=n.phone_number,
                friendly_name=n.friendly_name,
                imported=n.imported,
            )
            for n in items
        ]
    )


@router.post("/sync-numbers", response_model=SyncNumbersOut, responses=ERRORS)
async def sync_numbers(
    body: SyncNumbersIn | None = None,
    principal: Principal = Depends(require_owner),
    ctx: AppContext = Depends(get_context),
) -> SyncNumbersOut:
    try:
        result = await numbers.sync_numbers(
            ctx, principal.organization_id, body.numbers if body else None
        )
    except LifecycleError as exc:
        raise api_error(exc) from None
    return SyncNumbersOut(imported=result.imported, existing=result.existing)


@router.post("/setup-event-sink", response_model=SinkSetupOut, responses=ERRORS)
async def setup_event_sink(
    principal: Principal = Depends(require_owner), ctx: AppContext = Depends(get_context)
) -> SinkSetupOut:
    try:
        result = await sink.setup(ctx, principal.organization_id)
    except LifecycleError as exc:
        raise api_error(exc) from None
    return SinkSetupOut(
        sink_sid=result.sink_sid,
        subscription_sid=result.subscription_sid,
        reused=result.reused,
        test_requested=result.test_requested,
        destination=sink.destination(ctx.settings),
    )


@router.post("/remove-event-sink", response_model=SinkRemovalOut, responses=ERRORS)
async def remove_event_sink(
    principal: Principal = Depends(require_owner), ctx: AppContext = Depends(get_context)
) -> SinkRemovalOut:
    try:
        result = await sink.remove(ctx, principal.organization_id)
    except LifecycleError as exc:
        raise api_error(exc) from None
    return SinkRemovalOut(removed=result.removed, left_alone=result.left_alone)
