"""Message writes after capture — body enrichment, its retries and requeues — and the reads
of the inbox (last messages, conversations). The capture flow is ``messaging/capture.py``.

Every function works inside the caller's transaction and appends the realtime events it
causes to the event log in that same transaction; the caller commits with
``realtime.log.commit`` so listeners wake only once the change is durable.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.contacts import service as contacts
from loquent.db import utcnow
from loquent.messaging.events import EVT_MESSAGE_STATUS
from loquent.messaging.models import BodyState, Message, MessageMedia
from loquent.messaging.schemas import FetchedMessage, message_json
from loquent.messaging.statuses import should_advance
from loquent.realtime.log import append_event, wake_jobs_after_commit

log = structlog.get_logger(__name__)


# --- body enrichment ------------------------------------------------------------------------


async def apply_fetched_message(
    session: AsyncSession, message_id: int, fetched: FetchedMessage
) -> bool:
    """Store what Twilio's API returned for a pending message. False if it was not pending."""
    return bool(await apply_fetched_messages(session, {message_id: fetched}))


async def apply_fetched_messages(
    session: AsyncSession, fetched: dict[int, FetchedMessage]
) -> list[int]:
    """``apply_fetched_message`` for many messages in a handful of statements (a page of a
    listing at a time, see ``bulk_enrichment``): the rows locked and read in one SELECT,
    their media and contacts in one statement each, one event per message. Returns the ids
    stored; rows no longer pending are left alone."""
    if not fetched:
        return []
    messages = list(
        (
            await session.execute(
                select(Message)
                .where(Message.id.in_(list(fetched)), Message.body_state == BodyState.PENDING)
                .order_by(Message.id)
                .with_for_update()
                .execution_options(populate_existing=True)
            )
        ).scalars()
    )
    if not messages:
        return []
    existing_media = {
        (row[0], row[1])
        for row in await session.execute(
            select(MessageMedia.message_id, MessageMedia.media_sid).where(
                MessageMedia.message_id.in_([m.id for m in messages])
            )
        )
    }
    contacted: dict[int, datetime] = {}
    for message in messages:
        answer = fetched[message.id]
        if answer.body:
            message.body = answer.body
            message.body_state = BodyState.READY
        else:
            message.body_state = BodyState.EMPTY
        message.body_error = None  # the errors of earlier attempts no longer describe the row
        if answer.status and should_advance(message.status, answer.status):
            message.status = answer.status
            if answer.error_code:
                message.error_code = answer.error_code
        message.num_media = answer.num_media
        if answer.created_at is not None:
            # Twilio's own time of the message beats the time of whichever event we saw first.
            message.created_at = answer.created_at
            seen = contacted.get(message.contact_id)
            contacted[message.contact_id] = max(seen or answer.created_at, answer.created_at)
        for media in answer.media:
            if (message.id, media.sid) not in existing_media:
                session.add(
                    MessageMedia(
                        message_id=message.id, media_sid=media.sid, content_type=media.content_type
                    )
                )
        _finish_job(message)
    await contacts.touch_last_contacted_many(session, contacted)
    await session.flush()
    for message in messages:
        await append_event(
            session, message.organization_id, EVT_MESSAGE_STATUS, message_json(message)
        )
    return [m.id for m in messages]


async def mark_body_failed(session: AsyncSession, message_id: int, reason: str) -> bool:
    message = await _pending(session, message_id)
    if message is None:
        return False
    message.body_state = "failed"
    message.body_error = reason[:500]
    _finish_job(message)
    await session.flush()
    await append_event(session, message.organization_id, EVT_MESSAGE_STATUS, message_json(message))
    return True


async def schedule_body_retry(
    session: AsyncSession,
    message_id: int,
    *,
    delay: timedelta,
    reason: str,
    count_attempt: bool,
    not_found: int = 0,
    at: datetime | None = None,
) -> None:
    """Put a claimed message back for a later attempt (the lease is released).

    ``not_found`` is the run of consecutive 404s so far (0 when this answer was not one).
    ``at``, when given, is the moment of the next attempt instead of now + ``delay`` (a
    listing run hands its bodies back due together).
    """
    message = await _pending(session, message_id)
    if message is None:
        return
    if not count_attempt:
        message.body_attempts = max(0, message.body_attempts - 1)
    message.body_next_attempt_at = at if at is not None else utcnow() + delay
    message.body_locked_until = None
    message.body_error = reason[:500]
    message.body_not_found = not_found


async def restart_body_deadlines(session: AsyncSession, org_id: int) -> None:
    """Clear ``body_pending_since`` of the organization's pending bodies, so each gets a full
    retry deadline from its next claim (after a pause: rejected or missing credentials)."""
    await session.execute(
        update(Message)
        .where(Message.organization_id == org_id, Message.body_state == BodyState.PENDING)
        .values(body_pending_since=None, updated_at=Message.updated_at)
        .execution_options(synchronize_session=False)
    )


class BodyCounts(NamedTuple):
    pending: int
    failed: int


async def count_bodies(session: AsyncSession, org_id: int) -> BodyCounts:
    """How many of the organization's bodies are still to be fetched, and how many failed."""
    rows = await session.execute(
        select(Message.body_state, func.count())
        .where(
            Message.organization_id == org_id,
            Message.body_state.in_((BodyState.PENDING, BodyState.FAILED)),
        )
        .group_by(Message.body_state)
    )
    counts = {state: int(n) for state, n in rows.all()}
    return BodyCounts(
        pending=counts.get(BodyState.PENDING, 0), failed=counts.get(BodyState.FAILED, 0)
    )


async def requeue_failed_bodies(
    session: AsyncSession, org_id: int, *, transient_only: bool = False
) -> int:
    """Put every ``failed`` body of the organization back to ``pending``; returns how many.

    ``transient_only`` leaves out bodies Twilio answered 404 for (the periodic catch-up uses
    it: a message Twilio no longer has will not come back, and would be re-asked for every
    interval forever).

    Each starts over: attempts and 404s reset, due at once, and a fresh retry deadline (its
    clock starts at the next claim). For whoever learns that fetching may work again: the
    settings page's "Retry failed", a reconnect with new credentials, the periodic catch-up.
    Works in the caller's transaction; the worker is woken when the caller commits with
    ``realtime.log.commit``. No event is published per message: the feed patches each one
    when its body arrives (or fails again).
    """
    now = utcnow()
    failed = [Message.organization_id == org_id, Message.body_state == BodyState.FAILED]
    if transient_only:
        failed.append(Message.body_not_found == 0)
    result = await session.execute(
        update(Message)
        .where(*failed)
        .values(
            body_state=BodyState.PENDING,
            body_attempts=0,
            body_not_found=0,
            body_next_attempt_at=now,
            body_locked_until=None,
            body_pending_since=None,
            body_error=None,
            updated_at=Message.updated_at,  # bookkeeping, not a change to the message
        )
        .execution_options(synchronize_session=False)
    )
    requeued = int(getattr(result, "rowcount", 0) or 0)
    if requeued:
        wake_jobs_after_commit(session)
        log.info("enrich.requeued", org_id=org_id, requeued=requeued)
    return requeued


async def _pending(session: AsyncSession, message_id: int) -> Message | None:
    result = await session.execute(
        select(Message)
        .where(Message.id == message_id, Message.body_state == "pending")
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return result.scalar_one_or_none()


def _finish_job(message: Message) -> None:
    message.body_next_attempt_at = None
    message.body_locked_until = None
    message.updated_at = utcnow()


# --- reading --------------------------------------------------------------------------------


async def last_messages(
    session: AsyncSession, org_id: int, contact_ids: list[int]
) -> dict[int, Message]:
    """The newest message of each given contact, in one query."""
    if not contact_ids:
        return {}
    ranked = (
        select(
            Message.id,
            func.row_number()
            .over(
                partition_by=Message.contact_id,
                order_by=(Message.created_at.desc(), Message.id.desc()),
            )
            .label("rn"),
        )
        .where(Message.organization_id == org_id, Message.contact_id.in_(contact_ids))
        .subquery()
    )
    result = await session.execute(
        select(Message).join(ranked, ranked.c.id == Message.id).where(ranked.c.rn == 1)
    )
    return {m.contact_id: m for m in result.scalars()}


async def list_conversation(
    session: AsyncSession,
    org_id: int,
    contact_id: int,
    *,
    limit: int,
    before: tuple[datetime, int] | None,
) -> list[Message]:
    """Up to ``limit`` messages older than ``before``, returned oldest→newest."""
    stmt = select(Message).where(
        Message.organization_id == org_id, Message.contact_id == contact_id
    )
    if before is not None:
        at, last_id = before
        stmt = stmt.where(
            (Message.created_at < at) | ((Message.created_at == at) & (Message.id < last_id))
        )
    stmt = stmt.order_by(Message.created_at.desc(), Message.id.desc()).limit(limit)
    rows = list((await session.execute(stmt)).scalars())
    rows.reverse()
    return rows
