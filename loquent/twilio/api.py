"""The Twilio account lifecycle over HTTP: connect, numbers, event sink (owner only).

Thin: each route calls one flow in ``twilio.account`` / ``numbers`` / ``sink`` and turns a
``LifecycleError`` into the API's error shape. Reading the account's numbers is allowed to
every member (it changes nothing); everything that changes the connection, the lines or
the account at Twilio is for owners.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel, Field

from loquent.context import Ctx
from loquent.errors import ApiError, error_responses
from loquent.openapi import NO_SPACE_OR_CONTROL
from loquent.orgs.api import mask_account_sid
from loquent.orgs.auth import CurrentPrincipal, OwnerPrincipal
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
    # Documented here, checked in ``account.check_shape`` (422 invalid_account_sid,
    # invalid_auth_token); the length caps keep absurd input away from it.
    account_sid: str = Field(
        max_length=64,
        description="AC followed by 32 hexadecimal digits",
        json_schema_extra={"pattern": account.ACCOUNT_SID.pattern},
    )
    auth_token: str = Field(
        max_length=256,
        json_schema_extra={
            "minLength": 1,
            "maxLength": account.MAX_AUTH_TOKEN_CHARS,
            "pattern": NO_SPACE_OR_CONTROL,
        },
    )


class ConnectOut(BaseModel):
    account_sid: str = Field(description="masked: AC••••1234")
    connected: bool


class NotRemovedOut(BaseModel):
    sid: str
    reason: str


class DisconnectOut(BaseModel):
    connected: bool
    removed: list[str] = Field(description="SIDs of the sink and subscription deleted at Twilio")
    not_removed: list[NotRemovedOut]


class AccountNumberOut(BaseModel):
    sid: str
    phone_number: str
    friendly_name: str
    imported: bool


class NumbersOut(BaseModel):
    items: list[AccountNumberOut]


class SyncNumbersIn(BaseModel):
    numbers: list[str] | None = Field(
        default=None,
        max_length=numbers.MAX_NUMBERS_PER_REQUEST,
        description="E.164 numbers of the account to import; omitted: all of them",
    )


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


# Everything here may call Twilio: unreachable or failing (502), rate limited (503).
_TWILIO: dict[str, str] = {
    "e502": "Twilio unreachable or failing",
    "e503": "Twilio rate limited the request, or storage unavailable (Retry-After)",
}
_NOT_CONNECTED = "Twilio is not connected"


@router.post(
    "/connect",
    responses=error_responses(
        400,
        401,
        403,
        e409="the account is connected to another organization",
        e422="malformed SID or token, or Twilio rejected the credentials",
        **_TWILIO,
    ),
)
async def connect(body: ConnectIn, principal: OwnerPrincipal, ctx: Ctx) -> ConnectOut:
    """Check the credentials with Twilio, then store them (the token encrypted)."""
    try:
        result = await account.connect(
            ctx, principal.organization_id, body.account_sid, body.auth_token
        )
    except LifecycleError as exc:
        raise api_error(exc) from None
    return ConnectOut(account_sid=mask_account_sid(result.account_sid) or "", connected=True)


@router.post("/disconnect", responses=error_responses(401, 403, 503))
async def disconnect(principal: OwnerPrincipal, ctx: Ctx) -> DisconnectOut:
    """Forget the credentials and remove the event sink this organization created."""
    result = await account.disconnect(ctx, principal.organization_id)
    return DisconnectOut(
        connected=False,
        removed=result.removed,
        not_removed=[NotRemovedOut(**entry) for entry in result.not_removed],
    )


@router.get(
    "/numbers",
    responses=error_responses(
        401, e409=_NOT_CONNECTED, e422="Twilio rejected the stored credentials", **_TWILIO
    ),
)
async def list_numbers(principal: CurrentPrincipal, ctx: Ctx) -> NumbersOut:
    """The account's numbers at Twilio, each marked if it is already an organization line."""
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


@router.post(
    "/sync-numbers",
    responses=error_responses(
        400,
        401,
        403,
        e409=_NOT_CONNECTED,
        e422="not an E.164 number, not on the account, or credentials rejected",
        **_TWILIO,
    ),
)
async def sync_numbers(
    principal: OwnerPrincipal, ctx: Ctx, body: SyncNumbersIn | None = None
) -> SyncNumbersOut:
    """Import the account's numbers (all, or those given) as organization lines."""
    try:
        result = await numbers.sync_numbers(
            ctx, principal.organization_id, body.numbers if body else None
        )
    except LifecycleError as exc:
        raise api_error(exc) from None
    return SyncNumbersOut(imported=result.imported, existing=result.existing)


@router.post(
    "/setup-event-sink",
    responses=error_responses(
        401, 403, e409=_NOT_CONNECTED, e422="Twilio rejected the stored credentials", **_TWILIO
    ),
)
async def setup_event_sink(principal: OwnerPrincipal, ctx: Ctx) -> SinkSetupOut:
    """Create (or reuse) the Event Streams sink and subscription; request the test event."""
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


@router.post(
    "/remove-event-sink",
    responses=error_responses(
        401, 403, e409=_NOT_CONNECTED, e422="Twilio rejected the stored credentials", **_TWILIO
    ),
)
async def remove_event_sink(principal: OwnerPrincipal, ctx: Ctx) -> SinkRemovalOut:
    """Delete at Twilio the sink and subscription this organization created."""
    try:
        result = await sink.remove(ctx, principal.organization_id)
    except LifecycleError as exc:
        raise api_error(exc) from None
    return SinkRemovalOut(removed=result.removed, left_alone=result.left_alone)
