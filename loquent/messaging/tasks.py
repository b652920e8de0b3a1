"""Background work for messaging: fetching the body of a message captured without one.

``enrich_body`` runs one claimed job (see ``loquent.jobs.queue``) from start to finish:

1. read the message and its organization (a read transaction: nothing is locked while we
   talk to Twilio, which matters on SQLite where a write transaction blocks every writer);
2. ask Twilio for the message, and its media list when it has media;
3. in one write transaction, store the answer (or the retry/failure decision) and commit
   through ``realtime.log.commit`` so the SSE streams wake.

How each answer is treated (SPEC §4):

- 200 → body stored, ``ready`` (or ``empty``), ``messaging.message.status`` published.
- 429 → wait Retry-After (or back off); the attempt is not counted against the message,
  but a long run of 429s still ends in ``failed`` (``RATE_LIMIT_HARD_CAP``).
- 5xx, timeouts, connection errors → back off with jitter; ``failed`` after
  ``enrich_max_attempts``.
- 404 → Twilio can say this briefly right after a message is created: a few retries
  (``enrich_not_found_attempts``), then ``failed``.
- 401/403 → the organization's credentials are marked invalid (shown in settings), the
  message goes back to pending uncounted, and claims skip the org until it reconnects.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.typing import FilteringBoundLogger

from loquent.config import Settings
from loquent.db import Database
from loquent.jobs.backoff import backoff_delay, retry_after_delay
from loquent.jobs.queue import Claim
from loquent.messaging import service
from loquent.messaging.models import Message
from loquent.messaging.schemas import FetchedMedia, FetchedMessage
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.realtime.log import commit
from loquent.realtime.notifier import Notifier
from loquent.twilio.client import (
    TwilioAuthError,
    TwilioBadRequest,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
    parse_twilio_date,
)

logger = structlog.get_logger(__name__)

T = TypeVar("T")

# 429s do not use up a message's attempts (being throttled says nothing about the message),
# but an account that is throttled without end must not keep a job alive forever.
RATE_LIMIT_HARD_CAP = 50


class EnrichOutcome(enum.StrEnum):
    READY = "ready"
    EMPTY = "empty"
    RETRY = "retry"  # scheduled for a later attempt
    FAILED = "failed"
    PAUSED = "paused"  # the organization cannot call Twilio (credentials rejected or gone)
    SKIPPED = "skipped"  # no longer pending, or our lease was taken over


@dataclass
class EnrichContext:
    """What a job needs from the process it runs in; built once by the worker."""

    db: Database
    notifier: Notifier | None
    settings: Settings
    box: SecretBox
    http: httpx.AsyncClient
    # Consecutive 429s per message id. In memory on purpose: the row has no column for it,
    # and losing the count on a restart only delays the hard cap, it never loops hot.
    rate_limited: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _Job:
    """What the read transaction found: enough to call Twilio without holding a session."""

    message_sid: str | None
    account_sid: str | None
    token_ciphertext: str | None  # to tell later whether the org has reconnected since


async def enrich_body(ctx: EnrichContext, claim: Claim) -> EnrichOutcome:
    log = logger.bind(
        message_id=claim.message_id, org_id=claim.organization_id, attempt=claim.attempts
    )
    settings = ctx.settings
    job = await _load(ctx, claim)
    if job is None:
        log.info("enrich.skipped", reason="no longer pending")
        return EnrichOutcome.SKIPPED
    if not job.message_sid:  # pragma: no cover - every captured message has its SID
        return await _fail(ctx, claim, log, "message has no Twilio SID")
    if not job.account_sid or not job.token_ciphertext:
        # Disconnected since the claim; claims skip the org until it connects again.
        log.info("enrich.paused", reason="Twilio is not connected")
        return await _pause(ctx, claim, "Twilio is not connected", flag_token=None)
    try:
        auth_token = ctx.box.decrypt(job.token_ciphertext)
    except ValueError as exc:  # the secret key changed without keeping the old one
        log.warning("enrich.paused", reason=str(exc))
        return await _pause(ctx, claim, str(exc), flag_token=job.token_ciphertext)

    # Crashed attempts are counted by the claim too; this keeps a job that takes its worker
    # down every time from coming back forever.
    give_up_after = max(settings.enrich_max_attempts, settings.enrich_not_found_attempts)
    if claim.attempts > give_up_after:
        return await _fail(ctx, claim, log, f"gave up after {claim.attempts - 1} attempts")

    client = TwilioClient(
        settings.twilio_api_base,
        job.account_sid,
        auth_token,
        timeout=settings.twilio_timeout_seconds,
        http=ctx.http,
    )
    try:
        fetched = await fetch_message(client, job.message_sid)
    except TwilioRateLimited as exc:
        return await _rate_limited(ctx, claim, log, exc)
    except TwilioAuthError as exc:
        reason = f"Twilio rejected the credentials: {exc}"
        log.warning("enrich.credentials_rejected", status=exc.status, code=exc.code)
        return await _pause(ctx, claim, reason, flag_token=job.token_ciphertext)
    except TwilioNotFound as exc:
        return await _retry_or_fail(ctx, claim, log, exc, limit=settings.enrich_not_found_attempts)
    except TwilioBadRequest as exc:  # asking again will get the same answer
        return await _fail(ctx, claim, log, f"Twilio refused the request: {exc}")
    except TwilioError as exc:  # 5xx, timeouts, connection errors, garbled answers
        return await _retry_or_fail(ctx, claim, log, exc, limit=settings.enrich_max_attempts)
    ctx.rate_limited.pop(claim.message_id, None)

    async def store(session: AsyncSession) -> bool:
        return await service.apply_fetched_message(session, claim.message_id, fetched)

    if not await _write(ctx, claim, store):
        log.info("enrich.skipped", reason="lease lost before storing")
        return EnrichOutcome.SKIPPED
    outcome = EnrichOutcome.READY if fetched.body else EnrichOutcome.EMPTY
    log.info("enrich.done", body_state=str(outcome), num_media=fetched.num_media)
    return outcome


async def fetch_message(client: TwilioClient, sid: str) -> FetchedMessage:
    """The message as Twilio's REST API has it, with its media list when it has media."""
    payload = await client.fetch_message(sid)
    media = await client.list_media(sid) if _int(payload.get("num_media")) > 0 else []
    return to_fetched_message(payload, media)


def to_fetched_message(
    payload: dict[str, Any], media: list[dict[str, Any]] | None = None
) -> FetchedMessage:
    """Twilio's JSON (strings everywhere, RFC 2822 dates) reduced to what the inbox stores."""
    status = payload.get("status")
    error_code = payload.get("error_code")
    body = payload.get("body")
    return FetchedMessage(
        body=body if isinstance(body, str) else "",
        status=status.lower() if isinstance(status, str) and status else None,
        error_code=str(error_code) if error_code not in (None, "") else None,
        num_media=_int(payload.get("num_media")),
        created_at=parse_twilio_date(payload.get("date_created")),
        media=[
            FetchedMedia(sid=str(item["sid"]), content_type=str(item.get("content_type") or ""))
            for item in media or []
            if item.get("sid")
        ],
    )


def _int(value: object) -> int:
    try:
        return max(0, int(str(value))) if value not in (None, "") else 0
    except ValueError:
        return 0


# --- reading --------------------------------------------------------------------------------


async def _load(ctx: EnrichContext, claim: Claim) -> _Job | None:
    """The job's inputs, or None when there is nothing to do any more (idempotency guard)."""
    async with ctx.db.reader() as session:
        row = (
            await session.execute(
                select(
                    Message.external_id,
                    Message.body_state,
                    Message.body_attempts,
                    Organization.twilio_account_sid,
                    Organization.twilio_auth_token,
                )
                .join(Organization, Organization.id == Message.organization_id)
                .where(Message.id == claim.message_id)
            )
        ).one_or_none()
    if row is None or not _still_ours(row.body_state, row.body_attempts, claim):
        return None
    return _Job(
        message_sid=row.external_id,
        account_sid=row.twilio_account_sid,
        token_ciphertext=row.twilio_auth_token,
    )


def _still_ours(body_state: str, body_attempts: int, claim: Claim) -> bool:
    # body_attempts doubles as a fencing token: had our lease expired and another worker
    # claimed the row, the count would have moved on.
    return body_state == "pending" and body_attempts == claim.attempts


# --- writing --------------------------------------------------------------------------------


async def _write(
    ctx: EnrichContext,
    claim: Claim,
    action: Callable[[AsyncSession], Awaitable[T]],
    *,
    always: Callable[[AsyncSession], Awaitable[None]] | None = None,
) -> T | None:
    """Run ``action`` in a write transaction if the lease is still ours, and commit.

    ``always`` runs whether or not it is (facts about the organization, not the message).
    """
    async with ctx.db.session() as session:
        if always is not None:
            await always(session)
        row = (
            await session.execute(
                select(Message.body_state, Message.body_attempts)
                .where(Message.id == claim.message_id)
                .with_for_update()
            )
        ).one_or_none()
        result = None
        if row is not None and _still_ours(row.body_state, row.body_attempts, claim):
            result = await action(session)
        await commit(session, ctx.notifier)
        return result


async def _retry(
    ctx: EnrichContext, claim: Claim, *, delay: float, reason: str, count_attempt: bool = True
) -> bool:
    async def schedule(session: AsyncSession) -> bool:
        await service.schedule_body_retry(
            session,
            claim.message_id,
            delay=timedelta(seconds=delay),
            reason=reason,
            count_attempt=count_attempt,
        )
        return True

    return bool(await _write(ctx, claim, schedule))


async def _fail(
    ctx: EnrichContext, claim: Claim, log: FilteringBoundLogger, reason: str
) -> EnrichOutcome:
    ctx.rate_limited.pop(claim.message_id, None)

    async def fail(session: AsyncSession) -> bool:
        return await service.mark_body_failed(session, claim.message_id, reason)

    if not await _write(ctx, claim, fail):
        return EnrichOutcome.SKIPPED
    log.warning("enrich.failed", reason=reason)
    return EnrichOutcome.FAILED


async def _retry_or_fail(
    ctx: EnrichContext,
    claim: Claim,
    log: FilteringBoundLogger,
    exc: TwilioError,
    *,
    limit: int,
) -> EnrichOutcome:
    ctx.rate_limited.pop(claim.message_id, None)
    if claim.attempts >= limit:
        return await _fail(ctx, claim, log, f"{exc} after {claim.attempts} attempts")
    settings = ctx.settings
    delay = backoff_delay(
        claim.attempts,
        base=settings.enrich_backoff_base_seconds,
        cap=settings.enrich_backoff_max_seconds,
    )
    if not await _retry(ctx, claim, delay=delay, reason=str(exc)):
        return EnrichOutcome.SKIPPED
    log.info("enrich.retry", error=str(exc), status=exc.status, retry_in=round(delay, 3))
    return EnrichOutcome.RETRY


async def _rate_limited(
    ctx: EnrichContext,
    claim: Claim,
    log: FilteringBoundLogger,
    exc: TwilioRateLimited,
) -> EnrichOutcome:
    streak = ctx.rate_limited.get(claim.message_id, 0) + 1
    if streak >= RATE_LIMIT_HARD_CAP:
        return await _fail(ctx, claim, log, f"still rate limited after {streak} tries: {exc}")
    ctx.rate_limited[claim.message_id] = streak
    settings = ctx.settings
    delay = retry_after_delay(
        exc.retry_after,
        streak,
        settings.enrich_backoff_base_seconds,
        settings.enrich_backoff_max_seconds,
    )
    if not await _retry(ctx, claim, delay=delay, reason=str(exc), count_attempt=False):
        return EnrichOutcome.SKIPPED
    log.info("enrich.rate_limited", retry_after=exc.retry_after, retry_in=round(delay, 3))
    return EnrichOutcome.RETRY


async def _pause(
    ctx: EnrichContext, claim: Claim, reason: str, *, flag_token: str | None
) -> EnrichOutcome:
    """Hand the message back uncounted and due at once, so it is fetched as soon as the
    organization can call Twilio again; claims skip the org until then.

    With ``flag_token`` (the stored token we used), the org's credentials are also marked
    invalid, which surfaces in settings. Only if that token is still the stored one: an org
    that reconnected while our request was in flight keeps its fresh credentials.
    """
    ctx.rate_limited.pop(claim.message_id, None)

    async def flag_org(session: AsyncSession) -> None:
        if flag_token is None:
            return
        current = await session.scalar(
            select(Organization.twilio_auth_token).where(Organization.id == claim.organization_id)
        )
        if current == flag_token:
            await orgs.mark_credentials_invalid(session, claim.organization_id, reason[:500])

    async def release(session: AsyncSession) -> None:
        await service.schedule_body_retry(
            session, claim.message_id, delay=timedelta(0), reason=reason, count_attempt=False
        )

    await _write(ctx, claim, release, always=flag_org)
    return EnrichOutcome.PAUSED
