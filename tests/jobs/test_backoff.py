"""Retry delays: exponential with full jitter, Retry-After honoured."""

from __future__ import annotations

import random

from loquent.jobs.backoff import RETRY_AFTER_CEILING_SECONDS, backoff_delay, retry_after_delay


def test_backoff_grows_and_stays_under_the_cap() -> None:
    rng = random.Random(7)
    for attempt in range(1, 12):
        ceiling = min(60.0, 0.5 * 2 ** (attempt - 1))
        delays = [backoff_delay(attempt, base=0.5, cap=60.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        # Full jitter spreads over the whole window, not just its top.
        assert min(delays) < ceiling * 0.2
        assert max(delays) > ceiling * 0.8


def test_backoff_survives_absurd_attempt_numbers() -> None:
    assert 0.0 <= backoff_delay(10_000, base=1.0, cap=300.0) <= 300.0
    assert 0.0 <= backoff_delay(0, base=1.0, cap=300.0) <= 1.0


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(3)
    delays = [retry_after_delay(2.0, 1, 0.1, 0.5, rng=rng) for _ in range(200)]
    assert all(2.0 <= d <= 2.2 for d in delays)  # above our own cap: the server asked for it


def test_retry_after_missing_falls_back_to_backoff() -> None:
    assert 0.0 <= retry_after_delay(None, 3, 1.0, 300.0) <= 4.0


def test_retry_after_has_a_ceiling() -> None:
    assert retry_after_delay(10 * 86400, 1, 1.0, 300.0) <= RETRY_AFTER_CEILING_SECONDS * 1.1


def test_floor_fraction_keeps_retries_in_the_top_of_the_window() -> None:
    rng = random.Random(11)
    delays = [
        backoff_delay(20, base=1.0, cap=300.0, floor_fraction=0.5, rng=rng) for _ in range(500)
    ]
    assert all(150.0 <= d <= 300.0 for d in delays)
    assert min(delays) < 160.0
    assert max(delays) > 290.0
