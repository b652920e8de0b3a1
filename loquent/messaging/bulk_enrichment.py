"""Body enrichment at campaign scale: many pending bodies of one organization fetched by
listing ``Messages.json`` instead of one ``GET`` each.

A bulk campaign sent from another platform (10,000 texts, 30–40,000 status events within
minutes) leaves thousands of bodies pending on one account. One GET per body at the
per-organization cap (4 calls at once) takes 10,000 round trips; one page of
``Messages.json`` carries up to 1,000 messages, so the same bodies arrive in about ten
calls. The worker switches to a *listing run* when an organization has at least
``enrich_list_threshold`` due bodies captured within the last ``enrich_list_window_hours``
(``body_queue.orgs_due_for_listing``); everything else keeps the one-by-one path of
``enrichment.enrich_body``.

A run, in order:

1. lease the organization's due bodies in the window (``body_queue.claim_org_bodies``: the
   same lease, attempt count and fencing token as a single claim, so two workers never write
   one body twice);
2. page through ``Messages.json?DateSent>=…&DateSent<=…&PageSize=1000`` over the days the
   bodies were captured in, newest first, following ``next_page_uri``; each page's matches
   are stored at once (one transaction per page, each row fenced on its lease), and the
   leases of what is left are extended so a long run does not lose them;
3. stop when every SID was found, the list ends, or ``enrich_list_max_pages`` were read;
4. what the listing does not settle goes one by one through ``enrich_body``, under the
   organization's concurrency cap: SIDs the listing did not return (sent before the window,
   not sent yet so without a ``date_sent``), and MMS whose media list needs its own call
   (the listed message is stored together with that list).

Failures of the list call follow the one-by-one rules, for every body the run still holds:
429 waits ``Retry-After`` (uncounted), 401/403 flags the credentials and pauses the
organization, 5xx/timeouts/garbled pages are retried under ``RetryPolicy`` (backoff, 24 h
deadline from each body's first attempt), and a 400/404 on the list itself (a listing Twilio
will not serve) sends the bodies one by one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.db import utcnow
from loquent.messaging import service
from loquent.messaging.body_queue import Claim, extend_leases
from loquent.messaging.enrichment import (
    Decision,
    EnrichContext,
    EnrichOutcome,
    enrich_body,
    still_ours,
    to_fetched_message,
)
from loquent.messaging.models import Message
from loquent.messaging.schemas import FetchedMessage
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.realtime.log import commit
from loquent.twilio.client import (
    MAX_PAGE_SIZE,
    TwilioAuthError,
    TwilioBadRequest,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
)

logger = structlog.get_logger(__name__)

# Capture follows the send by seconds to minutes; a body captured just after midnight may
# have been sent the day before, so the window opens this long before the oldest capture.
SEND_TO_CAPTURE_SLACK = timedelta(hours=2)
# Rows written per transaction when storing a page's matches: small enough that a SQLite
# write lock is held for a fraction of a second, so claims and lease extensions get in.
WRITE_CHUNK = 100


@dataclass(frozen=True)
class _Row:
    claim: Claim
    sid: str
    captured_at: datetime
    pending_since: datetime


@dataclass(frozen=True)
class _Org:
    account_sid: str | None
    token_ciphertext: str | None


async def enrich_by_listing(
    ctx: EnrichContext, org_id: int, claims: list[Claim], *, call_slots: asyncio.Semaphore
) -> list[EnrichOutcome]:
    """Run one listing run over ``claims`` (all of ``org_id``); every Twilio call takes a
    slot of ``call_slots``, the organization's concurrency cap."""
    log = logger.bind(org_id=org_id, bodies=len(claims))
    run = _Run(ctx, org_id, claims, call_slots)
    keeper = asyncio.create_task(run.keep_leases(), name=f"leases-{org_id}")
    try:
        return await run.run(log)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


class _Run:
    def __init__(
        self, ctx: EnrichContext, org_id: int, claims: list[Claim], slots: asyncio.Semaphore
    ) -> None:
        self.ctx = ctx
        self.org_id = org_id
        self.claims = claims
        self.slots = slots
        # Claims this run still holds the lease of (neither stored, handed back, nor passed
        # to a one-by-one job, which looks after its own).
        self.held: dict[int, Claim] = {c.message_id: c for c in claims}
        self.outcomes: list[EnrichOutcome] = []

    async def keep_leases(self) -> None:
        lease = self.ctx.settings.worker_lease_seconds
        while True:
            await asyncio.sleep(max(lease / 3, 0.05))
            try:
                await self._extend()
            except Exception as exc:  # a busy database: try again well before the lease ends
                logger.warning("enrich.lease_extend_failed", org_id=self.org_id, error=str(exc))

    async def _extend(self) -> None:
        if not self.held:
            return
        until = utcnow() + timedelta(seconds=self.ctx.settings.worker_lease_seconds)
        async with self.ctx.db.session() as session:
            await extend_leases(session, list(self.held.values()), until=until)
            await session.commit()

    async def run(self, log: Any) -> list[EnrichOutcome]:
        rows, org = await self._load()
        if not rows:
            return self.outcomes
        token = None
        if org.account_sid and org.token_ciphertext:
            try:
                token = self.ctx.box.decrypt(org.token_ciphertext)
            except ValueError:
                token = None
        if token is None or org.account_sid is None:
            # Not connected, or the key cannot read the token: the one-by-one path pauses
            # the organization exactly as it always has.
            await self._one_by_one([r.claim for r in rows])
            return self.outcomes

        settings = self.ctx.settings
        client = TwilioClient(
            settings.twilio_api_base,
            org.account_sid,
            token,
            timeout=settings.twilio_timeout_seconds,
            http=self.ctx.http,
        )
        wanted = {r.sid: r for r in rows}
        after = (min(r.captured_at for r in rows) - SEND_TO_CAPTURE_SLACK).date()
        before = max(r.captured_at for r in rows).date()
        with_media: list[tuple[_Row, dict[str, Any]]] = []
        pages = 0
        try:
            pages, with_media = await self._list(client, wanted, after, before)
        except TwilioRateLimited as exc:
            await self._rate_limited(rows, exc, log)
            return self.outcomes
        except TwilioAuthError as exc:
            log.warning("enrich.list_credentials_rejected", status=exc.status, code=exc.code)
            await self._pause(f"Twilio rejected the credentials: {exc}", org.token_ciphertext)
            return self.outcomes
        except (TwilioNotFound, TwilioBadRequest) as exc:
            log.warning("enrich.list_refused", status=exc.status, error=str(exc))
            await self._one_by_one([r.claim for r in rows if r.claim.message_id in self.held])
            return self.outcomes
        except TwilioError as exc:
            await self._transient(rows, exc, log)
            return self.outcomes
        self.ctx.list_rate_limited.pop(self.org_id, None)
        listed = len(rows) - len(wanted) - len(with_media)
        log.info(
            "enrich.listed",
            pages=pages,
            stored=listed,
            with_media=len(with_media),
            one_by_one=len(wanted),
        )
        await asyncio.gather(
            *(self._with_media(client, row, payload) for row, payload in with_media),
            self._one_by_one([r.claim for r in wanted.values()]),
        )
        return self.outcomes

    # --- reading ---

    async def _load(self) -> tuple[list[_Row], _Org]:
        ids = list(self.held)
        rows: list[_Row] = []
        async with self.ctx.db.reader() as session:
            org_row = (
                await session.execute(
                    select(Organization.twilio_account_sid, Organization.twilio_auth_token).where(
                        Organization.id == self.org_id
                    )
                )
            ).one()
            for start in range(0, len(ids), 500):
                result = await session.execute(
                    select(
                        Message.id,
                        Message.external_id,
                        Message.body_state,
                        Message.body_attempts,
                        Message.created_at,
                        Message.body_pending_since,
                    ).where(Message.id.in_(ids[start : start + 500]))
                )
                for r in result:
                    claim = self.held[r.id]
                    if not still_ours(r.body_state, r.body_attempts, claim) or not r.external_id:
                        self.held.pop(r.id, None)
                        continue
                    rows.append(
                        _Row(claim, r.external_id, r.created_at, r.body_pending_since or utcnow())
                    )
        return rows, _Org(org_row[0], org_row[1])

    async def _list(
        self,
        client: TwilioClient,
        wanted: dict[str, _Row],
        after: date,
        before: date,
    ) -> tuple[int, list[tuple[_Row, dict[str, Any]]]]:
        """Page through the window; store matches as they come. Returns the pages read and
        the matches that still need their media list. ``wanted`` is left with the SIDs the
        listing did not return."""
        settings = self.ctx.settings
        page_size = MAX_PAGE_SIZE
        max_pages = max(1, settings.enrich_list_max_pages)
        with_media: list[tuple[_Row, dict[str, Any]]] = []
        next_uri: str | None = None
        pages = 0
        while wanted and pages < max_pages:
            async with self.slots:
                items, next_uri = await client.messages_page(
                    next_uri,
                    page_size=page_size,
                    date_sent_after=after,
                    date_sent_before=before,
                )
            pages += 1
            found: list[tuple[_Row, dict[str, Any]]] = []
            for item in items:
                row = wanted.pop(str(item.get("sid") or ""), None)
                if row is None:
                    continue
                if _int(item.get("num_media")) > 0:
                    with_media.append((row, item))
                else:
                    found.append((row, item))
            await self._store(found)
            if next_uri is None:
                break
        return pages, with_media

    # --- writing ---

    async def _store(self, found: list[tuple[_Row, dict[str, Any]]]) -> None:
        answers = {row.claim.message_id: to_fetched_message(payload) for row, payload in found}
        for start in range(0, len(found), WRITE_CHUNK):
            await self._write_many(
                [row.claim for row, _ in found[start : start + WRITE_CHUNK]],
                _storing(answers),
            )

    async def _write_many(
        self,
        claims: list[Claim],
        action: Callable[[AsyncSession, list[Claim]], Awaitable[list[EnrichOutcome]]],
        *,
        always: Callable[[AsyncSession], Awaitable[None]] | None = None,
    ) -> None:
        """One write transaction over ``claims``: ``action`` on the rows whose lease is still
        ours (the fencing of ``enrichment._write``), then commit through the event log."""
        if not claims and always is None:
            return
        async with self.ctx.db.session() as session:
            if always is not None:
                await always(session)
            by_id = {c.message_id: c for c in claims}
            result = await session.execute(
                select(Message.id, Message.body_state, Message.body_attempts)
                .where(Message.id.in_(list(by_id)))
                .with_for_update()
            )
            ours = sorted(
                (
                    by_id[r.id]
                    for r in result
                    if still_ours(r.body_state, r.body_attempts, by_id[r.id])
                ),
                key=_id,
            )
            outcomes = await action(session, ours) if ours else []
            await commit(session, self.ctx.notifier)
        for claim in claims:
            self.held.pop(claim.message_id, None)
        self.outcomes.extend(outcomes)
        self.outcomes.extend([EnrichOutcome.SKIPPED] * (len(claims) - len(ours)))

    async def _rate_limited(self, rows: list[_Row], exc: TwilioRateLimited, log: Any) -> None:
        streak = self.ctx.list_rate_limited.get(self.org_id, 0) + 1
        self.ctx.list_rate_limited[self.org_id] = streak
        now = utcnow()
        policy = self.ctx.policy
        await self._decide_each(
            rows,
            lambda r: policy.after_rate_limit(
                retry_after=exc.retry_after,
                streak=streak,
                attempts=r.claim.attempts - 1,
                pending_since=r.pending_since,
                now=now,
                error=str(exc),
            ),
            count_attempt=False,
        )
        log.info("enrich.list_rate_limited", retry_after=exc.retry_after)

    async def _transient(self, rows: list[_Row], exc: TwilioError, log: Any) -> None:
        now = utcnow()
        policy = self.ctx.policy
        await self._decide_each(
            rows,
            lambda r: policy.after_transient(
                attempts=r.claim.attempts, pending_since=r.pending_since, now=now, error=str(exc)
            ),
            count_attempt=True,
        )
        log.info("enrich.list_retry", error=str(exc), status=exc.status)

    async def _decide_each(
        self, rows: list[_Row], decide: Callable[[_Row], Decision], *, count_attempt: bool
    ) -> None:
        """Each row's decision under the policy (its own attempts and deadline), with one
        retry time for the whole run: the longest any row was given, so none comes back
        before Retry-After or its backoff, and they fall due together, for the next run to
        list them again rather than trickle back one by one."""
        held = [r for r in rows if r.claim.message_id in self.held]
        decisions = {r.claim.message_id: decide(r) for r in held}
        delays = [d.retry_in for d in decisions.values() if d.retry_in is not None]
        retry_at = utcnow() + timedelta(seconds=max(delays, default=0.0))

        async def apply(session: AsyncSession, claims: list[Claim]) -> list[EnrichOutcome]:
            outcomes = []
            for claim in claims:
                decision = decisions[claim.message_id]
                if decision.retry_in is None:
                    await service.mark_body_failed(session, claim.message_id, decision.reason)
                    outcomes.append(EnrichOutcome.FAILED)
                    continue
                await service.schedule_body_retry(
                    session,
                    claim.message_id,
                    delay=timedelta(0),
                    at=retry_at,
                    reason=decision.reason,
                    count_attempt=count_attempt,
                )
                outcomes.append(EnrichOutcome.RETRY)
            return outcomes

        for start in range(0, len(held), WRITE_CHUNK):
            await self._write_many([r.claim for r in held[start : start + WRITE_CHUNK]], apply)

    async def _pause(self, reason: str, token_ciphertext: str | None) -> None:
        """As ``enrichment._pause``, for every body the run holds: the credentials are
        flagged (if still the ones we used), every pending body's deadline restarts, and the
        bodies go back uncounted and due at once."""
        org_id = self.org_id

        async def flag_org(session: AsyncSession) -> None:
            current = await session.scalar(
                select(Organization.twilio_auth_token).where(Organization.id == org_id)
            )
            refused = token_ciphertext is not None and current == token_ciphertext
            if refused:
                await orgs.mark_credentials_invalid(session, org_id, reason[:500])
            if refused or current is None:
                await service.restart_body_deadlines(session, org_id)

        async def release(session: AsyncSession, claims: list[Claim]) -> list[EnrichOutcome]:
            for claim in claims:
                await service.schedule_body_retry(
                    session,
                    claim.message_id,
                    delay=timedelta(0),
                    reason=reason,
                    count_attempt=False,
                )
            return [EnrichOutcome.PAUSED] * len(claims)

        held = list(self.held.values())
        await self._write_many(held[:WRITE_CHUNK], release, always=flag_org)
        for start in range(WRITE_CHUNK, len(held), WRITE_CHUNK):
            await self._write_many(held[start : start + WRITE_CHUNK], release)

    # --- one by one ---

    async def _with_media(self, client: TwilioClient, row: _Row, payload: dict[str, Any]) -> None:
        """A listed MMS: its media list is one more call; the listed message and the list
        are stored together. Should that call fail, the body goes the one-by-one way."""
        try:
            async with self.slots:
                media = await client.list_media(row.sid)
        except TwilioError:
            await self._one_by_one([row.claim])
            return
        answers = {row.claim.message_id: to_fetched_message(payload, media)}
        await self._write_many([row.claim], _storing(answers))

    async def _one_by_one(self, claims: list[Claim]) -> None:
        async def one(claim: Claim) -> None:
            async with self.slots:
                # From here the job looks after its own lease (and hands it back on a retry).
                self.held.pop(claim.message_id, None)
                self.outcomes.append(await enrich_body(self.ctx, claim))

        await asyncio.gather(*(one(c) for c in claims))


def _storing(
    answers: dict[int, FetchedMessage],
) -> Callable[[AsyncSession, list[Claim]], Awaitable[list[EnrichOutcome]]]:
    async def store(session: AsyncSession, claims: list[Claim]) -> list[EnrichOutcome]:
        stored = await service.apply_fetched_messages(
            session, {c.message_id: answers[c.message_id] for c in claims}
        )
        return [EnrichOutcome.READY if answers[i].body else EnrichOutcome.EMPTY for i in stored] + [
            EnrichOutcome.SKIPPED
        ] * (len(claims) - len(stored))

    return store


def _id(claim: Claim) -> int:
    return claim.message_id


def _int(value: object) -> int:
    try:
        return max(0, int(str(value))) if value not in (None, "") else 0
    except ValueError:
        return 0
