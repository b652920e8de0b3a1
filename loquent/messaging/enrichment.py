"""Body enrichment: fetching the body of a message captured without one, and the policy of
when to try again and when to give up.

``enrich_body`` runs one claimed job (see ``loquent.messaging.body_queue``) from start to
finish:

1. read the message and its organization (a read transaction: nothing is locked while we
   talk to Twilio, which matters on SQLite where a write transaction blocks every writer);
2. ask Twilio for the message, and its media list when it has media;
3. in one write transaction, store the answer (or the retry/failure decision) and commit
   through ``realtime.log.commit`` so the SSE streams wake.

How each answer is treated (SPEC §4; the decisions are ``RetryPolicy``'s, pure functions of
the row's bookkeeping and the clock, so they can be checked without waiting for them):

- 200 → body stored, ``ready`` (or ``empty``), ``messaging.message.status`` published.
- 5xx, timeouts, connection errors, 429 → the body stays ``pending``. Retries back off
  exponentially with jitter up to ``enrich_backoff_max_seconds`` (5 min) and then keep
  coming at about that pace; only when ``enrich_deadline_seconds`` (24 h) have passed since
  the body's first attempt does a failure end it as ``failed``. Time, not attempts, because
  an outage is measured in time: Twilio itself retries webhooks for 4 hours, and a give-up
  after eight quick attempts (≈ 2 minutes) lost bodies to any outage longer than that.
  429 waits Retry-After and is not counted as an attempt.
- 404 → Twilio can say this briefly right after a message is created: a few retries
  (``enrich_not_found_attempts`` consecutive 404s), then ``failed``.
- 400-class refusals other than those → ``failed`` at once (asking again gets the same).
- 401/403 → the organization's credentials are marked invalid (shown in settings), the
  message goes back to pending uncounted, and claims skip the org until it reconnects.
- ``failed`` is not forever: ``service.requeue_failed_bodies`` (the settings page's "Retry
  failed", a reconnect, the catch-up) puts an organization's failed bodies back to pending.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from structlog.typing import FilteringBoundLogger

from loquent.config import Settings
from loquent.db import Database, utcnow
from loquent.jobs.backoff import backoff_delay, retry_after_delay
from loquent.messaging import service
from loquent.messaging.body_queue import Claim
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

# Backoff draws from the top half of its window (see backoff_delay): retries stay spread out,
# and a long outage costs about one call per 3.75 min at the default cap rather than one per
# 2.5 min.
JITTER_FLOOR = 0.5


@dataclass(frozen=True)
class Decision:
    """What to do after a failed attempt: try again in ``retry_in`` seconds, or fail."""

    retry_in: float | None
    reason: str

    @property
    def gives_up(self) -> bool:
        return self.retry_in is None


@dataclass(frozen=True)
class RetryPolicy:
    """When to try a body again and when to stop. Pure: no I/O, the clock is an argument."""

    base_seconds: float
    cap_seconds: float
    deadline: timedelta
    not_found_attempts: int
    max_attempts: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            base_seconds=settings.enrich_backoff_base_seconds,
            cap_seconds=settings.enrich_backoff_max_seconds,
            deadline=timedelta(seconds=settings.enrich_deadline_seconds),
            not_found_attempts=settings.enrich_not_found_attempts,
            max_attempts=settings.enrich_max_attempts,
        )

    def exhausted(self, attempts: int) -> bool:
        """The backstop: more claims than any schedule allows (a job crashing its worker)."""
        return attempts > max(self.max_attempts, self.not_found_attempts)

    def after_transient(
        self,
        *,
        attempts: int,
        pending_since: datetime,
        now: datetime,
        error: str,
        rng: random.Random | None = None,
    ) -> Decision:
        """After a 5xx, a timeout, a connection error or a garbled answer."""
        if self._past_deadline(pending_since, now):
            return self._give_up(attempts, pending_since, now, error)
        delay = backoff_delay(
            attempts,
            base=self.base_seconds,
            cap=self.cap_seconds,
            floor_fraction=JITTER_FLOOR,
            rng=rng,
        )
        return Decision(delay, error)

    def after_rate_limit(
        self,
        *,
        retry_after: float | None,
        streak: int,
        attempts: int,
        pending_since: datetime,
        now: datetime,
        error: str,
        rng: random.Random | None = None,
    ) -> Decision:
        """After a 429: Twilio's Retry-After (honoured even above our cap), else backoff on
        the run of 429s."""
        if self._past_deadline(pending_since, now):
            return self._give_up(attempts, pending_since, now, error)
        delay = retry_after_delay(
            retry_after,
            streak,
            self.base_seconds,
            self.cap_seconds,
            floor_fraction=JITTER_FLOOR,
            rng=rng,
        )
        return Decision(delay, error)

    def after_not_found(
        self, *, not_found: int, error: str, rng: random.Random | None = None
    ) -> Decision:
        """After a 404; ``not_found`` counts this one. Permanent after a few in a row."""
        if not_found >= self.not_found_attempts:
            return Decision(None, f"{error} after {not_found} attempts")
        delay = backoff_delay(
            not_found,
            base=self.base_seconds,
            cap=self.cap_seconds,
            floor_fraction=JITTER_FLOOR,
            rng=rng,
        )
        return Decision(delay, error)

    def _past_deadline(self, pending_since: datetime, now: datetime) -> bool:
        return now - pending_since >= self.deadline

    def _give_up(
        self, attempts: int, pending_since: datetime, now: datetime, error: str
    ) -> Decision:
        return Decision(
            None,
            f"gave up: Twilio kept failing for {_duration(now - pending_since)} "
            f"({attempts} attempts; the limit is {_duration(self.deadline)}); "
            f"last error: {error}",
        )


def _duration(span: timedelta) -> str:
    seconds = max(0, int(span.total_seconds()))
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds} s"


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
    # Consecutive 429s per message id, to size the backoff when Twilio sends no Retry-After
    # (429s do not count as attempts). In memory on purpose: losing it on a restart only
    # restarts the backoff; the deadline still bounds the job.
    rate_limited: dict[int, int] = field(default_factory=dict)
    # The same for listing runs, per organization (see bulk_enrichment).
    list_rate_limited: dict[int, int] = field(default_factory=dict)

    @property
    def policy(self) -> RetryPolicy:
        return RetryPolicy.from_settings(self.settings)


@dataclass(frozen=True)
class _Job:
    """What the read transaction found: enough to call Twilio without holding a session."""

    message_sid: str | None
    account_sid: str | None
    token_ciphertext: str | None  # to tell later whether the org has reconnected since
    pending_since: datetime  # the deadline's clock (stamped by the first claim)
    not_found: int  # consecutive 404s before this attempt


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
    # down every time from coming back until the deadline, a lease at a time.
    if ctx.policy.exhausted(claim.attempts):
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
        return await _rate_limited(ctx, claim, job, log, exc)
    except TwilioAuthError as exc:
        reason = f"Twilio rejected the credentials: {exc}"
        log.warning("enrich.credentials_rejected", status=exc.status, code=exc.code)
        return await _pause(ctx, claim, reason, flag_token=job.token_ciphertext)
    except TwilioNotFound as exc:
        not_found = job.not_found + 1
        decision = ctx.policy.after_not_found(not_found=not_found, error=str(exc))
        return await _decided(ctx, claim, log, exc, decision, not_found=not_found)
    except TwilioBadRequest as exc:  # asking again will get the same answer
        return await _fail(ctx, claim, log, f"Twilio refused the request: {exc}")
    except TwilioError as exc:  # 5xx, timeouts, connection errors, garbled answers
        decision = ctx.policy.after_transient(
            attempts=claim.attempts, pending_since=job.pending_since, now=utcnow(), error=str(exc)
        )
        return await _decided(ctx, claim, log, exc, decision)
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
                    Message.body_pending_since,
                    Message.body_not_found,
                    Organization.twilio_account_sid,
                    Organization.twilio_auth_token,
                )
                .join(Organization, Organization.id == Message.organization_id)
                .where(Message.id == claim.message_id)
            )
        ).one_or_none()
    if row is None or not still_ours(row.body_state, row.body_attempts, claim):
        return None
    return _Job(
        message_sid=row.external_id,
        account_sid=row.twilio_account_sid,
        token_ciphertext=row.twilio_auth_token,
        pending_since=row.body_pending_since or utcnow(),
        not_found=row.body_not_found or 0,
    )


def still_ours(body_state: str, body_attempts: int, claim: Claim) -> bool:
    """Whether the row is pending under this claim's lease."""
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
        if row is not None and still_ours(row.body_state, row.body_attempts, claim):
            result = await action(session)
        await commit(session, ctx.notifier)
        return result


async def _retry(
    ctx: EnrichContext,
    claim: Claim,
    *,
    delay: float,
    reason: str,
    count_attempt: bool = True,
    not_found: int = 0,
) -> bool:
    async def schedule(session: AsyncSession) -> bool:
        await service.schedule_body_retry(
            session,
            claim.message_id,
            delay=timedelta(seconds=delay),
            reason=reason,
            count_attempt=count_attempt,
            not_found=not_found,
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


async def _decided(
    ctx: EnrichContext,
    claim: Claim,
    log: FilteringBoundLogger,
    exc: TwilioError,
    decision: Decision,
    *,
    not_found: int = 0,
) -> EnrichOutcome:
    ctx.rate_limited.pop(claim.message_id, None)
    if decision.retry_in is None:
        return await _fail(ctx, claim, log, decision.reason)
    delay = decision.retry_in
    if not await _retry(ctx, claim, delay=delay, reason=decision.reason, not_found=not_found):
        return EnrichOutcome.SKIPPED
    log.info("enrich.retry", error=str(exc), status=exc.status, retry_in=round(delay, 3))
    return EnrichOutcome.RETRY


async def _rate_limited(
    ctx: EnrichContext,
    claim: Claim,
    job: _Job,
    log: FilteringBoundLogger,
    exc: TwilioRateLimited,
) -> EnrichOutcome:
    streak = ctx.rate_limited.get(claim.message_id, 0) + 1
    decision = ctx.policy.after_rate_limit(
        retry_after=exc.retry_after,
        streak=streak,
        # The claim counted this attempt; the retry hands it back.
        attempts=claim.attempts - 1,
        pending_since=job.pending_since,
        now=utcnow(),
        error=str(exc),
    )
    if decision.retry_in is None:
        return await _fail(ctx, claim, log, decision.reason)
    ctx.rate_limited[claim.message_id] = streak
    delay = decision.retry_in
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

    A pause restarts the retry deadline of every pending body of the org: time spent
    waiting for the owner to reconnect is not time Twilio failed, and a body tried before a
    two-day pause must not fail at the first 500 after the reconnect.
    """
    ctx.rate_limited.pop(claim.message_id, None)

    async def flag_org(session: AsyncSession) -> None:
        current = await session.scalar(
            select(Organization.twilio_auth_token).where(Organization.id == claim.organization_id)
        )
        refused = flag_token is not None and current == flag_token
        if refused:
            await orgs.mark_credentials_invalid(session, claim.organization_id, reason[:500])
        if refused or current is None:  # else reconnected meanwhile: nothing is paused
            await service.restart_body_deadlines(session, claim.organization_id)

    async def release(session: AsyncSession) -> None:
        await service.schedule_body_retry(
            session, claim.message_id, delay=timedelta(0), reason=reason, count_attempt=False
        )

    await _write(ctx, claim, release, always=flag_org)
    return EnrichOutcome.PAUSED
