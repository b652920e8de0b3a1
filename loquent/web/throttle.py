"""Failed-login throttling: slows password guessing without locking real users out for long.

Failures are counted per email address and per client address over a sliding window; past
the limit, sign-in answers 429 until the oldest failure leaves the window. Counts live in the
process (several web processes each keep their own, which multiplies the limit by their
number but keeps the guarantee of a bound); a success clears the email's count.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class FailureWindow:
    def __init__(
        self,
        limit: int,
        window_seconds: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window_seconds
        self._clock = clock
        self._max_keys = max_keys
        self._failures: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` may try again; 0 when it may try now."""
        failures = self._recent(key)
        if len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[0] + self.window - self._clock())

    def record_failure(self, key: str) -> None:
        if key not in self._failures and len(self._failures) >= self._max_keys:
            self._evict()
        self._failures.setdefault(key, deque()).append(self._clock())

    def clear(self, key: str) -> None:
        self._failures.pop(key, None)

    def _recent(self, key: str) -> deque[float]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = self._clock() - self.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            self._failures.pop(key, None)
        return failures

    def _evict(self) -> None:
        # Drop expired keys first; if the table is still full, the oldest-touched ones.
        for key in list(self._failures):
            self._recent(key)
        while len(self._failures) >= self._max_keys:
            self._failures.pop(next(iter(self._failures)))


class LoginThrottle:
    def __init__(self, *, per_email: int = 10, per_client: int = 50, window_seconds: float = 900):
        self.emails = FailureWindow(per_email, window_seconds)
        self.clients = FailureWindow(per_client, window_seconds)

    def retry_after(self, email: str, client: str) -> float:
        return max(self.emails.retry_after(email.lower()), self.clients.retry_after(client))

    def failed(self, email: str, client: str) -> None:
        self.emails.record_failure(email.lower())
        self.clients.record_failure(client)

    def succeeded(self, email: str) -> None:
        self.emails.clear(email.lower())
