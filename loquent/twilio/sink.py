"""Setting up (and tearing down) the Event Streams sink that feeds ``POST /twilio/events``.

Idempotent by looking at Twilio, not at our own row: a webhook sink whose destination is
this deployment's events URL is reused whoever created it (the Console, an earlier run,
another tool), and so is a subscription on it that already covers the message types. So
setting up twice leaves one sink and one subscription.

The organization row remembers whether *we* created the sink and the subscription; removal
deletes only those, never a sink or subscription that existed before.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import structlog

from loquent.config import Settings
from loquent.context import AppContext
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from loquent.twilio import payloads
from loquent.twilio.account import (
    Credentials,
    Disconnection,
    LifecycleError,
    Problem,
    call_with_stored,
    events_client,
    stored_credentials,
)
from loquent.twilio.client import TwilioClient, TwilioError, TwilioNotFound

log = structlog.get_logger(__name__)

EVENTS_PATH = "/twilio/events"
SINK_DESCRIPTION = "Loquent SMS inbox"
SUBSCRIPTION_DESCRIPTION = "Loquent SMS inbox: message events"

# The message event types of the ingestion endpoint, with the schema versions it parses
# (Messaging.MessageStatus v4, Messaging.InboundMessageV1 v6).
STATUS_SCHEMA_VERSION = 4
INBOUND_SCHEMA_VERSION = 6
SUBSCRIBED_TYPES: dict[str, int] = {
    **dict.fromkeys(payloads.STATUS_TYPES, STATUS_SCHEMA_VERSION),
    payloads.INBOUND_TYPE: INBOUND_SCHEMA_VERSION,
}

# One setup per organization at a time in this process: two quick clicks must not race to
# create two sinks.
_locks: dict[int, asyncio.Lock] = {}


@dataclass(frozen=True)
class SinkSetup:
    sink_sid: str
    subscription_sid: str
    reused: bool  # the sink already existed at Twilio
    test_requested: bool


@dataclass(frozen=True)
class SinkRemoval:
    removed: list[str]
    left_alone: list[str]  # sinks/subscriptions this organization found but did not create


def destination(settings: Settings) -> str:
    return settings.public_url.rstrip("/") + EVENTS_PATH


def _destination_of(sink: dict[str, Any]) -> str | None:
    configuration = sink.get("sink_configuration")
    if isinstance(configuration, dict):
        value = configuration.get("destination")
        return value if isinstance(value, str) else None
    return None


async def _first(items: AsyncIterator[dict[str, Any]], match: Any) -> dict[str, Any] | None:
    async for item in items:
        if match(item):
            return item
    return None


async def _covering_subscription(client: TwilioClient, sink_sid: str) -> dict[str, Any] | None:
    """A subscription on the sink whose types include every type we need."""
    async for subscription in client.iter_subscriptions(sink_sid=sink_sid):
        if subscription.get("sink_sid") != sink_sid or not isinstance(subscription.get("sid"), str):
            continue
        types = {
            item.get("type")
            async for item in client.iter_subscribed_events(str(subscription["sid"]))
        }
        if set(SUBSCRIBED_TYPES) <= types:
            return subscription
    return None


async def setup(ctx: AppContext, org_id: int) -> SinkSetup:
    lock = _locks.setdefault(org_id, asyncio.Lock())
    async with lock:
        return await _setup(ctx, org_id)


async def _setup(ctx: AppContext, org_id: int) -> SinkSetup:
    creds = await stored_credentials(ctx, org_id)
    client = events_client(ctx, creds.account_sid, creds.auth_token)
    target = destination(ctx.settings)

    sink = await call_with_stored(
        ctx,
        creds,
        lambda: _first(
            client.iter_sinks(),
            lambda s: s.get("sink_type") == "webhook" and _destination_of(s) == target,
        ),
    )
    sink_created = sink is None
    if sink is None:
        sink = await call_with_stored(
            ctx, creds, lambda: client.create_sink(description=SINK_DESCRIPTION, destination=target)
        )
    sink_sid = str(sink["sid"])

    try:
        subscription = await call_with_stored(
            ctx, creds, lambda: _covering_subscription(client, sink_sid)
        )
        subscription_created = subscription is None
        if subscription is None:
            subscription = await call_with_stored(
                ctx,
                creds,
                lambda: client.create_subscription(
                    description=SUBSCRIPTION_DESCRIPTION, sink_sid=sink_sid, types=SUBSCRIBED_TYPES
                ),
            )
    except LifecycleError:
        if sink_created:  # leave nothing half set up at Twilio
            await _delete_quietly(client.delete_sink, sink_sid)
        raise
    subscription_sid = str(subscription["sid"])

    async with ctx.db.session() as session:
        org = await session.get(Organization, org_id)
        if org is None:
            raise LifecycleError(Problem.NOT_CONNECTED, "the organization no longer exists")
        orgs.record_event_sink(
            org,
            sink_sid=sink_sid,
            subscription_sid=subscription_sid,
            sink_created=sink_created,
            subscription_created=subscription_created,
        )
        await session.commit()

    # Twilio's test event arrives at /twilio/events, which records "verified at".
    try:
        await client.test_sink(sink_sid)
        test_requested = True
    except TwilioError as exc:
        log.warning("twilio.sink_test_failed", org_id=org_id, status=exc.status)
        test_requested = False
    log.info("twilio.sink_ready", org_id=org_id, sink_created=sink_created)
    return SinkSetup(
        sink_sid=sink_sid,
        subscription_sid=subscription_sid,
        reused=not sink_created,
        test_requested=test_requested,
    )


async def remove(ctx: AppContext, org_id: int) -> SinkRemoval:
    """Delete the subscription and the sink this organization created; forget the rest.

    A Twilio failure (other than "already gone") keeps the recorded state, so the owner
    can try again.
    """
    async with ctx.db.reader() as session:
        org = await session.get(Organization, org_id)
        if org is None:
            raise LifecycleError(Problem.NOT_CONNECTED, "the organization no longer exists")
        owned = _owned(org)
        owned_sids = {sid for _, sid in owned}
        left_alone = [
            sid for sid in (org.subscription_sid, org.sink_sid) if sid and sid not in owned_sids
        ]
    removed: list[str] = []
    if owned:
        creds = await stored_credentials(ctx, org_id)
        client = events_client(ctx, creds.account_sid, creds.auth_token)

        async def delete_owned() -> None:
            for kind, sid in owned:
                await _delete(client, kind, sid)
                removed.append(sid)

        await call_with_stored(ctx, creds, delete_owned)
    async with ctx.db.session() as session:
        row = await session.get(Organization, org_id)
        if row is not None:
            orgs.clear_event_sink(row)
        await session.commit()
    return SinkRemoval(removed=removed, left_alone=left_alone)


async def remove_created(ctx: AppContext, org_id: int, creds: Credentials | None) -> Disconnection:
    """Best effort, for disconnecting: try each deletion, report what failed."""
    async with ctx.db.reader() as session:
        org = await session.get(Organization, org_id)
        owned = _owned(org) if org is not None else []
    result = Disconnection()
    if not owned:
        return result
    if creds is None:
        for _, sid in owned:
            result.not_removed.append({"sid": sid, "reason": "the stored credentials are unusable"})
        return result
    client = events_client(ctx, creds.account_sid, creds.auth_token)
    for kind, sid in owned:
        try:
            await _delete(client, kind, sid)
            result.removed.append(sid)
        except TwilioError as exc:
            result.not_removed.append({"sid": sid, "reason": exc.message})
    return result


def _owned(org: Organization) -> list[tuple[str, str]]:
    """What this organization created, subscription first (deleting a sink takes its
    subscriptions with it, so the other order would report a spurious failure)."""
    owned: list[tuple[str, str]] = []
    if org.subscription_sid and org.subscription_created_here:
        owned.append(("subscription", org.subscription_sid))
    if org.sink_sid and org.sink_created_here:
        owned.append(("sink", org.sink_sid))
    return owned


async def _delete(client: TwilioClient, kind: str, sid: str) -> None:
    try:
        if kind == "sink":
            await client.delete_sink(sid)
        else:
            await client.delete_subscription(sid)
    except TwilioNotFound:
        pass  # already gone: the goal is reached


async def _delete_quietly(delete: Any, sid: str) -> None:
    try:
        await delete(sid)
    except TwilioError as exc:
        log.warning("twilio.sink_cleanup_failed", status=exc.status)
