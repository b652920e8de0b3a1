"""Connecting and disconnecting an organization's own Twilio account.

Credentials are checked with Twilio (``GET /Accounts/{sid}.json``) before anything is
written, so a typo never replaces working credentials. No database transaction is held
across a Twilio call: the call happens first, the write after, in one short transaction.

Failures are raised as ``LifecycleError`` with a ``Problem``; the HTTP edge decides the
status code. The auth token is passed to ``TwilioClient`` and the ``SecretBox`` only; it is
never logged or returned.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import structlog
from sqlalchemy.exc import IntegrityError

from loquent.context import AppContext
from loquent.db import is_unique_violation
from loquent.messaging import service as messaging
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.realtime.log import commit, wake_jobs_after_commit
from loquent.twilio.client import (
    TwilioAuthError,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
    TwilioUnavailable,
)

log = structlog.get_logger(__name__)

ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
MAX_AUTH_TOKEN_CHARS = 128

T = TypeVar("T")


class Problem(StrEnum):
    """Why a lifecycle action failed; the API turns each into a status and an error code."""

    INVALID_ACCOUNT_SID = "invalid_account_sid"
    INVALID_AUTH_TOKEN = "invalid_auth_token"  # noqa: S105 - an error code
    REJECTED_CREDENTIALS = "twilio_rejected_credentials"
    ACCOUNT_INACTIVE = "twilio_account_inactive"
    ACCOUNT_IN_USE = "twilio_account_in_use"
    NOT_CONNECTED = "twilio_not_connected"
    UNREACHABLE = "twilio_unreachable"
    RATE_LIMITED = "twilio_rate_limited"
    TWILIO_ERROR = "twilio_error"
    NUMBER_NOT_ON_ACCOUNT = "number_not_on_account"
    INVALID_REQUEST = "invalid_request"


class LifecycleError(Exception):
    def __init__(self, problem: Problem, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class Connection:
    account_sid: str
    connected: bool = True


@dataclass(frozen=True)
class Disconnection:
    removed: list[str] = field(default_factory=list)
    # What could not be removed at Twilio: [{"sid": …, "reason": …}]
    not_removed: list[dict[str, str]] = field(default_factory=list)


def twilio_problem(exc: TwilioError, *, connecting: bool = False) -> LifecycleError:
    """One Twilio failure as the lifecycle error the caller should see."""
    if isinstance(exc, TwilioAuthError) or (connecting and isinstance(exc, TwilioNotFound)):
        return LifecycleError(
            Problem.REJECTED_CREDENTIALS,
            f"Twilio rejected the account SID or auth token: {exc.message}",
        )
    if isinstance(exc, TwilioRateLimited):
        return LifecycleError(
            Problem.RATE_LIMITED,
            "Twilio asked us to slow down; try again shortly",
            retry_after=exc.retry_after,
        )
    if isinstance(exc, TwilioUnavailable):
        return LifecycleError(Problem.UNREACHABLE, f"Twilio could not be reached: {exc.message}")
    return LifecycleError(Problem.TWILIO_ERROR, f"Twilio refused the request: {exc.message}")


def rest_client(ctx: AppContext, account_sid: str, auth_token: str) -> TwilioClient:
    return TwilioClient(
        ctx.settings.twilio_api_base,
        account_sid,
        auth_token,
        timeout=ctx.settings.twilio_timeout_seconds,
        http=ctx.http,
    )


def events_client(ctx: AppContext, account_sid: str, auth_token: str) -> TwilioClient:
    return TwilioClient(
        ctx.settings.twilio_events_api_base,
        account_sid,
        auth_token,
        timeout=ctx.settings.twilio_timeout_seconds,
        http=ctx.http,
    )


@dataclass(frozen=True)
class Credentials:
    org_id: int
    account_sid: str
    auth_token: str
    ciphertext: str  # the stored token, to tell whether it changed while we called Twilio


async def stored_credentials(ctx: AppContext, org_id: int) -> Credentials:
    async with ctx.db.reader() as session:
        org = await session.get(Organization, org_id)
        if org is None or not org.twilio_account_sid or not org.twilio_auth_token:
            raise LifecycleError(
                Problem.NOT_CONNECTED, "connect a Twilio account first (account SID + auth token)"
            )
        ciphertext = org.twilio_auth_token
        sid = org.twilio_account_sid
    try:
        token = ctx.box.decrypt(ciphertext)
    except ValueError:
        raise LifecycleError(
            Problem.REJECTED_CREDENTIALS,
            "the stored auth token cannot be decrypted with the configured keys; connect again",
        ) from None
    return Credentials(org_id=org_id, account_sid=sid, auth_token=token, ciphertext=ciphertext)


async def call_with_stored(
    ctx: AppContext, creds: Credentials, call: Callable[[], Awaitable[T]]
) -> T:
    """Run a Twilio call with stored credentials; a 401/403 flags them invalid, as enrichment
    does, unless the organization reconnected meanwhile."""
    try:
        return await call()
    except TwilioAuthError as exc:
        async with ctx.db.session() as session:
            org = await session.get(Organization, creds.org_id)
            if org is not None and org.twilio_auth_token == creds.ciphertext:
                await orgs.mark_credentials_invalid(session, creds.org_id, exc.message[:500])
                await session.commit()
        raise LifecycleError(
            Problem.REJECTED_CREDENTIALS,
            f"Twilio rejected the stored credentials ({exc.message}); connect the account again",
        ) from None
    except TwilioError as exc:
        raise twilio_problem(exc) from None


def check_shape(account_sid: str, auth_token: str) -> None:
    if not ACCOUNT_SID.match(account_sid):
        raise LifecycleError(
            Problem.INVALID_ACCOUNT_SID,
            "account_sid must be 'AC' followed by 32 hexadecimal characters",
        )
    if (
        not auth_token
        or len(auth_token) > MAX_AUTH_TOKEN_CHARS
        or any(ch.isspace() or ord(ch) < 0x20 for ch in auth_token)
    ):
        raise LifecycleError(
            Problem.INVALID_AUTH_TOKEN,
            f"auth_token must be 1 to {MAX_AUTH_TOKEN_CHARS} characters without spaces",
        )


async def connect(ctx: AppContext, org_id: int, account_sid: str, auth_token: str) -> Connection:
    """Validate the credentials with Twilio, then store them (encrypted)."""
    account_sid = account_sid.strip()
    check_shape(account_sid, auth_token)

    client = rest_client(ctx, account_sid, auth_token)
    try:
        account: dict[str, Any] = await client.fetch_account()
    except TwilioError as exc:
        log.info("twilio.connect_refused", status=exc.status, code=exc.code)
        raise twilio_problem(exc, connecting=True) from None
    status = account.get("status")
    if isinstance(status, str) and status not in ("active", ""):
        raise LifecycleError(
            Problem.ACCOUNT_INACTIVE, f"the Twilio account is {status}, not active"
        )

    try:
        async with ctx.db.session() as session:
            holder = await orgs.find_org_by_account_sid(session, account_sid)
            if holder is not None and holder.id != org_id:
                raise LifecycleError(
                    Problem.ACCOUNT_IN_USE,
                    "this Twilio account is already connected to another organization",
                )
            org = await session.get(Organization, org_id)
            if org is None:
                raise LifecycleError(Problem.NOT_CONNECTED, "the organization no longer exists")
            await orgs.set_twilio_credentials(
                session, ctx.box, org, account_sid=account_sid, auth_token=auth_token
            )
            # Paused enrichment may resume now, and bodies that failed under the old
            # credentials get a fresh start.
            await messaging.requeue_failed_bodies(session, org_id)
            wake_jobs_after_commit(session)
            await commit(session, ctx.notifier)
    except IntegrityError as exc:  # another organization connected it a moment ago
        if not is_unique_violation(exc):
            raise
        raise LifecycleError(
            Problem.ACCOUNT_IN_USE,
            "this Twilio account is already connected to another organization",
        ) from None
    log.info("twilio.connected", org_id=org_id)
    return Connection(account_sid=account_sid)


async def disconnect(ctx: AppContext, org_id: int) -> Disconnection:
    """Remove what this organization created at Twilio (best effort), then the credentials.

    A sink or subscription that existed before we set up events is left alone. What could
    not be removed is reported, and the credentials are removed anyway: the owner asked to
    disconnect, and a leftover sink only delivers events that are then refused as unknown.
    """
    from loquent.twilio import sink as sinks  # sink removal lives with sink setup

    async with ctx.db.reader() as session:
        org = await session.get(Organization, org_id)
        connected = bool(org and org.twilio_account_sid and org.twilio_auth_token)
    result = Disconnection()
    if connected:
        try:
            creds = await stored_credentials(ctx, org_id)
        except LifecycleError:
            creds = None
        result = await sinks.remove_created(ctx, org_id, creds)
    async with ctx.db.session() as session:
        org = await session.get(Organization, org_id)
        if org is not None:
            orgs.clear_twilio_credentials(org)
        await session.commit()
    log.info("twilio.disconnected", org_id=org_id, not_removed=len(result.not_removed))
    return result
