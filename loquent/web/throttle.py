"""Sign-in throttling: bounds password guessing without locking real users out for long.

Attempts are counted per email address and per client address over a moving window
(``limits``, its asyncio API). An attempt is counted *before* the password is checked, so
a burst of concurrent guesses for one email cannot all reach Argon2 while their failures
are still being recorded: at most ``per_email`` of them are checked, the rest get 429.
A successful sign-in clears the email's count (a user who mistyped a few times is not left
near the limit); the client's count is not cleared, so one valid account cannot be used to
reset a client that is spraying guesses at others.

With ``LOQUENT_REDIS_URL`` set the counts live in Redis and hold across ``--workers`` and
hosts; otherwise they live in the process. If Redis fails, the process falls back to its
own counts until Redis answers again: still a bound, never an open door or a lockout.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

log = structlog.get_logger(__name__)

KEY_PREFIX = "loquent:login"
_EMAIL = "email"
_CLIENT = "client"


def _key(value: str) -> str:
    # Email addresses are personal data: Redis sees a digest, not the address.
    return hashlib.sha256(value.encode()).hexdigest()[:32]


def redis_storage_uri(redis_url: str) -> str:
    """``redis://…`` / ``rediss://…`` as the async storage URI ``limits`` expects."""
    return redis_url if redis_url.startswith("async+") else "async+" + redis_url


class LoginThrottle:
    def __init__(
        self,
        *,
        per_email: int = 10,
        per_client: int = 50,
        window_seconds: int = 900,
        redis_url: str | None = None,
    ) -> None:
        self.email_limit: RateLimitItem = RateLimitItemPerSecond(per_email, window_seconds)
        self.client_limit: RateLimitItem = RateLimitItemPerSecond(per_client, window_seconds)
        self._memory = MovingWindowRateLimiter(MemoryStorage())
        self._shared: MovingWindowRateLimiter | None = None
        self._redis: RedisStorage | None = None
        if redis_url:
            self._redis = RedisStorage(
                redis_storage_uri(redis_url),
                implementation="redispy",
                key_prefix=KEY_PREFIX,
                wrap_exceptions=True,
                socket_timeout=2.0,
                socket_connect_timeout=2.0,
            )
            self._shared = MovingWindowRateLimiter(self._redis)

    @property
    def shared(self) -> bool:
        """Whether the counts are shared between processes (Redis)."""
        return self._shared is not None

    async def attempt(self, email: str, client: str) -> float:
        """Count one sign-in attempt; 0 if it may go ahead, else seconds to wait.

        The email is counted first: a refused attempt does not use up the client's count.
        """
        email_key, client_key = _key(email.strip().lower()), _key(client)
        if not await self._hit(self.email_limit, _EMAIL, email_key):
            return await self._wait(self.email_limit, _EMAIL, email_key)
        if not await self._hit(self.client_limit, _CLIENT, client_key):
            return await self._wait(self.client_limit, _CLIENT, client_key)
        return 0.0

    async def succeeded(self, email: str) -> None:
        await self._call("clear", self.email_limit, _EMAIL, _key(email.strip().lower()))

    async def aclose(self) -> None:
        if self._redis is not None:
            client: Any = getattr(self._redis.bridge, "storage", None)
            if client is not None:
                await client.aclose()

    async def _hit(self, item: RateLimitItem, *ids: str) -> bool:
        return bool(await self._call("hit", item, *ids))

    async def _wait(self, item: RateLimitItem, *ids: str) -> float:
        stats = await self._call("get_window_stats", item, *ids)
        return max(1.0, float(stats.reset_time) - time.time())

    async def _call(self, method: str, item: RateLimitItem, *ids: str) -> Any:
        if self._shared is not None:
            try:
                return await getattr(self._shared, method)(item, *ids)
            except StorageError as exc:
                log.warning("login_throttle.redis_unavailable", error=str(exc.storage_error))
        return await getattr(self._memory, method)(item, *ids)
