"""What every Twilio webhook endpoint does around its own parsing: read the body within a cap,
find the organization by account, check the signature, record, and map storage trouble.

Event Streams (``events_api``) and the classic callbacks (``webhooks_api``) share it, so both
answer alike: 413 for an oversized body before it is buffered, 400 for what can never become
valid, one 403 for "unknown account" and "bad signature" (an outsider must not learn which
accounts are connected), 503 with ``Retry-After`` when storage cannot take the write.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import Request

from loquent.context import AppContext
from loquent.db import is_storage_outage, retry_conflicts
from loquent.errors import ApiError
from loquent.messaging import capture
from loquent.messaging.schemas import InboundText, StatusReport
from loquent.metrics import WEBHOOK_REJECTED
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.realtime.log import commit, discard_pending_wakeups
from loquent.twilio import signature
from loquent.twilio.payloads import MessageEventData

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024
RETRY_AFTER_SECONDS = "5"
_FORBIDDEN_MESSAGE = "the request signature is missing or not valid"
# (database, org id) → the clock minute of the last counted failure, so that a flood of
# forgeries costs one database write per minute per organization in each process.
_counted_minute: dict[tuple[str, int], int] = {}

# (auth token, shared key, settings header) → valid?
Verifier = Callable[[str | None, str | None, str | None], bool]


def reject(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> ApiError:
    WEBHOOK_REJECTED.labels(reason=code).inc()
    return ApiError(status, code, message, headers=headers)


def storage_unavailable() -> ApiError:
    return reject(
        503,
        "storage_unavailable",
        "storage is unavailable, retry later",
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


@asynccontextmanager
async def outage_as_503() -> AsyncIterator[None]:
    try:
        yield
    except ApiError:
        raise
    except Exception as exc:
        if not is_storage_outage(exc):
            raise
        log.warning("twilio_webhook.storage_unavailable", error=type(exc).__name__)
        raise storage_unavailable() from None


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The raw body, refused with 413 as soon as it is known to exceed ``limit``: by its
    Content-Length before reading anything, or, chunked, at the first chunk past the cap."""
    too_large = reject(
        413,
        "payload_too_large",
        f"the body is larger than {limit // (1024 * 1024)} MiB",
        headers={"Connection": "close"},
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 18:
            raise reject(400, "invalid_request", "Content-Length is not a number")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


async def authenticate(
    ctx: AppContext, request: Request, account_sid: str, verifier: Verifier
) -> Organization:
    """The organization connected to ``account_sid`` whose credentials verify the request."""
    async with outage_as_503(), ctx.db.reader() as session:
        org = await orgs.find_org_by_account_sid(session, account_sid)
    if org is None:
        log.info("twilio_webhook.unknown_account", account_sid=account_sid)
        raise reject(403, "invalid_signature", _FORBIDDEN_MESSAGE)
    given = request.headers.get("x-twilio-signature")
    valid = verifier(
        _decrypt(ctx, org.twilio_auth_token),
        _decrypt(ctx, org.twilio_webhook_shared_key),
        request.headers.get("x-twilio-webhooks-signature-settings"),
    )
    if not valid:
        log.warning("twilio_webhook.bad_signature", org_id=org.id)
        if signature.looks_like_signature(given):
            await _count_signature_failure(ctx, org.id)
        raise reject(403, "invalid_signature", _FORBIDDEN_MESSAGE)
    return org


def public_url(ctx: AppContext, request: Request) -> str:
    return signature.public_request_url(
        ctx.settings.public_url, request.url.path, request.url.query
    )


async def record_message(
    ctx: AppContext,
    org: Organization,
    data: MessageEventData,
    *,
    status: str,
    inbound: bool,
) -> str:
    """Record one validated message event in its own transaction (503 on outage)."""

    async def once() -> str:
        async with ctx.db.session() as session:
            try:
                if inbound:
                    outcome = await capture.record_inbound_text(
                        session,
                        org.id,
                        InboundText(
                            message_sid=data.message_sid,
                            from_address=data.from_address,
                            to_address=data.to_address,
                            body=data.body,
                            occurred_at=data.occurred_at,
                            num_media=data.num_media or 0,
                        ),
                    )
                else:
                    outcome = await capture.record_status_report(
                        session,
                        org.id,
                        StatusReport(
                            message_sid=data.message_sid,
                            status=status,
                            from_address=data.from_address,
                            to_address=data.to_address,
                            occurred_at=data.occurred_at,
                            error_code=data.error_code,
                            body=data.body,
                            num_media=data.num_media,
                        ),
                    )
                await commit(session, ctx.notifier)
            except BaseException:
                discard_pending_wakeups(session)
                raise
        return str(outcome)

    recorded: str = await write(once)
    return recorded


async def write(work: Callable[[], Any]) -> Any:
    """One write transaction: conflicts retried in-process, outages answered 503."""
    async with outage_as_503():
        return await retry_conflicts(work)


async def _count_signature_failure(ctx: AppContext, org_id: int) -> None:
    minute, key = int(time.time() // 60), (ctx.db.url, org_id)
    if _counted_minute.get(key) == minute:
        return
    _counted_minute[key] = minute
    if len(_counted_minute) > 10_000:
        _counted_minute.clear()
    try:
        async with ctx.db.session() as session:
            await orgs.record_signature_failure(session, org_id)
            await session.commit()
    except Exception as exc:  # the 403 matters more than the counter
        log.warning("twilio_webhook.count_failure_failed", error=type(exc).__name__)


def _decrypt(ctx: AppContext, ciphertext: str | None) -> str | None:
    if not ciphertext:
        return None
    try:
        return ctx.box.decrypt(ciphertext)
    except ValueError:
        log.error("twilio_webhook.undecryptable_credential")
        return None
