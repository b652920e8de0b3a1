"""Retry delays, computed rather than guessed.

Exponential backoff with *full jitter* (delay drawn uniformly from [0, min(cap, base·2^n)])
spreads retries of many failed jobs over the whole window, so an outage that ends does not
meet a synchronized wave of retries.
"""

from __future__ import annotations

import random

# A server's Retry-After is honoured even above our own cap, up to this ceiling: past an hour
# something is wrong with the answer, not with our patience.
RETRY_AFTER_CEILING_SECONDS = 3600.0
_MAX_EXPONENT = 62  # 2**62 already dwarfs any cap; keeps the float finite


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    floor_fraction: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 = the first retry).

    Drawn from [floor_fraction·ceiling, ceiling]: 0 is full jitter; 0.5 ("equal jitter")
    still spreads retries but keeps a long run of them at the cap from averaging half of it,
    which halves nothing useful and doubles the calls made into an outage.
    """
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    ceiling = max(0.0, min(cap, base * (2**exponent)))
    floor = ceiling * min(max(floor_fraction, 0.0), 1.0)
    return (rng or random).uniform(floor, ceiling)


def retry_after_delay(
    retry_after: float | None,
    attempt: int,
    base: float,
    cap: float,
    *,
    floor_fraction: float = 0.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait after a rate limit: what the server asked for, else plain backoff.

    Never less than ``retry_after``; a little jitter on top (up to 10%) keeps the jobs one
    429 pushed back from all returning in the same instant.
    """
    if retry_after is None:
        return backoff_delay(attempt, base=base, cap=cap, floor_fraction=floor_fraction, rng=rng)
    wait = min(max(retry_after, 0.0), max(cap, RETRY_AFTER_CEILING_SECONDS))
    return wait + (rng or random).uniform(0.0, wait * 0.1)
