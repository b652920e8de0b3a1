"""One event-log reader per organization per process, fanned out to that process's streams.

Every open SSE stream used to re-read the log in its own database session on every
wake-up, so the cost of one event grew with the number of open streams (and a thousand
streams emptied the connection pool). The hub reads each organization's new rows once per
wake-up (a notifier wake-up or the poll tick), encodes each frame once, and hands the same
bytes to every stream of that organization.

Each stream has a bounded backlog. A stream that falls further behind than that (a client
that stopped reading) is dropped: its stream ends, the browser reconnects with
``Last-Event-ID`` and replays from the log, and nobody else waits for it.

A stream that joins with an older cursor first replays from the log directly, up to the
point the feed had reached when it joined (every id up to there is final), then takes the
live frames, which are all newer: no gap, no duplicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import structlog
from sse_starlette import ServerSentEvent

from loquent.db import Database
from loquent.metrics import EVENT_LOG_READS, SSE_DROPPED, SSE_SUBSCRIBERS
from loquent.realtime import log as event_log
from loquent.realtime.models import EventLogEntry
from loquent.realtime.notifier import Notifier, org_topic

log = structlog.get_logger(__name__)

BATCH = 500
_RETRY_SECONDS = 1.0
_HELD_BACK_SECONDS = 0.01  # first re-read while rows wait for an older transaction


@dataclass(frozen=True, slots=True)
class Frame:
    """One event, encoded once as the bytes every stream sends."""

    id: int
    data: bytes

    @classmethod
    def of(cls, row: EventLogEntry) -> Frame:
        event = ServerSentEvent(
            id=str(row.id),
            event=row.type,
            data=json.dumps({"type": row.type, "payload": row.payload}),
        )
        return cls(row.id, event.encode())


@dataclass(eq=False)
class Subscription:
    """A stream's place in its organization's feed."""

    org_id: int
    cursor: int  # the last id handed to the stream
    replay_to: int  # ids up to here come from the log directly, later ones from the feed
    limit: int
    _db: Database
    pending: deque[Frame] = field(default_factory=deque)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    dropped: bool = False

    def offer(self, frames: list[Frame]) -> bool:
        """Queue live frames; False when that would exceed the backlog bound."""
        if len(self.pending) + len(frames) > self.limit:
            return False
        self.pending.extend(frames)
        self.ready.set()
        return True

    async def next(self, timeout: float) -> list[Frame] | None:
        """The next frames in id order; [] after ``timeout``; None once dropped."""
        if self.cursor < self.replay_to:
            async with self._db.reader() as session:
                rows = await event_log.read_range(
                    session, self.org_id, self.cursor, self.replay_to, BATCH
                )
            EVENT_LOG_READS.labels("replay").inc()
            if rows:
                self.cursor = rows[-1].id
                return [Frame.of(row) for row in rows]
            self.replay_to = self.cursor
        if not self.pending and not self.dropped:
            self.ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), timeout)
        if self.dropped:
            return None
        frames = [frame for frame in self.pending if frame.id > self.cursor]
        self.pending.clear()
        if frames:
            self.cursor = frames[-1].id
        return frames


class _OrgFeed:
    """Reads one organization's new events and offers them to its subscribers."""

    def __init__(self, hub: Hub, org_id: int) -> None:
        self.hub = hub
        self.org_id = org_id
        self.cursor = 0
        self.subscribers: set[Subscription] = set()
        self.waiting = 0  # subscribers waiting for the feed's starting point
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"event-feed-{org_id}")

    async def _run(self) -> None:
        with self.hub.notifier.listen(org_topic(self.org_id)) as wake:
            await self._start()
            held_back = 0  # consecutive reads that found rows waiting for an older transaction
            while True:
                wake.clear()
                try:
                    async with self.hub.db.reader() as session:
                        batch = await event_log.read_batch(
                            session, self.org_id, self.cursor, self.hub.read_limit
                        )
                    EVENT_LOG_READS.labels("recheck" if held_back else "live").inc()
                except Exception as exc:  # a database hiccup: streams keep pinging, retry
                    log.warning("realtime.feed_read_failed", org_id=self.org_id, error=str(exc))
                    await asyncio.sleep(_RETRY_SECONDS)
                    continue
                if batch.rows:
                    self.cursor = batch.rows[-1].id
                    self._offer([Frame.of(row) for row in batch.rows])
                if len(batch.rows) == self.hub.read_limit:
                    continue
                # Woken by the notifier; the timeout is the safety net for a lost wake-up,
                # short while committed rows wait for an older transaction to finish.
                held_back = held_back + 1 if batch.held_back else 0
                timeout = self.hub.poll_seconds
                if held_back:
                    timeout = min(timeout, _HELD_BACK_SECONDS * 2 ** min(held_back - 1, 6))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout)

    async def _start(self) -> None:
        """Begin at the newest final id: subscribers with an older cursor replay the rest."""
        while True:
            try:
                async with self.hub.db.reader() as session:
                    self.cursor = await event_log.latest_id(session, self.org_id)
                break
            except Exception as exc:
                log.warning("realtime.feed_start_failed", org_id=self.org_id, error=str(exc))
                await asyncio.sleep(_RETRY_SECONDS)
        self.ready.set()

    def _offer(self, frames: list[Frame]) -> None:
        for sub in tuple(self.subscribers):
            if not sub.offer(frames):
                self.drop(sub)

    def drop(self, sub: Subscription) -> None:
        sub.dropped = True
        sub.pending.clear()
        sub.ready.set()
        self.subscribers.discard(sub)
        SSE_DROPPED.inc()
        log.info("realtime.stream_dropped", org_id=self.org_id, cursor=sub.cursor)


class Hub:
    """The process's fan-out: ``async with hub.subscribe(org, after) as sub``."""

    def __init__(
        self, db: Database, notifier: Notifier, *, poll_seconds: float, backlog: int
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.poll_seconds = poll_seconds
        self.backlog = backlog
        self.read_limit = min(BATCH, backlog)  # one read must always fit a backlog
        self._feeds: dict[int, _OrgFeed] = {}

    @contextlib.asynccontextmanager
    async def subscribe(self, org_id: int, after: int | None) -> AsyncIterator[Subscription]:
        """Frames after ``after`` (None: from now on) for one stream of ``org_id``."""
        feed = await self._ready_feed(org_id)
        # No await between reading the feed's position and joining it: every frame after
        # ``joined_at`` is offered to this subscription, everything up to it is replayed.
        joined_at = feed.cursor
        start = joined_at if after is None else after
        sub = Subscription(org_id, start, joined_at, self.backlog, self.db)
        feed.subscribers.add(sub)
        SSE_SUBSCRIBERS.inc()
        try:
            yield sub
        finally:
            SSE_SUBSCRIBERS.dec()
            feed.subscribers.discard(sub)
            self._release(feed)

    async def _ready_feed(self, org_id: int) -> _OrgFeed:
        while True:
            feed = self._feeds.get(org_id)
            if feed is None:
                feed = self._feeds[org_id] = _OrgFeed(self, org_id)
            feed.waiting += 1
            try:
                await feed.ready.wait()
            except BaseException:  # the client went away while the feed was starting
                feed.waiting -= 1
                self._release(feed)
                raise
            feed.waiting -= 1
            if self._feeds.get(org_id) is feed:
                return feed

    def _release(self, feed: _OrgFeed) -> None:
        """Stop a feed nobody follows or waits for."""
        if feed.subscribers or feed.waiting or self._feeds.get(feed.org_id) is not feed:
            return
        del self._feeds[feed.org_id]
        feed.task.cancel()

    def subscriber_count(self, org_id: int) -> int:
        feed = self._feeds.get(org_id)
        return len(feed.subscribers) if feed else 0

    async def close(self) -> None:
        feeds = list(self._feeds.values())
        self._feeds.clear()
        for feed in feeds:
            feed.task.cancel()
        for feed in feeds:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await feed.task
