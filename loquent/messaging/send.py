"""Replies sent from the inbox: ``POST …/Messages.json``, idempotent and safe against the send race.

One send, in order:

1. **Check** the request (body, contact, its number, the line, the Twilio connection).
   Nothing is written and Twilio is not called when one of them fails.
2. **Transaction 1** writes, before Twilio hears of the text: the message row (``source``
   loquent, ``status`` queued, ``external_id`` NULL, body ready), the contact's
   ``last_contacted_at``, ``messaging.message.new``, and a ``MessageSend`` row that holds the
   Idempotency-Key (unique per organization) and the in-flight slot (unique per line and
   recipient). It commits, so other writers can run while Twilio is on the line.
3. **Twilio** is called with no transaction open.
4. **Transaction 2** applies Twilio's answer to the row (its SID, its status — never
   regressing), frees the slot, stores the answer for retries and publishes
   ``messaging.message.status``.

The send race: Twilio can deliver the first status events for the new SID (Event Streams)
before its answer to our POST reaches us. Those events find no row with that SID and would
be captured as an ``external`` message. Instead, external capture asks
``claim_in_flight`` first: an outbound event from one of the organization's lines to a
recipient that has a send in flight from that line belongs to that send — the slot is
unique per (line, recipient), so there is never more than one candidate. The claim sets the
row's SID; transaction 2 then finds the SID already there and only applies the status.
Both sides lock the ``MessageSend`` row and then the message row, so on PostgreSQL they
serialize; once the slot is freed, events find the row by its SID the ordinary way.

Idempotency: a retry with the same key gets the stored first answer (status and body). The
key is claimed in transaction 1, before Twilio is called, so concurrent requests with one
key send once; the others wait for the first answer. Requests rejected in step 1 store
nothing (nothing was attempted), so a corrected retry may reuse the key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.config import Settings
from loquent.contacts import service as contacts
from loquent.db import Database, is_unique_violation, utcnow
from loquent.messaging import capture, service
from loquent.messaging.events import EVT_MESSAGE_NEW, EVT_MESSAGE_STATUS
from loquent.messaging.models import Message, MessageSend
from loquent.messaging.schemas import StatusReport, message_json
from loquent.messaging.statuses import should_advance
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization, PhoneNumber
from loquent.realtime.log import append_event, commit, discard_pending_wakeups
from loquent.realtime.notifier import Notifier
from loquent.twilio.client import (
    TwilioAuthError,
    TwilioClient,
    TwilioError,
    TwilioRateLimited,
    TwilioUnavailable,
)

log = structlog.get_logger(__name__)

MAX_BODY_CHARS = 1600  # Twilio's limit for one (concatenated) SMS
MAX_IDEMPOTENCY_KEY_CHARS = 255
# A send still in flight this long after Twilio's timeout is presumed dead (its process
# crashed): its slot may be taken over and its message is marked failed.
LEASE_MARGIN_SECONDS = 30
_POLL_SECONDS = 0.1


@dataclass
class SendContext:
    """What a send needs from the process it runs in."""

    db: Database
    notifier: Notifier | None
    settings: Settings
    box: SecretBox
    http: httpx.AsyncClient


@dataclass(frozen=True)
class SendRequest:
    contact_id: int
    body: str
    phone_number_id: int | None = None
    idempotency_key: str | None = None

    def fingerprint(self) -> str:
        canonical = json.dumps(
            {
                "contact_id": self.contact_id,
                "phone_number_id": self.phone_number_id,
                "body": self.body,
            },
            sort_keys=True,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class SendOutcome:
    """The answer to give (and to give again to a retry with the same key)."""

    status_code: int
    payload: dict[str, Any]
    replayed: bool = False


class SendRejected(Exception):
    """The request cannot be sent as it is; nothing was written and Twilio was not called."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


def error_payload(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, **extra}}


@dataclass(frozen=True)
class _Plan:
    """What step 1 established: who, from which line, with which credentials."""

    contact_id: int
    line_id: int
    line_number: str
    recipient: str
    account_sid: str
    token_ciphertext: str  # to tell later whether the org has reconnected since
    auth_token: str = field(repr=False)


@dataclass(frozen=True)
class _Started:
    send_id: int
    message_id: int


class _SlotBusy(Exception):
    """Another text to this recipient from this line is waiting for Twilio's answer."""


# --- the flow -------------------------------------------------------------------------------


async def send_message(ctx: SendContext, org_id: int, request: SendRequest) -> SendOutcome:
    _check_body(request.body)
    key = request.idempotency_key
    if key is not None:
        _check_key(key)
    fingerprint = request.fingerprint()
    wait_until = time.monotonic() + ctx.settings.twilio_timeout_seconds + 5
    while True:
        if key is not None:
            replay = await _replay(ctx, org_id, key, fingerprint)
            if replay is not None:
                return replay
        plan = await _plan(ctx, org_id, request)
        try:
            if await _slot_taken(ctx, plan):  # wait without queueing for the write lock
                raise _SlotBusy()
            started = await _start(ctx, org_id, request, plan, fingerprint)
            break
        except _SlotBusy:
            busy = SendRejected(
                409,
                "send_in_progress",
                "Another text to this number from this line is still being sent. "
                "Try again in a moment.",
            )
        except IntegrityError as exc:
            if not is_unique_violation(exc):
                raise
            # The same key or the same slot was claimed concurrently: look again.
            busy = SendRejected(409, "send_in_progress", "A send with this key is in progress.")
        if time.monotonic() > wait_until:
            raise busy
        await asyncio.sleep(_POLL_SECONDS)

    bound = log.bind(org_id=org_id, message_id=started.message_id)
    client = TwilioClient(
        ctx.settings.twilio_api_base,
        plan.account_sid,
        plan.auth_token,
        timeout=ctx.settings.twilio_timeout_seconds,
        http=ctx.http,
    )
    try:
        answer = await client.create_message(
            from_=plan.line_number, to=plan.recipient, body=request.body
        )
    except TwilioError as exc:
        bound.warning("send.twilio_error", status=exc.status, code=exc.code, error=exc.message)
        return await _finish_failed(ctx, org_id, started, plan, exc)
    sid = answer.get("sid")
    if not isinstance(sid, str) or not sid or len(sid) > 34:
        garbled = TwilioUnavailable("Twilio answered without a message SID", status=201)
        return await _finish_failed(ctx, org_id, started, plan, garbled)
    outcome = await _finish_created(ctx, org_id, started, answer, sid)
    bound.info("send.created", message_sid=sid, status=outcome.payload.get("status"))
    return outcome


def _check_body(body: str) -> None:
    if not body.strip():
        raise SendRejected(422, "empty_body", "The text is empty.")
    if len(body) > MAX_BODY_CHARS:
        raise SendRejected(
            422,
            "body_too_long",
            f"The text is {len(body)} characters long; at most {MAX_BODY_CHARS} can be sent.",
        )


def _check_key(key: str) -> None:
    printable = key.isascii() and key.isprintable()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not printable:
        raise SendRejected(
            422,
            "invalid_idempotency_key",
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII characters.",
        )


async def _plan(ctx: SendContext, org_id: int, request: SendRequest) -> _Plan:
    async with ctx.db.reader() as session:
        contact = await contacts.get_contact(session, org_id, request.contact_id)
        if contact is None:
            raise SendRejected(404, "not_found", "There is no such contact.")
        recipient = await contacts.preferred_number(session, contact.id)
        if not recipient:
            raise SendRejected(422, "contact_has_no_phone", "This contact has no phone number.")
        line = await _line(session, org_id, contact.id, request.phone_number_id)
        org = await session.get(Organization, org_id)
    if org is None or not org.twilio_account_sid or not org.twilio_auth_token:
        raise SendRejected(
            409, "twilio_not_connected", "No Twilio account is connected to this organization."
        )
    if not org.twilio_credentials_valid:
        raise SendRejected(
            502,
            "twilio_credentials_rejected",
            "Twilio rejected this organization's credentials. "
            "An owner must reconnect the account in Settings before texts can be sent.",
        )
    try:
        auth_token = ctx.box.decrypt(org.twilio_auth_token)
    except ValueError:  # the secret key changed without keeping the old one
        raise SendRejected(
            502,
            "twilio_credentials_unreadable",
            "The stored Twilio credentials cannot be read. "
            "An owner must reconnect the account in Settings.",
        ) from None
    return _Plan(
        contact_id=contact.id,
        line_id=line.id,
        line_number=line.number,
        recipient=recipient,
        account_sid=org.twilio_account_sid,
        token_ciphertext=org.twilio_auth_token,
        auth_token=auth_token,
    )


async def _line(
    session: AsyncSession, org_id: int, contact_id: int, requested: int | None
) -> PhoneNumber:
    """The requested line, else the line of the contact's latest message, else the first."""
    if requested is not None:
        line = await session.get(PhoneNumber, requested)
        if line is None or line.organization_id != org_id:
            raise SendRejected(404, "not_found", "There is no such line in this organization.")
        return line
    latest = (await service.last_messages(session, org_id, [contact_id])).get(contact_id)
    if latest is not None and latest.phone_number_id is not None:
        line = await session.get(PhoneNumber, latest.phone_number_id)
        if line is not None:
            return line
    lines = await orgs.list_lines(session, org_id)
    if not lines:
        raise SendRejected(
            422,
            "no_line",
            "This organization has no phone line to send from. Import one in Settings.",
        )
    return lines[0]


async def _slot_taken(ctx: SendContext, plan: _Plan) -> bool:
    async with ctx.db.reader() as session:
        lease = await session.scalar(
            select(MessageSend.lease_until).where(
                MessageSend.inflight_line_id == plan.line_id,
                MessageSend.inflight_to == plan.recipient,
            )
        )
    return lease is not None and lease > utcnow()


async def _start(
    ctx: SendContext, org_id: int, request: SendRequest, plan: _Plan, fingerprint: str
) -> _Started:
    """Transaction 1: the row, the key and the in-flight slot, before Twilio hears of it."""
    async with ctx.db.session() as session:
        try:
            now = utcnow()
            holder = (
                await session.execute(
                    select(MessageSend)
                    .where(
                        MessageSend.inflight_line_id == plan.line_id,
                        MessageSend.inflight_to == plan.recipient,
                    )
                    .with_for_update()
                )
            ).scalar_one_or_none()
            if holder is not None:
                if holder.lease_until is not None and holder.lease_until > now:
                    raise _SlotBusy()
                await _expire(session, holder)
            message = Message(
                organization_id=org_id,
                contact_id=plan.contact_id,
                phone_number_id=plan.line_id,
                channel="sms",
                direction="outbound",
                from_address=plan.line_number,
                to_address=plan.recipient,
                body=request.body,
                status="queued",
                error_code=None,
                source="loquent",
                external_id=None,
                num_media=0,
                created_at=now,
                updated_at=now,
                body_state="ready",
                body_attempts=0,
            )
            session.add(message)
            await session.flush()
            lease = timedelta(seconds=ctx.settings.twilio_timeout_seconds + LEASE_MARGIN_SECONDS)
            send = MessageSend(
                organization_id=org_id,
                message_id=message.id,
                idempotency_key=request.idempotency_key,
                fingerprint=fingerprint,
                inflight_line_id=plan.line_id,
                inflight_to=plan.recipient,
                lease_until=now + lease,
                created_at=now,
            )
            session.add(send)
            await session.flush()
            await contacts.touch_last_contacted(session, plan.contact_id, now)
            await append_event(session, org_id, EVT_MESSAGE_NEW, message_json(message))
            await commit(session, ctx.notifier)
        except BaseException:
            discard_pending_wakeups(session)
            raise
        return _Started(send_id=send.id, message_id=message.id)


async def _replay(ctx: SendContext, org_id: int, key: str, fingerprint: str) -> SendOutcome | None:
    """The stored answer for ``key``; waits while its first request is still in flight."""
    wait_until = time.monotonic() + ctx.settings.twilio_timeout_seconds + 5
    while True:
        async with ctx.db.reader() as session:
            prior = (
                await session.execute(
                    select(MessageSend).where(
                        MessageSend.organization_id == org_id, MessageSend.idempotency_key == key
                    )
                )
            ).scalar_one_or_none()
        if prior is None:
            return None
        if prior.fingerprint != fingerprint:
            raise SendRejected(
                422,
                "idempotency_key_reused",
                "This Idempotency-Key was already used for a different request.",
            )
        if prior.response_status is not None and prior.response_body is not None:
            return SendOutcome(prior.response_status, prior.response_body, replayed=True)
        if prior.lease_until is not None and prior.lease_until <= utcnow():
            await _expire_by_id(ctx, prior.id)
            continue
        if time.monotonic() > wait_until:
            raise SendRejected(
                409, "idempotency_key_in_use", "A request with this Idempotency-Key is in progress."
            )
        await asyncio.sleep(_POLL_SECONDS)


# --- transaction 2 --------------------------------------------------------------------------


async def _locked(session: AsyncSession, started: _Started) -> tuple[MessageSend, Message]:
    # Always the send row first, then the message: the same order as claim_in_flight.
    send = (
        await session.execute(
            select(MessageSend)
            .where(MessageSend.id == started.send_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    message = (
        await session.execute(
            select(Message)
            .where(Message.id == started.message_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one()
    return send, message


def _release(send: MessageSend, status_code: int, payload: dict[str, Any]) -> None:
    send.inflight_line_id = None
    send.inflight_to = None
    send.lease_until = None
    send.finished_at = utcnow()
    send.response_status = status_code
    send.response_body = payload


async def _finish_created(
    ctx: SendContext, org_id: int, started: _Started, answer: dict[str, Any], sid: str
) -> SendOutcome:
    raw_status = answer.get("status")
    status = raw_status.lower() if isinstance(raw_status, str) and raw_status else "queued"
    raw_code = answer.get("error_code")
    error_code = str(raw_code) if raw_code not in (None, "") else None
    async with ctx.db.session() as session:
        try:
            send, message = await _locked(session, started)
            changed = False
            if message.external_id is None:
                captured = await capture.find_by_sid(session, org_id, sid, for_update=True)
                if captured is not None:
                    await _absorb(session, message, captured)
                message.external_id = sid
                changed = True
            elif message.external_id != sid:
                # An event for another message from this line to this recipient (sent from
                # the Console meanwhile) claimed our row: give it back as the external
                # message it is, and take our own SID.
                await _return_misclaimed(session, org_id, message, sid)
                changed = True
            if should_advance(message.status, status):
                message.status = status
                changed = True
                if error_code:
                    message.error_code = error_code
            if changed:
                message.updated_at = utcnow()
            await session.flush()
            payload = message_json(message)
            if changed:
                await append_event(session, org_id, EVT_MESSAGE_STATUS, payload)
            _release(send, 201, payload)
            await commit(session, ctx.notifier)
        except BaseException:
            discard_pending_wakeups(session)
            raise
    return SendOutcome(201, payload)


async def _absorb(session: AsyncSession, message: Message, captured: Message) -> None:
    """Our SID was captured as an external message after all (the slot was lost: a send
    presumed dead and taken over). One text, one row: ours stays — it is the one the sender
    and the Idempotency-Key know — with the further status; the captured copy goes."""
    log.warning(
        "send.captured_twice",
        message_id=message.id,
        captured_id=captured.id,
        sid=captured.external_id,
    )
    if should_advance(message.status, captured.status):
        message.status = captured.status
        message.error_code = captured.error_code
    await session.delete(captured)
    await session.flush()


async def _return_misclaimed(
    session: AsyncSession, org_id: int, message: Message, sid: str | None
) -> None:
    """Our row was claimed by an event of another message from this line to this recipient
    (sent from the Console meanwhile): that message is captured as the external message it
    is, and our row gets back its own SID (None when Twilio refused our text)."""
    other_sid, other_status = message.external_id, message.status
    if other_sid is None:  # only a row claimed by another message's SID gets here
        raise RuntimeError("a misclaimed send row without the claiming SID")
    log.warning("send.misclaimed", message_id=message.id, other_sid=other_sid, message_sid=sid)
    message.external_id = sid
    message.status = "queued"
    message.error_code = None
    await session.flush()
    await capture.record_status_report(
        session,
        org_id,
        StatusReport(
            message_sid=other_sid,
            status=other_status,
            from_address=message.from_address,
            to_address=message.to_address,
        ),
    )


def _failure(exc: TwilioError) -> tuple[int, str, str, str | None]:
    """(HTTP status, error code, message for the user, error_code to store) for an error."""
    if isinstance(exc, TwilioAuthError):
        return (
            502,
            "twilio_credentials_rejected",
            f"Twilio rejected this organization's credentials ({exc.message}). "
            "An owner must reconnect the account in Settings; the text was not sent.",
            str(exc.code) if exc.code else None,
        )
    if isinstance(exc, TwilioRateLimited):
        return (
            503,
            "twilio_rate_limited",
            "Twilio is limiting how fast this account can send; the text was not sent. "
            "Try again in a moment.",
            str(exc.code) if exc.code else None,
        )
    if isinstance(exc, TwilioUnavailable) or exc.status is None or exc.status >= 500:
        return (
            502,
            "twilio_unavailable",
            f"Twilio could not take the text ({exc}); it is marked as not sent.",
            None,
        )
    # Any other 4xx (TwilioBadRequest, TwilioNotFound): Twilio refused this text.
    code = f"twilio_{exc.code}" if exc.code else "twilio_rejected"
    return 422, code, exc.message, str(exc.code) if exc.code else None


async def _finish_failed(
    ctx: SendContext, org_id: int, started: _Started, plan: _Plan, exc: TwilioError
) -> SendOutcome:
    status_code, code, text, stored_code = _failure(exc)
    async with ctx.db.session() as session:
        try:
            if isinstance(exc, TwilioAuthError):
                # As enrichment does: only if the token Twilio refused is still the stored one
                # (an owner who reconnected meanwhile keeps the fresh credentials).
                current = await session.scalar(
                    select(Organization.twilio_auth_token).where(Organization.id == org_id)
                )
                if current == plan.token_ciphertext:
                    reason = f"Twilio rejected the credentials: {exc}"
                    await orgs.mark_credentials_invalid(session, org_id, reason[:500])
            send, message = await _locked(session, started)
            if message.external_id is not None:
                await _return_misclaimed(session, org_id, message, None)
            message.status = "failed"
            message.error_code = stored_code
            message.updated_at = utcnow()
            await session.flush()
            await append_event(session, org_id, EVT_MESSAGE_STATUS, message_json(message))
            payload = error_payload(code, text, failed_message=message_json(message))
            _release(send, status_code, payload)
            await commit(session, ctx.notifier)
        except BaseException:
            discard_pending_wakeups(session)
            raise
    return SendOutcome(status_code, payload)


# --- dead sends -----------------------------------------------------------------------------


async def _expire(session: AsyncSession, send: MessageSend) -> None:
    """A send whose process died before Twilio's answer was stored: it is marked failed,
    unless a status event has meanwhile told us Twilio took it."""
    message = (
        await session.execute(
            select(Message)
            .where(Message.id == send.message_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    text = "The send was interrupted before Twilio answered; it may not have been sent."
    if message is not None and message.external_id is None:
        message.status = "failed"
        message.updated_at = utcnow()
        await session.flush()
        await append_event(session, send.organization_id, EVT_MESSAGE_STATUS, message_json(message))
    if message is not None and message.external_id is not None:
        _release(send, 201, message_json(message))
    else:
        failed = message_json(message) if message is not None else None
        _release(send, 502, error_payload("send_interrupted", text, failed_message=failed))
    await session.flush()


async def _expire_by_id(ctx: SendContext, send_id: int) -> None:
    async with ctx.db.session() as session:
        try:
            send = (
                await session.execute(
                    select(MessageSend)
                    .where(MessageSend.id == send_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if send is not None and send.response_status is None:
                await _expire(session, send)
            await commit(session, ctx.notifier)
        except BaseException:
            discard_pending_wakeups(session)
            raise


# --- the send race: called by external capture ----------------------------------------------


async def claim_in_flight(
    session: AsyncSession, org_id: int, line_id: int, recipient: str, sid: str
) -> Message | None:
    """The inbox's own outbound row that an unknown-SID status event belongs to, if any.

    An event for a SID we have not stored, from ``line_id`` to ``recipient``, while a send
    between them is waiting for Twilio's answer, is that send's event: Twilio told Event
    Streams before it told us. The row takes the SID here (the answer, when it comes, finds
    it set and only applies its status). None when no send is in flight there, or the
    in-flight row already carries another SID.
    """
    send = (
        await session.execute(
            select(MessageSend)
            .where(
                MessageSend.organization_id == org_id,
                MessageSend.inflight_line_id == line_id,
                MessageSend.inflight_to == recipient,
            )
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if send is None:
        return None
    message = (
        await session.execute(
            select(Message)
            .where(Message.id == send.message_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if message is None:
        return None
    if message.external_id is None:
        message.external_id = sid
        await session.flush()
        log.info("send.claimed_early_event", message_id=message.id, message_sid=sid)
        return message
    return message if message.external_id == sid else None


# --- what the compose box offers ------------------------------------------------------------


@dataclass(frozen=True)
class ComposeLine:
    id: int
    number: str
    label: str


@dataclass(frozen=True)
class ComposeOptions:
    """The conversation page's compose box: the lines to pick from, the one picked by
    default (as the send API would pick it), and why sending is impossible, if it is."""

    lines: list[ComposeLine]
    default_line_id: int | None
    disabled_reason: str | None


async def compose_options(session: AsyncSession, org_id: int, contact_id: int) -> ComposeOptions:
    lines = await orgs.list_lines(session, org_id)
    options = [
        ComposeLine(
            id=line.id,
            number=line.number,
            label=f"{line.friendly_name} ({line.number})" if line.friendly_name else line.number,
        )
        for line in lines
    ]
    default = None
    reason = None
    try:
        default = (await _line(session, org_id, contact_id, None)).id
    except SendRejected as exc:
        reason = exc.message
    org = await session.get(Organization, org_id)
    if org is None or not org.twilio_account_sid or not org.twilio_auth_token:
        reason = "Connect a Twilio account in Settings to send texts."
    elif not org.twilio_credentials_valid:
        reason = (
            "Twilio rejected this organization's credentials. "
            "An owner must reconnect the account in Settings before texts can be sent."
        )
    elif reason is None and not await contacts.preferred_number(session, contact_id):
        reason = "This contact has no phone number to text."
    return ComposeOptions(lines=options, default_line_id=default, disabled_reason=reason)
