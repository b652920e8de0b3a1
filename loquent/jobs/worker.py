"""The job worker: claims due work from the database and runs it as asyncio tasks.

It runs inside the web process (embedded default, started from the app lifespan) or on its
own (``loquent worker``, see ``run_forever``); any number of workers can share a database,
because claims lease rows (``loquent.messaging.body_queue``).

The loop, in short: claim as many due rows as there is room for, start a task per claim,
then sleep until one of: a wake-up on the jobs topic (new pending work was committed), a
task finishing (room for more, or a retry it scheduled), the soonest scheduled retry
falling due, or the poll interval. The poll is the safety net for lost wake-ups; the rows
are the truth, so on start the first pass picks up everything a crash left pending.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from datetime import datetime, timedelta

import httpx
import structlog

from loquent.config import Settings, get_settings
from loquent.db import Database, is_storage_outage, utcnow
from loquent.jobs.backoff import backoff_delay
from loquent.messaging.body_queue import (
    Claim,
    claim_due_bodies,
    claim_org_bodies,
    count_pending,
    next_due_at,
    orgs_due_for_listing,
    release_claims,
)
from loquent.messaging.bulk_enrichment import enrich_by_listing
from loquent.messaging.enrichment import EnrichContext, enrich_body
from loquent.metrics import ENRICHMENT
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.realtime import log as event_log
from loquent.realtime.notifier import JOBS_TOPIC, Notifier, build_notifier
from loquent.twilio.catchup import SyncRunner
from loquent.twilio.client import build_http_client

log = structlog.get_logger(__name__)

PRUNE_INTERVAL_SECONDS = 300.0
# After the database fails: first retry within about a second, then up to half a minute.
_OUTAGE_BACKOFF_BASE = 0.5
_OUTAGE_BACKOFF_CAP = 30.0
_OUTAGE_MIN_DELAY = 0.25


class Worker:
    """Runs body-enrichment jobs until stopped. ``start()``/``stop()`` for embedding."""

    def __init__(
        self,
        *,
        db: Database,
        notifier: Notifier,
        settings: Settings,
        box: SecretBox,
        http: httpx.AsyncClient | None = None,
        max_concurrency: int | None = None,
        prune_interval: float = PRUNE_INTERVAL_SECONDS,
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.settings = settings
        self._box = box
        self._given_http = http
        self._http: httpx.AsyncClient | None = None
        self._ctx: EnrichContext | None = None
        self._max_concurrency = max(1, max_concurrency or settings.worker_batch_size)
        self._slots = asyncio.Semaphore(self._max_concurrency)
        self._org_slots: dict[int, asyncio.Semaphore] = {}
        self._org_load: Counter[int] = Counter()
        self._prune_interval = prune_interval
        # Each task's leases: one claim for a single fetch, many for a listing run.
        self._tasks: dict[asyncio.Task[None], list[Claim]] = {}
        self._listing: set[int] = set()  # organizations with a listing run in this process
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self.outcomes: Counter[str] = Counter()  # per EnrichOutcome, for metrics and tests

    # --- lifecycle ---

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def start(self) -> None:
        if self.running:
            return
        self._check_lease()
        self._check_backstop()
        self._stopping = False
        # One connection pool for every organization's calls (it keeps no cookies).
        self._http = self._given_http or build_http_client(
            timeout=self.settings.twilio_timeout_seconds
        )
        self._ctx = EnrichContext(
            db=self.db,
            notifier=self.notifier,
            settings=self.settings,
            box=self._box,
            http=self._http,
        )
        self._loop_task = asyncio.create_task(self._run(), name="loquent-worker")

    def _require_ctx(self) -> EnrichContext:
        if self._ctx is None:
            raise RuntimeError("the worker runs jobs only between start() and stop()")
        return self._ctx

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop claiming, give running jobs ``grace`` seconds, then cancel the rest and hand
        their leases back so another worker can take them at once."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._loop_task), timeout=grace)
            except TimeoutError:  # stuck on the database: it holds no job of its own
                self._loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._loop_task
            self._loop_task = None

        unfinished: list[Claim] = []
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            unfinished = [claim for t in pending for claim in self._tasks[t]]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if unfinished:
            await self._release(unfinished)
        if self._http is not None and self._http is not self._given_http:
            await self._http.aclose()
        self._http = None
        log.info("worker.stopped", cancelled=len(unfinished))

    async def drain(self, timeout: float, *, include_scheduled: bool = False) -> bool:
        """Wait until no job is running and no due pending row remains (with
        ``include_scheduled``, until nothing at all is pending: retries scheduled for later
        and leases held elsewhere count too). True when drained, False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if not self._tasks:
                async with self.db.reader() as session:
                    left = await count_pending(
                        session, now=utcnow(), due_only=not include_scheduled
                    )
                if left == 0 and not self._tasks:
                    return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.05)

    def wake(self) -> None:
        self._wake.set()

    # --- the loop ---

    async def _run(self) -> None:
        log.info(
            "worker.started",
            max_concurrency=self._max_concurrency,
            per_org=self.settings.worker_per_org_concurrency,
        )
        next_prune = 0.0
        outages = 0
        loop = asyncio.get_running_loop()
        with self.notifier.listen(JOBS_TOPIC) as notified:
            while not self._stopping:
                # Cleared before looking, so a wake-up that lands while we claim is kept.
                self._wake.clear()
                notified.clear()
                if loop.time() >= next_prune:
                    await self._prune()
                    next_prune = loop.time() + self._prune_interval
                try:
                    sleep_for = await self._claim_and_start()
                    outages = 0
                except Exception as exc:  # the loop must outlive any one failure
                    outages += 1
                    sleep_for = _OUTAGE_MIN_DELAY + backoff_delay(
                        outages, base=_OUTAGE_BACKOFF_BASE, cap=_OUTAGE_BACKOFF_CAP
                    )
                    if is_storage_outage(exc):
                        log.warning(
                            "worker.storage_unavailable", error=str(exc), retry_in=sleep_for
                        )
                    else:
                        log.exception("worker.loop_failed", retry_in=sleep_for)
                if sleep_for > 0 and not self._stopping:
                    await _wait_any(self._wake, notified, timeout=sleep_for)

    async def _claim_and_start(self) -> float:
        """Claim what there is room for and start it; return how long to sleep."""
        settings = self.settings
        room = self._max_concurrency - len(self._tasks)
        # One instant for the whole pass: a body falling due between the two claims would
        # otherwise be taken one by one while the rest of its batch waits for a listing run.
        now = utcnow()
        listed: set[int] = set()
        if room > 0 and settings.enrich_list_threshold > 0:
            started, listed = await self._claim_listing_runs(room, now)
            room -= started
        limit = min(settings.worker_batch_size, room)
        claims: list[Claim] = []
        if limit > 0:
            async with self.db.session() as session:
                claims = await claim_due_bodies(
                    session,
                    now=now,
                    limit=limit,
                    lease_seconds=settings.worker_lease_seconds,
                    per_org_cap=settings.worker_per_org_concurrency,
                    exclude_orgs=listed,
                )
                await session.commit()
            for claim in claims:
                self._start(claim)
            if claims and len(claims) == limit and len(self._tasks) < self._max_concurrency:
                return 0.0  # a full batch: there may be more due right now
        return await self._until_next_due()

    async def _until_next_due(self) -> float:
        poll = self.settings.worker_poll_seconds
        async with self.db.reader() as session:
            due = await next_due_at(session)
        if due is None:
            return poll
        wait = (due - utcnow()).total_seconds()
        # Due already but not claimed: capped per org, out of room, or leased elsewhere.
        # A finishing task wakes us; otherwise the poll interval.
        if wait <= 0:
            return poll
        return min(poll, wait)

    async def _claim_listing_runs(self, room: int, now: datetime) -> tuple[int, set[int]]:
        """Start a listing run for each organization with enough due bodies (see
        ``messaging.bulk_enrichment``). Returns how many were started, and the
        organizations whose bodies are not to be claimed one by one in this pass: those
        listed here, in a run or waiting for room for one (taken one by one, a batch
        handed back by a run would trickle out a cap at a time)."""
        settings = self.settings
        since = now - timedelta(hours=settings.enrich_list_window_hours)
        runs: list[list[Claim]] = []
        # A read first: most passes find no organization that backed up.
        async with self.db.reader() as session:
            org_ids = await orgs_due_for_listing(
                session,
                now=now,
                threshold=settings.enrich_list_threshold,
                captured_since=since,
                exclude=self._listing,
            )
        if not org_ids:
            return 0, set(self._listing)
        async with self.db.session() as session:
            for org_id in org_ids[:room]:
                claims = await claim_org_bodies(
                    session,
                    org_id,
                    now=now,
                    limit=settings.enrich_list_max_bodies,
                    lease_seconds=settings.worker_lease_seconds,
                    captured_since=since,
                )
                if claims:
                    runs.append(claims)
            await session.commit()
        for claims in runs:
            org_id = claims[0].organization_id
            self._listing.add(org_id)
            task = asyncio.create_task(self._run_listing(org_id, claims), name=f"list-{org_id}")
            self._tasks[task] = claims
            task.add_done_callback(self._job_done)
        return len(runs), set(org_ids) | self._listing

    async def _run_listing(self, org: int, claims: list[Claim]) -> None:
        org_slots = self._org_slots_for(org)
        self._org_load[org] += 1
        try:
            ctx = self._require_ctx()
            outcomes = await enrich_by_listing(ctx, org, claims, call_slots=org_slots)
            for outcome in outcomes:
                self.outcomes[str(outcome)] += 1
                ENRICHMENT.labels(outcome=str(outcome)).inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the leases run out and the rows are claimed again
            self.outcomes["error"] += 1
            ENRICHMENT.labels(outcome="error").inc()
            if is_storage_outage(exc):
                log.warning("worker.listing_storage_unavailable", org_id=org, error=str(exc))
            else:
                log.exception("worker.listing_failed", org_id=org)
        finally:
            self._listing.discard(org)
            self._org_done(org)

    def _org_slots_for(self, org: int) -> asyncio.Semaphore:
        org_slots = self._org_slots.get(org)
        if org_slots is None:
            org_slots = asyncio.Semaphore(self.settings.worker_per_org_concurrency)
            self._org_slots[org] = org_slots
        return org_slots

    def _org_done(self, org: int) -> None:
        self._org_load[org] -= 1
        if self._org_load[org] <= 0:
            del self._org_load[org]
            self._org_slots.pop(org, None)

    def _start(self, claim: Claim) -> None:
        task = asyncio.create_task(self._run_job(claim), name=f"enrich-{claim.message_id}")
        self._tasks[task] = [claim]
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._wake.set()  # room for more, and the job may have scheduled a retry

    async def _run_job(self, claim: Claim) -> None:
        org = claim.organization_id
        org_slots = self._org_slots_for(org)
        self._org_load[org] += 1
        try:
            # Per-org first, so a job waiting for its org does not hold a global slot.
            async with org_slots, self._slots:
                ctx = self._require_ctx()
                outcome = await enrich_body(ctx, claim)
                self.outcomes[str(outcome)] += 1
                ENRICHMENT.labels(outcome=str(outcome)).inc()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one job's failure must not touch the others
            # The lease runs out and the row is claimed again, the attempt counted.
            self.outcomes["error"] += 1
            ENRICHMENT.labels(outcome="error").inc()
            if is_storage_outage(exc):
                log.warning(
                    "worker.job_storage_unavailable",
                    message_id=claim.message_id,
                    org_id=org,
                    error=str(exc),
                )
            else:
                log.exception("worker.job_failed", message_id=claim.message_id, org_id=org)
        finally:
            self._org_done(org)

    async def _prune(self) -> None:
        cutoff = utcnow() - timedelta(hours=self.settings.event_log_retention_hours)
        try:
            async with self.db.session() as session:
                removed = await event_log.prune(session, cutoff)
                sessions = await orgs.prune_expired_sessions(session)
                await session.commit()
        except Exception as exc:  # pruning is housekeeping; try next round
            log.warning("worker.prune_failed", error=str(exc))
            return
        if removed:
            log.info("worker.pruned_event_log", removed=removed)
        if sessions:
            log.info("worker.pruned_sessions", removed=sessions)

    async def _release(self, claims: list[Claim]) -> None:
        try:
            async with self.db.session() as session:
                await release_claims(session, claims)
                await session.commit()
        except Exception as exc:  # the leases will simply run out instead
            log.warning("worker.release_failed", error=str(exc), claims=len(claims))

    def _check_lease(self) -> None:
        # A job makes up to two Twilio calls; a lease shorter than that invites a second
        # worker to fetch the same message while the first is still at it.
        settings = self.settings
        if settings.worker_lease_seconds < 2 * settings.twilio_timeout_seconds + 5:
            log.warning(
                "worker.lease_too_short",
                lease_seconds=settings.worker_lease_seconds,
                twilio_timeout_seconds=settings.twilio_timeout_seconds,
            )

    def _check_backstop(self) -> None:
        # At the cap, retries come at least cap/2 apart (equal jitter): a backstop below what
        # the deadline allows would end bodies that are only waiting out an outage.
        settings = self.settings
        at_cap = settings.enrich_deadline_seconds / max(settings.enrich_backoff_max_seconds / 2, 1)
        if settings.enrich_max_attempts < at_cap:
            log.warning(
                "worker.enrich_max_attempts_below_deadline",
                enrich_max_attempts=settings.enrich_max_attempts,
                attempts_the_deadline_allows=int(at_cap),
            )


async def _wait_any(*events: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()


async def run_forever(settings: Settings | None = None) -> None:
    """The standalone ``loquent worker`` process: run until SIGINT/SIGTERM."""
    settings = settings or get_settings()
    db = Database(settings.database_url, busy_timeout_ms=settings.sqlite_busy_timeout_ms)
    notifier = build_notifier(settings.redis_url)
    await notifier.start()
    box = SecretBox(settings.secret_keys)
    worker = Worker(db=db, notifier=notifier, settings=settings, box=box)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    # History imports and catch-up after downtime: their own loop, beside enrichment.
    sync_http = build_http_client(timeout=settings.twilio_timeout_seconds)
    sync = SyncRunner(db=db, notifier=notifier, settings=settings, box=box, http=sync_http)
    try:
        await worker.start()
        await sync.start()
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await sync.stop()
        await sync_http.aclose()
        await worker.stop()
        await notifier.stop()
        await db.dispose()
