"""History import and catch-up: copying Twilio's ``Messages.json`` into the inbox.

One flow serves both kinds of run (``loquent.twilio.import_models``):

1. read the run and its organization's credentials (nothing is locked while Twilio answers);
2. fetch one page — the first with ``PageSize`` and ``DateSent>``, later ones exactly as
   ``next_page_uri`` names them — retrying 429 (after ``Retry-After``), 5xx and timeouts
   a bounded number of times;
3. in ONE write transaction: check the run's lease is still ours, record the page's
   messages set-based (lines by ownership, contacts resolved in bulk, messages inserted
   ``ON CONFLICT (organization_id, external_id) DO NOTHING``, ``last_contacted_at`` moved
   forward only), store the cursor and counts on the run, append the progress event;
4. repeat until there is no next page (or, for catch-up, until the pages are older than
   the point it started from), then mark the run finished and publish one event.

A crash between two pages loses nothing and counts nothing twice: the cursor and the counts
are committed with the rows they describe. Live capture can run at the same time: whichever
inserts a SID first wins and the other does nothing, and a later status event for an
imported SID updates it through the normal path.

Failures: 401/403 fails the run and flags the organization's credentials (as enrichment
does); 429/5xx/timeouts that outlast the retries fail the run with the cursor kept, so
asking again resumes where it stopped; a database outage leaves the run alone, its lease
runs out and a worker resumes it.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import httpx
import structlog
from sqlalchemy import Table, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.config import Settings
from loquent.contacts import service as contacts
from loquent.contacts.phones import try_normalize
from loquent.db import Database, dialect_insert, utcnow
from loquent.jobs.backoff import backoff_delay, retry_after_delay
from loquent.messaging import service as messaging
from loquent.messaging.models import Message
from loquent.messaging.statuses import STATUSES
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.realtime.log import append_event, commit, wake_jobs_after_commit
from loquent.realtime.notifier import Notifier
from loquent.twilio.client import (
    TwilioAuthError,
    TwilioClient,
    TwilioError,
    TwilioRateLimited,
    TwilioUnavailable,
    parse_twilio_date,
)
from loquent.twilio.history_events import (
    EVT_CATCHUP_FINISHED,
    EVT_IMPORT_FINISHED,
    EVT_IMPORT_PROGRESS,
)
from loquent.twilio.import_models import ImportKind, ImportState, MessageImport

log = structlog.get_logger(__name__)

# Catch-up leaves out what was created this shortly before it started: those texts' webhooks
# are most likely on their way, and live capture gives them their message.new. The next
# catch-up starts an overlap (far longer) before this one, so nothing falls between.
CATCHUP_SETTLE = timedelta(seconds=60)

# Wakes the runners when an import is requested (the rows are the truth; runners also poll).
IMPORTS_TOPIC = "imports"


class RunOutcome(enum.StrEnum):
    FINISHED = "finished"
    FAILED = "failed"
    LOST_LEASE = "lost_lease"  # another worker took the run over; it carries on


def import_json(run: MessageImport) -> dict[str, Any]:
    """The API's and the events' view of a run."""
    return {
        "id": run.id,
        "kind": run.kind,
        "state": run.state,
        "since": _iso(run.since),
        "imported": run.imported,
        "skipped": run.skipped,
        "pages": run.pages,
        "error": run.error,
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
    }


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


# --- requesting and reading runs ------------------------------------------------------------


class NotConnected(Exception):
    """The organization has no usable Twilio credentials: nothing to import from."""


async def request_history_import(
    session: AsyncSession, org_id: int, since: datetime | None
) -> tuple[MessageImport, bool]:
    """Start (or join) the organization's history import; ``(run, started_now)``.

    One history import per organization at a time: a request while one runs returns that
    one. A request after a run that failed with its cursor kept (Twilio kept failing)
    resumes that run — same id, counts carried on — unless it names a different start.
    The caller commits.
    """
    org = await session.get(Organization, org_id)
    if org is None or not (org.twilio_account_sid and org.twilio_auth_token):
        raise NotConnected("connect a Twilio account before importing its history")
    if not org.twilio_credentials_valid:
        raise NotConnected("Twilio refused the stored credentials: reconnect the account first")
    running = await _latest(session, org_id, ImportKind.HISTORY, state=ImportState.RUNNING)
    if running is not None:
        return running, False
    last = await _latest(session, org_id, ImportKind.HISTORY)
    if (
        last is not None
        and last.state == ImportState.FAILED
        and last.next_page_uri is not None
        and (since is None or since == last.since)
    ):
        last.state = ImportState.RUNNING
        last.error = None
        last.finished_at = None
        last.lease_until = None
        last.updated_at = utcnow()
        await session.flush()
        return last, True
    run = await insert_run(session, org_id, ImportKind.HISTORY, since)
    if run is None:  # another request started one a moment ago
        running = await _latest(session, org_id, ImportKind.HISTORY, state=ImportState.RUNNING)
        if running is None:  # pragma: no cover - the winner's row is committed by now
            raise RuntimeError("running import conflict without a visible winner")
        return running, False
    return run, True


async def insert_run(
    session: AsyncSession, org_id: int, kind: ImportKind, since: datetime | None
) -> MessageImport | None:
    """A new running run, or None if one of that kind already runs for the organization
    (the partial unique index decides, across processes)."""
    now = utcnow()
    stmt = (
        dialect_insert(session)(MessageImport)
        .values(
            organization_id=org_id,
            kind=str(kind),
            state=str(ImportState.RUNNING),
            since=since,
            pages=0,
            imported=0,
            skipped=0,
            lease_token=0,
            created_at=now,
            updated_at=now,
        )
        .on_conflict_do_nothing()
        .returning(MessageImport)
    )
    return (await session.scalars(stmt)).one_or_none()


async def get_import(session: AsyncSession, org_id: int, run_id: int) -> MessageImport | None:
    run = await session.get(MessageImport, run_id)
    return run if run is not None and run.organization_id == org_id else None


async def list_imports(
    session: AsyncSession, org_id: int, *, kind: ImportKind | None, limit: int
) -> list[MessageImport]:
    stmt = select(MessageImport).where(MessageImport.organization_id == org_id)
    if kind is not None:
        stmt = stmt.where(MessageImport.kind == str(kind))
    stmt = stmt.order_by(MessageImport.id.desc()).limit(limit)
    return list((await session.execute(stmt)).scalars())


async def _latest(
    session: AsyncSession, org_id: int, kind: ImportKind, *, state: ImportState | None = None
) -> MessageImport | None:
    stmt = select(MessageImport).where(
        MessageImport.organization_id == org_id, MessageImport.kind == str(kind)
    )
    if state is not None:
        stmt = stmt.where(MessageImport.state == str(state))
    stmt = stmt.order_by(MessageImport.id.desc()).limit(1)
    return (await session.execute(stmt)).scalar_one_or_none()


# --- claiming runs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunClaim:
    """A leased run; ``token`` fences it: a worker whose lease was taken over writes nothing."""

    run_id: int
    organization_id: int
    token: int


async def claim_runs(
    session: AsyncSession, *, now: datetime, lease_seconds: float, limit: int
) -> list[RunClaim]:
    """Lease up to ``limit`` running runs nobody holds (new ones, or a dead worker's).

    Each claim is a conditional UPDATE (the lease must still be free), so two workers racing
    for a run cannot both get it. The caller commits.
    """
    candidates = (
        await session.execute(
            select(MessageImport.id)
            .where(
                MessageImport.state == str(ImportState.RUNNING),
                or_(MessageImport.lease_until.is_(None), MessageImport.lease_until < now),
            )
            .order_by(MessageImport.id)
            .limit(limit)
        )
    ).scalars()
    claims = []
    for run_id in list(candidates):
        row = (
            await session.execute(
                update(MessageImport)
                .where(
                    MessageImport.id == run_id,
                    MessageImport.state == str(ImportState.RUNNING),
                    or_(MessageImport.lease_until.is_(None), MessageImport.lease_until < now),
                )
                .values(
                    lease_until=now + timedelta(seconds=lease_seconds),
                    lease_token=MessageImport.lease_token + 1,
                )
                .returning(MessageImport.organization_id, MessageImport.lease_token)
            )
        ).one_or_none()
        if row is not None:
            claims.append(RunClaim(run_id=run_id, organization_id=row[0], token=row[1]))
    return claims


async def release_claim(session: AsyncSession, claim: RunClaim) -> None:
    """Hand a run back at once (shutting down): the next worker need not wait for the lease."""
    await session.execute(
        update(MessageImport)
        .where(MessageImport.id == claim.run_id, MessageImport.lease_token == claim.token)
        .values(lease_until=None)
    )


# --- recording one page ----------------------------------------------------------------------


@dataclass(frozen=True)
class Listed:
    """One entry of ``Messages.json``, reduced to what the inbox stores."""

    sid: str
    sender: str
    recipient: str
    body: str
    status: str | None
    error_code: str | None
    num_media: int
    created_at: datetime | None  # Twilio's date_created
    sent_at: datetime | None  # date_sent, else date_created: what DateSent filters on


def parse_listed(item: dict[str, Any]) -> Listed | None:
    """None for an entry the inbox cannot store (no SID, no addresses)."""
    sid, sender, recipient = item.get("sid"), item.get("from"), item.get("to")
    if not (
        isinstance(sid, str)
        and isinstance(sender, str)
        and isinstance(recipient, str)
        and sid.strip()
        and sender.strip()
        and recipient.strip()
    ):
        return None
    if len(sid) > 34:
        return None
    body = item.get("body")
    status = item.get("status")
    error_code = item.get("error_code")
    try:
        num_media = max(0, int(item.get("num_media") or 0))
    except (TypeError, ValueError):
        num_media = 0
    created = parse_twilio_date(item.get("date_created"))
    sent = parse_twilio_date(item.get("date_sent")) or created
    return Listed(
        sid=sid.strip(),
        sender=sender,
        recipient=recipient,
        body=body if isinstance(body, str) else "",
        status=status.lower() if isinstance(status, str) and status.lower() in STATUSES else None,
        error_code=str(error_code)[:16] if error_code not in (None, "", 0) else None,
        num_media=num_media,
        created_at=created or sent,
        sent_at=sent,
    )


@dataclass
class PageOutcome:
    imported: int = 0
    skipped: int = 0


# (message source, contact source) by kind of run and direction. A history import marks
# everything "import". Catch-up records what live capture would have recorded had the app
# been up: an inbound text is the app's own traffic ("loquent"), an outbound one it did not
# send is "external" (what it sends itself has a row before Twilio reports on it).
_SOURCES: dict[tuple[ImportKind, str], tuple[str, str]] = {
    (ImportKind.HISTORY, "inbound"): ("import", "import"),
    (ImportKind.HISTORY, "outbound"): ("import", "import"),
    (ImportKind.CATCHUP, "inbound"): ("loquent", "inbound_sms"),
    (ImportKind.CATCHUP, "outbound"): ("external", "external_sms"),
}


@dataclass
class _Addresses:
    """E.164 normalisation is the costly part of a page; the same numbers recur a lot."""

    cache: dict[str, str] = field(default_factory=dict)

    def normalize(self, raw: str) -> str:
        found = self.cache.get(raw)
        if found is None:
            found = try_normalize(raw) or raw.strip()
            if len(self.cache) < 100_000:
                self.cache[raw] = found
        return found


async def record_page(
    session: AsyncSession,
    org_id: int,
    items: list[Listed],
    *,
    kind: ImportKind,
    not_before: datetime | None,
    not_after: datetime | None = None,
    addresses: _Addresses | None = None,
) -> PageOutcome:
    """Record one page's messages in the caller's transaction, set-based.

    A message is kept when it touches one of the organization's lines (direction from
    ownership, as capture decides it) and, with ``not_before``, was sent at or after it.
    With ``not_after``, messages created later are left out too. Everything else listed
    counts as skipped, as do SIDs the inbox already has.
    """
    addresses = addresses or _Addresses()
    outcome = PageOutcome()
    lines = {line.number: line.id for line in await orgs.list_lines(session, org_id)}
    rows: dict[str, dict[str, Any]] = {}
    counterpart_source: dict[str, str] = {}
    counterpart_of: dict[str, str] = {}
    now = utcnow()
    for item in items:
        if (
            item.sid in rows
            or (not_before is not None and (item.sent_at or now) < not_before)
            or (not_after is not None and (item.created_at or now) > not_after)
        ):
            outcome.skipped += 1
            continue
        sender = addresses.normalize(item.sender)
        recipient = addresses.normalize(item.recipient)
        if sender in lines:
            direction, counterpart, line_id = "outbound", recipient, lines[sender]
        elif recipient in lines:
            direction, counterpart, line_id = "inbound", sender, lines[recipient]
        else:
            outcome.skipped += 1
            continue
        source, contact_source = _SOURCES[(kind, direction)]
        counterpart_source.setdefault(counterpart, contact_source)
        counterpart_of[item.sid] = counterpart
        body_state = "pending" if item.num_media else ("ready" if item.body else "empty")
        rows[item.sid] = {
            "organization_id": org_id,
            "phone_number_id": line_id,
            "channel": "sms",
            "direction": direction,
            "from_address": sender,
            "to_address": recipient,
            "body": item.body or None,
            "status": item.status or ("received" if direction == "inbound" else "sent"),
            "error_code": item.error_code,
            "source": source,
            "external_id": item.sid,
            "num_media": item.num_media,
            "created_at": item.created_at or now,
            "updated_at": now,
            # With media, the text is stored now and the media list is fetched by the
            # enrichment worker, which records each item as it does for captured MMS.
            "body_state": body_state,
            "body_attempts": 0,
            "body_next_attempt_at": now if body_state == "pending" else None,
        }
    if not rows:
        return outcome
    contact_ids = await contacts.resolve_or_create_many(session, org_id, counterpart_source)
    for sid, row in rows.items():
        row["contact_id"] = contact_ids[counterpart_of[sid]]
    table = cast(Table, Message.__table__)
    inserted = (
        await session.execute(
            dialect_insert(session)(table)
            .on_conflict_do_nothing(index_elements=["organization_id", "external_id"])
            .returning(table.c.contact_id, table.c.created_at, table.c.body_state),
            list(rows.values()),
        )
    ).all()
    outcome.imported = len(inserted)
    outcome.skipped += len(rows) - len(inserted)
    newest: dict[int, datetime] = {}
    for contact_id, created_at, body_state in inserted:
        created_at = _aware(created_at)
        if contact_id not in newest or newest[contact_id] < created_at:
            newest[contact_id] = created_at
        if body_state == "pending":
            wake_jobs_after_commit(session)
    await contacts.touch_last_contacted_many(session, newest)
    return outcome


def _aware(value: datetime) -> datetime:
    # Core RETURNING through the table (not the ORM type) can hand SQLite's naive text back.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


# --- running a run ----------------------------------------------------------------------------


@dataclass
class SyncContext:
    db: Database
    notifier: Notifier
    settings: Settings
    box: SecretBox
    http: httpx.AsyncClient


@dataclass(frozen=True)
class _RunStart:
    kind: ImportKind
    since: datetime | None
    created_at: datetime
    cursor: str | None
    pages: int
    account_sid: str
    auth_token: str
    token_ciphertext: str


class _Failed(Exception):
    def __init__(self, message: str, *, credentials: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.credentials = credentials


async def run_import(ctx: SyncContext, claim: RunClaim) -> RunOutcome:
    """Run a claimed import or catch-up to its end (or until its lease is lost)."""
    bound = log.bind(run_id=claim.run_id, org_id=claim.organization_id)
    start = await _load(ctx, claim)
    if start is None:
        return RunOutcome.LOST_LEASE
    if isinstance(start, str):
        await _finish(ctx, claim, error=start)
        return RunOutcome.FAILED
    settings = ctx.settings
    client = TwilioClient(
        settings.twilio_api_base,
        start.account_sid,
        start.auth_token,
        timeout=settings.twilio_timeout_seconds,
        http=ctx.http,
    )
    cursor, pages = start.cursor, start.pages
    addresses = _Addresses()
    bound.info("import.started", kind=str(start.kind), resume_page=pages, resumed=bool(cursor))
    while True:
        if cursor is None and pages > 0:
            break  # the last page was committed before a crash; only the finish was missing
        try:
            items, next_uri = await _fetch_page(ctx, client, claim, start, cursor)
        except _Failed as failed:
            bound.warning("import.failed", error=failed.message, pages=pages)
            finished = await _finish(
                ctx,
                claim,
                error=failed.message,
                flag_credentials=start.token_ciphertext if failed.credentials else None,
            )
            return RunOutcome.FAILED if finished else RunOutcome.LOST_LEASE
        listed = [entry for entry in map(parse_listed, items) if entry is not None]
        malformed = len(items) - len(listed)
        committed = await _commit_page(
            ctx, claim, start, listed, malformed=malformed, next_uri=next_uri, addresses=addresses
        )
        if not committed:
            bound.info("import.lease_lost", pages=pages)
            return RunOutcome.LOST_LEASE
        pages += 1
        cursor = next_uri
        if next_uri is None:
            break
        if start.kind == ImportKind.CATCHUP and _reached(listed, start.since):
            break  # newest first: every later page is older than the point we start from
    finished = await _finish(ctx, claim, error=None)
    return RunOutcome.FINISHED if finished else RunOutcome.LOST_LEASE


def _reached(listed: list[Listed], since: datetime | None) -> bool:
    if since is None:
        return False
    return any(entry.sent_at is not None and entry.sent_at < since for entry in listed)


async def _load(ctx: SyncContext, claim: RunClaim) -> _RunStart | str | None:
    """The run and its credentials; an error text if it cannot run, None if not ours."""
    async with ctx.db.reader() as session:
        run = await session.get(MessageImport, claim.run_id)
        if run is None or run.lease_token != claim.token or run.state != ImportState.RUNNING:
            return None
        org = await session.get(Organization, run.organization_id)
        if org is None or not (org.twilio_account_sid and org.twilio_auth_token):
            return "the organization has no Twilio account connected"
        if not org.twilio_credentials_valid:
            return "Twilio refused the stored credentials: reconnect the account, then import again"
        token = orgs.auth_token_of(ctx.box, org)
        if token is None:  # pragma: no cover - checked above
            return "the organization has no Twilio account connected"
        return _RunStart(
            kind=ImportKind(run.kind),
            since=run.since,
            created_at=run.created_at,
            cursor=run.next_page_uri,
            pages=run.pages,
            account_sid=org.twilio_account_sid,
            auth_token=token,
            token_ciphertext=org.twilio_auth_token,
        )


async def _fetch_page(
    ctx: SyncContext,
    client: TwilioClient,
    claim: RunClaim,
    start: _RunStart,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    settings = ctx.settings
    attempt = 0
    while True:
        try:
            return await client.messages_page(
                cursor,
                page_size=settings.import_page_size,
                date_sent_after=start.since.date() if start.since is not None else None,
            )
        except TwilioAuthError as exc:
            raise _Failed(
                f"Twilio refused the credentials ({exc}); reconnect the account, then import again",
                credentials=True,
            ) from None
        except (TwilioRateLimited, TwilioUnavailable) as exc:
            attempt += 1
            if attempt >= settings.import_max_attempts:
                raise _Failed(
                    f"Twilio kept failing ({exc}) after {attempt} attempts; importing again "
                    "resumes from the page that failed"
                ) from None
            if isinstance(exc, TwilioRateLimited):
                delay = retry_after_delay(
                    exc.retry_after,
                    attempt,
                    settings.import_backoff_base_seconds,
                    settings.import_backoff_max_seconds,
                )
            else:
                delay = backoff_delay(
                    attempt,
                    base=settings.import_backoff_base_seconds,
                    cap=settings.import_backoff_max_seconds,
                )
            log.info(
                "import.page_retry",
                run_id=claim.run_id,
                attempt=attempt,
                error=str(exc),
                retry_in=round(delay, 2),
            )
            if not await _extend_lease(ctx, claim, delay):
                raise _Failed("lease lost") from None
            await asyncio.sleep(delay)
        except TwilioError as exc:
            raise _Failed(f"Twilio refused the listing ({exc})") from None


async def _extend_lease(ctx: SyncContext, claim: RunClaim, wait: float) -> bool:
    until = utcnow() + timedelta(seconds=wait + ctx.settings.import_lease_seconds)
    async with ctx.db.session() as session:
        result = await session.execute(
            update(MessageImport)
            .where(MessageImport.id == claim.run_id, MessageImport.lease_token == claim.token)
            .values(lease_until=until)
        )
        await session.commit()
    return bool(getattr(result, "rowcount", 0))


async def _locked_run(session: AsyncSession, claim: RunClaim) -> MessageImport | None:
    """The run, locked, if this claim still holds it."""
    run = (
        await session.execute(
            select(MessageImport)
            .where(MessageImport.id == claim.run_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if run is None or run.lease_token != claim.token or run.state != ImportState.RUNNING:
        return None
    return run


async def _commit_page(
    ctx: SyncContext,
    claim: RunClaim,
    start: _RunStart,
    listed: list[Listed],
    *,
    malformed: int,
    next_uri: str | None,
    addresses: _Addresses,
) -> bool:
    """The page's messages, the cursor, the counts and the progress event: one transaction."""
    async with ctx.db.session() as session:
        run = await _locked_run(session, claim)
        if run is None:
            await session.rollback()
            return False
        outcome = await record_page(
            session,
            claim.organization_id,
            listed,
            kind=start.kind,
            not_before=start.since if start.kind == ImportKind.HISTORY else None,
            not_after=(
                start.created_at - CATCHUP_SETTLE if start.kind == ImportKind.CATCHUP else None
            ),
            addresses=addresses,
        )
        now = utcnow()
        run.pages += 1
        run.imported += outcome.imported
        run.skipped += outcome.skipped + malformed
        run.next_page_uri = next_uri
        run.lease_until = now + timedelta(seconds=ctx.settings.import_lease_seconds)
        run.updated_at = now
        await session.flush()
        if start.kind == ImportKind.HISTORY:
            await append_event(
                session, claim.organization_id, EVT_IMPORT_PROGRESS, import_json(run)
            )
        await commit(session, ctx.notifier)
    return True


async def _finish(
    ctx: SyncContext, claim: RunClaim, *, error: str | None, flag_credentials: str | None = None
) -> bool:
    """Mark the run finished (or failed, cursor kept) and publish its one closing event."""
    async with ctx.db.session() as session:
        run = await _locked_run(session, claim)
        if run is None:
            await session.rollback()
            return False
        now = utcnow()
        run.state = ImportState.FAILED if error else ImportState.FINISHED
        run.error = error[:1000] if error else None
        run.finished_at = now
        run.lease_until = None
        run.updated_at = now
        if flag_credentials is not None:
            # Only if the stored token is still the one Twilio refused: a reconnect wins.
            await session.execute(
                update(Organization)
                .where(
                    Organization.id == claim.organization_id,
                    Organization.twilio_auth_token == flag_credentials,
                )
                .values(
                    twilio_credentials_valid=False,
                    twilio_credentials_error=error,
                    twilio_credentials_checked_at=now,
                )
            )
        if run.kind == ImportKind.CATCHUP and run.state == ImportState.FINISHED:
            # Twilio just answered a whole listing: bodies that failed in an earlier outage
            # get another try.
            await messaging.requeue_failed_bodies(
                session, claim.organization_id, transient_only=True
            )
        await session.flush()
        payload = import_json(run)
        if run.kind == ImportKind.HISTORY:
            await append_event(session, claim.organization_id, EVT_IMPORT_FINISHED, payload)
        elif run.imported and run.state == ImportState.FINISHED:
            await append_event(session, claim.organization_id, EVT_CATCHUP_FINISHED, payload)
        await commit(session, ctx.notifier)
    log.info(
        "import.finished",
        run_id=run.id,
        org_id=claim.organization_id,
        kind=run.kind,
        state=run.state,
        imported=run.imported,
        skipped=run.skipped,
        pages=run.pages,
    )
    return True
