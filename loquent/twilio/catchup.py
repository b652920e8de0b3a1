"""Catch-up after downtime, and the runner that executes imports and catch-ups.

Twilio retries a webhook delivery for at most four hours. An app that is down longer
loses those events for good — unless something asks Twilio afterwards. So every connected
organization gets a *catch-up* run at start and every ``LOQUENT_CATCHUP_INTERVAL_SECONDS``:
it lists ``Messages.json`` from its starting point and records what is missing through the
same code as the history import (``loquent.twilio.history``).

Starting point: the previous successful catch-up's start (it saw everything before it), or
for the first one the organization's newest known message; minus
``LOQUENT_CATCHUP_OVERLAP_SECONDS``. Not simply "the newest message": right after a restart
Twilio's retries deliver the last hours' events at once, and the newest message then says
nothing about the gap before them. ``DateSent>`` filters by whole days (UTC), so the
listing starts at that day's midnight and paging stops at the first page that reaches
back past the starting point (the list is newest first).

One catch-up per organization at a time across every process: the run is a row with a
lease, and a partial unique index allows one running catch-up per organization. Several
worker processes therefore schedule at most one run each interval between them: a process
skips an organization whose last catch-up started less than most of an interval ago.

``SyncRunner`` is the loop: it schedules catch-ups, claims runs whose lease is free (new
ones, and those of a process that died mid-run, which thus resume at their cursor) and runs
them as tasks, a few at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import datetime, timedelta

import httpx
import structlog
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.config import Settings
from loquent.db import Database, utcnow
from loquent.messaging.models import Message
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.realtime.notifier import Notifier
from loquent.twilio.history import (
    CATCHUP_SETTLE,
    IMPORTS_TOPIC,
    RunClaim,
    SyncContext,
    claim_runs,
    insert_run,
    release_claim,
    run_import,
)
from loquent.twilio.import_models import ImportKind, ImportState, MessageImport

log = structlog.get_logger(__name__)

# A process skips an organization whose last catch-up started less than this share of an
# interval ago (another process did it), or, at start, less than this many seconds ago.
_INTERVAL_SHARE = 0.8
_START_GAP_SECONDS = 30.0
# Finished catch-up rows are kept this long, for the record; then pruned.
_CATCHUP_RETENTION = timedelta(days=7)


async def schedule_catchups(
    db: Database, *, now: datetime, overlap_seconds: float, min_gap_seconds: float
) -> int:
    """Create a catch-up run for every connected organization that is due; how many."""
    async with db.reader() as session:
        org_rows = (
            await session.execute(
                select(Organization.id, Organization.created_at).where(
                    Organization.twilio_account_sid.is_not(None),
                    Organization.twilio_auth_token.is_not(None),
                    Organization.twilio_credentials_valid.is_(True),
                )
            )
        ).all()
    created = 0
    for org_id, org_created_at in org_rows:
        async with db.session() as session:
            last = (
                await session.execute(
                    select(MessageImport)
                    .where(
                        MessageImport.organization_id == org_id,
                        MessageImport.kind == str(ImportKind.CATCHUP),
                    )
                    .order_by(MessageImport.id.desc())
                    .limit(1)
                )
            ).scalar_one_or_none()
            if last is not None and (
                last.state == ImportState.RUNNING
                or (now - last.created_at).total_seconds() < min_gap_seconds
            ):
                continue
            # Never less than twice the settle window, or texts left out for being too new
            # could fall between two runs.
            overlap = max(overlap_seconds, 2 * CATCHUP_SETTLE.total_seconds())
            since = await _starting_point(session, org_id, org_created_at) - timedelta(
                seconds=overlap
            )
            if await insert_run(session, org_id, ImportKind.CATCHUP, since) is not None:
                created += 1
            await session.execute(
                delete(MessageImport).where(
                    MessageImport.organization_id == org_id,
                    MessageImport.kind == str(ImportKind.CATCHUP),
                    MessageImport.state != str(ImportState.RUNNING),
                    MessageImport.created_at < now - _CATCHUP_RETENTION,
                )
            )
            await session.commit()
    return created


async def _starting_point(session: AsyncSession, org_id: int, org_created_at: datetime) -> datetime:
    watermark = (
        await session.execute(
            select(func.max(MessageImport.created_at)).where(
                MessageImport.organization_id == org_id,
                MessageImport.kind == str(ImportKind.CATCHUP),
                MessageImport.state == str(ImportState.FINISHED),
            )
        )
    ).scalar()
    if watermark is None:
        watermark = (
            await session.execute(
                select(func.max(Message.created_at)).where(Message.organization_id == org_id)
            )
        ).scalar()
    if watermark is None:
        # Nothing known yet: what came before the organization existed is history (an
        # explicit import), not something the app missed.
        watermark = org_created_at
    return watermark if watermark.tzinfo else watermark.replace(tzinfo=org_created_at.tzinfo)


class SyncRunner:
    """Schedules catch-ups and runs imports/catch-ups; ``start()``/``stop()`` for embedding."""

    def __init__(
        self,
        *,
        db: Database,
        notifier: Notifier,
        settings: Settings,
        box: SecretBox,
        http: httpx.AsyncClient,
    ) -> None:
        self._ctx = SyncContext(db=db, notifier=notifier, settings=settings, box=box, http=http)
        self._settings = settings
        self._tasks: dict[asyncio.Task[None], RunClaim] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._stopping = False

    async def start(self) -> None:
        if self._loop_task is None:
            self._stopping = False
            self._loop_task = asyncio.create_task(self._run(), name="loquent-sync-runner")

    async def stop(self, *, grace: float = 5.0) -> None:
        """Stop; runs still going after ``grace`` are cancelled and their leases handed back
        (their cursor is committed, so the next worker resumes them at once)."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if self._tasks:
            _done, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            unfinished = [self._tasks[t] for t in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            for claim in unfinished:
                with contextlib.suppress(Exception):
                    async with self._ctx.db.session() as session:
                        await release_claim(session, claim)
                        await session.commit()

    async def _run(self) -> None:
        settings = self._settings
        interval = settings.catchup_interval_seconds
        loop = asyncio.get_running_loop()
        next_catchup = loop.time()  # once at start
        first = True
        with self._ctx.notifier.listen(IMPORTS_TOPIC) as notified:
            while not self._stopping:
                self._wake.clear()
                notified.clear()
                try:
                    if interval > 0 and loop.time() >= next_catchup:
                        gap = _START_GAP_SECONDS if first else interval * _INTERVAL_SHARE
                        await schedule_catchups(
                            self._ctx.db,
                            now=utcnow(),
                            overlap_seconds=settings.catchup_overlap_seconds,
                            min_gap_seconds=gap,
                        )
                        first = False
                        next_catchup = loop.time() + interval
                    await self._claim_and_start()
                except Exception as exc:  # the loop must outlive any one failure
                    log.warning("sync_runner.round_failed", error=str(exc))
                timeout = settings.worker_poll_seconds
                if interval > 0:
                    timeout = max(0.05, min(timeout, next_catchup - loop.time()))
                waiters = [
                    asyncio.ensure_future(self._wake.wait()),
                    asyncio.ensure_future(notified.wait()),
                ]
                try:
                    await asyncio.wait(waiters, timeout=timeout, return_when="FIRST_COMPLETED")
                finally:
                    for waiter in waiters:
                        waiter.cancel()

    async def _claim_and_start(self) -> None:
        room = max(1, self._settings.import_concurrency) - len(self._tasks)
        if room <= 0:
            return
        async with self._ctx.db.session() as session:
            claims = await claim_runs(
                session,
                now=utcnow(),
                lease_seconds=self._settings.import_lease_seconds,
                limit=room,
            )
            await session.commit()
        for claim in claims:
            task = asyncio.create_task(self._run_one(claim), name=f"import-{claim.run_id}")
            self._tasks[task] = claim
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self._wake.set()

    async def _run_one(self, claim: RunClaim) -> None:
        try:
            await run_import(self._ctx, claim)
        except asyncio.CancelledError:
            raise
        except Exception:  # the database went away mid-run: the lease runs out, it resumes
            log.exception("import.crashed", run_id=claim.run_id, org_id=claim.organization_id)
