"""POST /twilio/events — the Event Streams webhook sink.

Order of checks: parse (400) → one account per delivery (400) → known account (403) →
signature (403) → record each event in its own transaction. Twilio retries 429/5xx for
hours and drops other 4xx, so 2xx is only answered once every event is durably recorded
(or deliberately ignored), and 503 when storage is unavailable.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from fastapi import APIRouter, Depends, Request
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError

from loquent.context import AppContext, get_context
from loquent.db import is_storage_outage, utcnow
from loquent.errors import ApiError
from loquent.messaging import service as messaging
from loquent.messaging.schemas import InboundText, StatusReport
from loquent.metrics import EVENTS_RECEIVED, WEBHOOK_REJECTED, WEBHOOK_SECONDS
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.realtime.log import commit, discard_pending_wakeups
from loquent.twilio import payloads, signature
from loquent.twilio.payloads import CloudEvent, PayloadError

router = APIRouter()
log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 5 * 1024 * 1024
_TRANSIENT_SQLSTATES = {"40001", "40P01"}  # serialization failure, deadlock: just retry


@router.post(
    "/twilio/events",
    summary="Twilio Event Streams webhook sink",
    responses={400: {"description": "malformed delivery"}, 403: {"description": "not signed"}},
)
async def receive_events(
    request: Request, ctx: AppContext = Depends(get_context)
) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        return await _receive(request, ctx)
    finally:
        WEBHOOK_SECONDS.observe(time.perf_counter() - started)


async def _receive(request: Request, ctx: AppContext) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise _reject(413, "payload_too_large", "delivery is larger than 5 MiB")
    try:
        raw_text = raw.decode("utf-8")
        events = payloads.parse_delivery(raw)
    except UnicodeDecodeError:
        raise _reject(400, "invalid_payload", "body must be UTF-8 JSON") from None
    except PayloadError as exc:
        raise _reject(400, "invalid_payload", str(exc)) from None

    accounts = {event.account_sid for event in events}
    if len(accounts) != 1:
        raise _reject(
            400, "mixed_accounts", "all events of one delivery must name the same account"
        )
    account_sid = accounts.pop()

    async with ctx.db.reader() as session:
        org = await orgs.find_org_by_account_sid(session, account_sid)
    if org is None:
        log.info("twilio_events.unknown_account", account_sid=account_sid)
        raise _reject(403, "unknown_account", "no organization is connected to this account")

    url = signature.public_request_url(ctx.settings.public_url, request.url.path, request.url.query)
    valid = signature.verify(
        url,
        raw_text,
        request.headers.get("x-twilio-signature"),
        auth_token=_decrypt(ctx, org.twilio_auth_token),
        shared_key=_decrypt(ctx, org.twilio_webhook_shared_key),
        settings_header=request.headers.get("x-twilio-webhooks-signature-settings"),
    )
    if not valid:
        await _count_signature_failure(ctx, org.id)
        log.warning("twilio_events.bad_signature", org_id=org.id)
        raise _reject(403, "invalid_signature", "the request signature is missing or not valid")

    results = [await _record_with_retry(ctx, org, event) for event in events]
    return {"received": len(events), "results": results}


async def _record_with_retry(ctx: AppContext, org: Organization, event: CloudEvent) -> str:
    for attempt in range(3):
        try:
            outcome = await _record(ctx, org, event)
            EVENTS_RECEIVED.labels(type=event.type.rsplit(".", 1)[-1], outcome=outcome).inc()
            return outcome
        except DBAPIError as exc:
            sqlstate = getattr(getattr(exc, "orig", None), "sqlstate", None)
            if sqlstate in _TRANSIENT_SQLSTATES and attempt < 2:
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            if is_storage_outage(exc):
                raise _reject(
                    503,
                    "storage_unavailable",
                    "storage is unavailable, retry later",
                    headers={"Retry-After": "5"},
                ) from None
            raise
        except (OSError, TimeoutError) as exc:
            raise _reject(
                503,
                "storage_unavailable",
                "storage is unavailable, retry later",
                headers={"Retry-After": "5"},
            ) from exc
    raise AssertionError("unreachable")


async def _record(ctx: AppContext, org: Organization, event: CloudEvent) -> str:
    if event.type == payloads.SINK_TEST_TYPE:
        async with ctx.db.session() as session:
            await session.execute(
                update(Organization)
                .where(Organization.id == org.id)
                .values(sink_verified_at=utcnow())
            )
            await session.commit()
        return "sink_verified"
    if not payloads.is_handled(event.type):
        return "ignored"

    data = payloads.message_data(event)
    async with ctx.db.session() as session:
        try:
            if event.type == payloads.INBOUND_TYPE:
                outcome = await messaging.record_inbound_text(
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
                outcome = await messaging.record_status_report(
                    session,
                    org.id,
                    StatusReport(
                        message_sid=data.message_sid,
                        status=payloads.STATUS_TYPES[event.type],
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


async def _count_signature_failure(ctx: AppContext, org_id: int) -> None:
    try:
        async with ctx.db.session() as session:
            await orgs.record_signature_failure(session, org_id)
            await session.commit()
    except Exception as exc:  # the 403 matters more than the counter
        log.warning("twilio_events.count_failure_failed", error=type(exc).__name__)


def _decrypt(ctx: AppContext, ciphertext: str | None) -> str | None:
    if not ciphertext:
        return None
    try:
        return ctx.box.decrypt(ciphertext)
    except ValueError:
        log.error("twilio_events.undecryptable_credential")
        return None


def _reject(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> ApiError:
    WEBHOOK_REJECTED.labels(reason=code).inc()
    return ApiError(status, code, message, headers=headers)
