"""Wake-ups between the code that writes events and the streams/workers that read them.

The notifier carries no data: the event log and the job rows are the truth, and every
listener also re-checks on a timer. So a lost wake-up (Redis reconnecting, a process
restarting) costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import structlog

from loquent.metrics import NOTIFIER_DROPPED

log = structlog.get_logger(__name__)

JOBS_TOPIC = "jobs"
CHANNEL = "loquent:wake"


def org_topic(org_id: int) -> str:
    return f"org:{org_id}"


class Notifier:
    """In-process fan-out: the embedded default."""

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Event]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def notify(self, topic: str) -> None:
        self._wake(topic)

    def _wake(self, topic: str) -> None:
        for waiter in tuple(self._waiters.get(topic, ())):
            waiter.set()

    def _wake_all(self) -> None:
        for waiters in tuple(self._waiters.values()):
            for waiter in tuple(waiters):
                waiter.set()

    async def ping(self) -> bool | None:
        """Whether the cross-process channel answers; None when there is none."""
        return None

    @contextlib.contextmanager
    def listen(self, topic: str) -> Iterator[asyncio.Event]:
        """An asyncio.Event set on every notify of ``topic``; the listener clears it."""
        waiter = asyncio.Event()
        self._waiters[topic].add(waiter)
        try:
            yield waiter
        finally:
            self._waiters[topic].discard(waiter)
            if not self._waiters[topic]:
                self._waiters.pop(topic, None)


class RedisNotifier(Notifier):
    """Fan-out across processes and hosts through one Redis pub/sub channel.

    Redis is a wake-up, never a dependency: ``notify`` only puts the topic in a bounded
    outbox and returns (a webhook's answer never waits on Redis); a background task
    publishes with a short timeout and drops what fails. The process starts and runs while
    Redis is down or hung, and the subscriber reconnects with a bounded backoff.
    """

    OUTBOX_SIZE = 1000
    MAX_BACKOFF_SECONDS = 5.0

    def __init__(self, url: str, *, timeout: float = 1.0) -> None:
        super().__init__()
        self._url = url
        self._timeout = timeout
        self._redis: Any = None  # commands: publish, ping (short socket timeout)
        self._sub_redis: Any = None  # the subscription: blocking reads, no socket timeout
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=self.OUTBOX_SIZE)
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = False
        self._first_attempt = asyncio.Event()

    async def start(self) -> None:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # No retries inside redis-py: one short attempt, then this class decides.
        self._redis = aioredis.from_url(
            self._url,
            socket_connect_timeout=self._timeout,
            socket_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self._sub_redis = aioredis.from_url(
            self._url, socket_connect_timeout=self._timeout, retry=Retry(NoBackoff(), 0)
        )
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="redis-notifier-listen"),
            asyncio.create_task(self._publish_forever(), name="redis-notifier-publish"),
        ]
        # Give the subscription one short chance before serving, so the first wake-ups are
        # not dropped; never more than the timeout, whatever state Redis is in.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_attempt.wait(), self._timeout + 0.5)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for client in (self._redis, self._sub_redis):
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.aclose(), self._timeout)

    async def notify(self, topic: str) -> None:
        self._wake(topic)  # local listeners need not wait for the round trip
        if not self.subscribed:
            # Redis is down or hung: other processes poll, and queueing would only delay
            # the first wake-ups after it comes back behind stale ones.
            NOTIFIER_DROPPED.inc()
            return
        try:
            self._outbox.put_nowait(topic)
        except asyncio.QueueFull:
            NOTIFIER_DROPPED.inc()

    async def ping(self) -> bool:
        """Are cross-process wake-ups flowing right now (for /readyz): subscribed, and Redis
        answering a PING?"""
        if not self.subscribed:
            return False
        try:
            return bool(await asyncio.wait_for(self._redis.ping(), self._timeout))
        except Exception:
            return False

    async def _publish_forever(self) -> None:
        while True:
            topic = await self._outbox.get()
            try:
                await asyncio.wait_for(self._redis.publish(CHANNEL, topic), self._timeout)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # listeners poll too; a lost wake-up only costs latency
                NOTIFIER_DROPPED.inc()
                log.warning("notifier.publish_failed", error=type(exc).__name__)

    async def _listen_forever(self) -> None:
        backoff = 0.5
        while True:
            pubsub = self._sub_redis.pubsub()
            try:
                await asyncio.wait_for(pubsub.subscribe(CHANNEL), self._timeout)
                log.info("notifier.subscribed")
                self.subscribed = True
                self._first_attempt.set()
                backoff = 0.5
                # Wake-ups published while we were away are lost, the events are not: wake
                # every listener once so streams and workers re-read the log now.
                self._wake_all()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.subscribed:
                    log.warning("notifier.disconnected", error=type(exc).__name__)
                else:
                    log.info("notifier.unavailable", error=type(exc).__name__, retry_in=backoff)
            finally:
                self.subscribed = False
                self._first_attempt.set()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(pubsub.aclose(), self._timeout)
            await asyncio.sleep(backoff * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
            backoff = min(backoff * 2, self.MAX_BACKOFF_SECONDS)


def build_notifier(redis_url: str | None) -> Notifier:
    return RedisNotifier(redis_url) if redis_url else Notifier()
