"""Wake-ups between the code that writes events and the streams/workers that read them.

The notifier carries no data: the event log and the job rows are the truth, and every
listener also re-checks on a timer. So a lost wake-up (Redis reconnecting, a process
restarting) costs latency, never an event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import structlog

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
    """Fan-out across processes and hosts through one Redis pub/sub channel."""

    def __init__(self, url: str) -> None:
        super().__init__()
        self._url = url
        self._redis: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        import redis.asyncio as aioredis

        self._redis = aioredis.from_url(self._url)
        await self._redis.ping()
        self._task = asyncio.create_task(self._listen_forever(), name="redis-notifier")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._redis is not None:
            await self._redis.aclose()

    async def notify(self, topic: str) -> None:
        self._wake(topic)  # local listeners need not wait for the round trip
        try:
            await self._redis.publish(CHANNEL, topic)
        except Exception as exc:  # listeners poll too; a lost wake-up only costs latency
            log.warning("notifier.publish_failed", error=str(exc))

    async def _listen_forever(self) -> None:
        backoff = 0.5
        while True:
            try:
                pubsub = self._redis.pubsub()
                await pubsub.subscribe(CHANNEL)
                backoff = 0.5
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message["data"]
                        self._wake(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("notifier.subscribe_failed", error=str(exc), retry_in=backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)


def build_notifier(redis_url: str | None) -> Notifier:
    return RedisNotifier(redis_url) if redis_url else Notifier()
