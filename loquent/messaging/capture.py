"""The capture flow: a Twilio event for a message, recorded once.

Status events update a known message (status never regresses) or, for a SID the inbox has
never seen, capture the message sent elsewhere: phone ownership decides the direction, the
counterpart's contact is resolved or created, and the row is inserted once per SID
(``INSERT … ON CONFLICT DO NOTHING``; the loser of a race becomes a status update of the
winner's row). Inbound texts are recorded the same way, with their body.

Every function works inside the caller's transaction and appends the realtime events it
causes to the event log in that same transaction; the caller commits with
``realtime.log.commit`` so listeners wake only once the change is durable. Enrichment writes
and reads live in ``messaging/service.py``.
"""

from __future__ import annotations

import enum
from datetime import datetime

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.contacts import service as contacts
from loquent.contacts.phones import try_normalize
from loquent.db import dialect_insert, utcnow
from loquent.messaging import send as sends
from loquent.messaging.events import EVT_MESSAGE_NEW, EVT_MESSAGE_STATUS
from loquent.messaging.models import Message
from loquent.messaging.schemas import InboundText, StatusReport, message_json
from loquent.messaging.statuses import should_advance
from loquent.orgs import service as orgs
from loquent.realtime.log import append_event, wake_jobs_after_commit

log = structlog.get_logger(__name__)


class Outcome(enum.StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    UNMATCHED = "unmatched"  # neither number is one of the organization's lines


def normalize_address(raw: str) -> str:
    """E.164 for phone numbers; other senders (alphanumeric ids, short codes) kept as given."""
    return try_normalize(raw) or raw.strip()


async def find_by_sid(
    session: AsyncSession, org_id: int, sid: str, *, for_update: bool = False
) -> Message | None:
    stmt = select(Message).where(Message.organization_id == org_id, Message.external_id == sid)
    if for_update:
        stmt = stmt.with_for_update()
    return (
        await session.execute(stmt.execution_options(populate_existing=True))
    ).scalar_one_or_none()


# --- status events ------------------------------------------------------------------------


async def record_status_report(session: AsyncSession, org_id: int, report: StatusReport) -> Outcome:
    """Apply a status report: update a known message, or capture one sent elsewhere."""
    message = await find_by_sid(session, org_id, report.message_sid, for_update=True)
    if message is not None:
        return await _apply_status(session, message, report)
    return await _capture_external(session, org_id, report)


async def _apply_status(session: AsyncSession, message: Message, report: StatusReport) -> Outcome:
    changed = False
    if should_advance(message.status, report.status):
        message.status = report.status
        changed = True
        if report.error_code and report.error_code != message.error_code:
            message.error_code = report.error_code
    if report.body and message.body is None:
        message.body = report.body
        message.body_state = "ready"
        changed = True
    if not changed:
        return Outcome.UNCHANGED
    message.updated_at = utcnow()
    await session.flush()
    await append_event(session, message.organization_id, EVT_MESSAGE_STATUS, message_json(message))
    return Outcome.UPDATED


async def _capture_external(session: AsyncSession, org_id: int, report: StatusReport) -> Outcome:
    """External SMS capture: a status event for a message this inbox has never seen."""
    sender = normalize_address(report.from_address)
    recipient = normalize_address(report.to_address)
    lines = await orgs.find_lines(session, org_id, {sender, recipient})
    if line := lines.get(sender):
        direction, counterpart = "outbound", recipient
        # A reply sent from the inbox whose create answer has not reached us yet.
        own = await sends.claim_in_flight(session, org_id, line.id, recipient, report.message_sid)
        if own is not None:
            return await _apply_status(session, own, report)
    elif line := lines.get(recipient):
        direction, counterpart = "inbound", sender
    else:
        await orgs.record_unmatched_event(session, org_id)
        log.info(
            "capture.unmatched",
            org_id=org_id,
            message_sid=report.message_sid,
            reason="neither number is an organization line",
        )
        return Outcome.UNMATCHED

    contact = await contacts.resolve_or_create(session, org_id, counterpart, source="external_sms")
    message = await _create_message(
        session,
        org_id=org_id,
        contact_id=contact.id,
        line_id=line.id,
        direction=direction,
        sender=sender,
        recipient=recipient,
        sid=report.message_sid,
        status=report.status,
        error_code=report.error_code,
        source="external",
        body=report.body,
        num_media=report.num_media or 0,
        at=report.occurred_at or utcnow(),
        fetch_body=True,
    )
    if message is None:
        # Another transaction inserted this SID first: our event is a status update of its row.
        winner = await find_by_sid(session, org_id, report.message_sid, for_update=True)
        if winner is None:  # pragma: no cover - the winner's row is committed by now
            raise RuntimeError("unique conflict on message without a visible winner")
        return await _apply_status(session, winner, report)
    log.info(
        "capture.created",
        org_id=org_id,
        message_id=message.id,
        message_sid=report.message_sid,
        direction=direction,
    )
    return Outcome.CREATED


async def _create_message(
    session: AsyncSession,
    *,
    org_id: int,
    contact_id: int,
    line_id: int,
    direction: str,
    sender: str,
    recipient: str,
    sid: str,
    status: str,
    error_code: str | None,
    source: str,
    body: str | None,
    num_media: int,
    at: datetime,
    fetch_body: bool,
) -> Message | None:
    """Insert a message once per SID and, if this transaction won, do what a new message
    implies in the same transaction: move the contact forward, publish ``message.new`` and
    leave the body pending for the worker when it must be fetched. None if the SID existed.
    """
    has_body = bool(body)
    body_state = "ready" if has_body else ("pending" if fetch_body else "empty")
    message = await _insert_once(
        session,
        organization_id=org_id,
        contact_id=contact_id,
        phone_number_id=line_id,
        channel="sms",
        direction=direction,
        from_address=sender,
        to_address=recipient,
        body=body if has_body else None,
        status=status,
        error_code=error_code,
        source=source,
        external_id=sid,
        num_media=num_media,
        created_at=at,
        updated_at=utcnow(),
        body_state=body_state,
        body_attempts=0,
        body_next_attempt_at=utcnow() if body_state == "pending" else None,
    )
    if message is None:
        return None
    await contacts.touch_last_contacted(session, contact_id, at)
    await append_event(session, org_id, EVT_MESSAGE_NEW, message_json(message))
    if body_state == "pending":
        wake_jobs_after_commit(session)
    return message


async def _insert_once(session: AsyncSession, **values: object) -> Message | None:
    """INSERT … ON CONFLICT (organization_id, external_id) DO NOTHING RETURNING the row.

    Returns None when a row with that SID already exists. On PostgreSQL a concurrent insert
    of the same SID waits for the other transaction and then does nothing, so exactly one
    wins without an exception or a rolled-back transaction.
    """
    insert = dialect_insert(session)
    stmt = (
        insert(Message)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["organization_id", "external_id"])
        .returning(Message)
    )
    return (await session.scalars(stmt)).one_or_none()


# --- inbound texts --------------------------------------------------------------------------


async def record_inbound_text(session: AsyncSession, org_id: int, text: InboundText) -> Outcome:
    """A text that arrived on one of the organization's lines, with its body."""
    existing = await find_by_sid(session, org_id, text.message_sid, for_update=True)
    if existing is not None:  # a redelivery, or the status path saw it first
        return await _apply_status(
            session,
            existing,
            StatusReport(
                message_sid=text.message_sid,
                status="received",
                from_address=text.from_address,
                to_address=text.to_address,
                body=text.body,
            ),
        )
    sender = normalize_address(text.from_address)
    recipient = normalize_address(text.to_address)
    # Twilio only delivers inbound texts for numbers on the account, so the receiving number
    # is an organization line even if it has not been imported yet.
    line = await orgs.add_phone_number(session, org_id, recipient)
    contact = await contacts.resolve_or_create(session, org_id, sender, source="inbound_sms")
    message = await _create_message(
        session,
        org_id=org_id,
        contact_id=contact.id,
        line_id=line.id,
        direction="inbound",
        sender=sender,
        recipient=recipient,
        sid=text.message_sid,
        status="received",
        error_code=None,
        source="loquent",
        body=text.body,
        num_media=text.num_media,
        at=text.occurred_at or utcnow(),
        # An MMS with no text still has media worth fetching; a bare empty SMS is just empty.
        fetch_body=bool(text.num_media),
    )
    return Outcome.CREATED if message is not None else Outcome.UNCHANGED
