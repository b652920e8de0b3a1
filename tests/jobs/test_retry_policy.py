"""The enrichment retry policy with the DEFAULT settings, played on a virtual clock.

``RetryPolicy`` is pure (the clock is an argument), so hours of outage run in milliseconds:
each step asks the policy what to do after a failed attempt and moves the clock by the delay
it chose. This is the schedule the worker follows; the end-to-end tests in
``test_long_outage.py`` run the same policy against the simulator with the time knobs scaled
down.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from loquent.config import Settings
from loquent.messaging.enrichment import RetryPolicy

START = datetime(2026, 11, 25, 8, 0, tzinfo=UTC)
ERROR = "Internal Server Error (HTTP 500, code 20500)"


def default_policy() -> RetryPolicy:
    # model_construct: the declared defaults, untouched by LOQUENT_* variables of this shell.
    return RetryPolicy.from_settings(Settings.model_construct())


@dataclass
class Played:
    attempts: list[datetime]  # when each attempt was made
    outcome: str  # "ready" | "failed"
    reason: str = ""

    @property
    def gaps(self) -> list[float]:
        pairs = zip(self.attempts, self.attempts[1:], strict=False)
        return [(b - a).total_seconds() for a, b in pairs]


def play(policy: RetryPolicy, outage: timedelta, *, seed: int, call_seconds: float = 0.0) -> Played:
    """Twilio fails every call until ``outage`` has passed, then answers. ``call_seconds`` is
    how long a failing call takes (a timeout costs the whole timeout)."""
    rng = random.Random(seed)
    now = START
    attempts: list[datetime] = []
    while True:
        attempts.append(now)
        if now - START >= outage:
            return Played(attempts, "ready")
        now += timedelta(seconds=call_seconds)
        decision = policy.after_transient(
            attempts=len(attempts), pending_since=START, now=now, error=ERROR, rng=rng
        )
        if decision.retry_in is None:
            return Played(attempts, "failed", decision.reason)
        now += timedelta(seconds=decision.retry_in)


def test_the_defaults_are_the_documented_ones() -> None:
    policy = default_policy()
    assert policy.cap_seconds == 300.0
    assert policy.deadline == timedelta(hours=24)
    assert policy.not_found_attempts == 4


@pytest.mark.parametrize("outage", [timedelta(minutes=10), timedelta(hours=3)])
@pytest.mark.parametrize("seed", range(20))
def test_a_body_stays_pending_through_the_outage_and_arrives_soon_after(
    outage: timedelta, seed: int
) -> None:
    policy = default_policy()
    played = play(policy, outage, seed=seed)
    assert played.outcome == "ready"
    assert max(played.gaps) <= policy.cap_seconds
    # The first attempt after Twilio is back comes within one cap of its return.
    assert played.attempts[-1] - START - outage <= timedelta(seconds=policy.cap_seconds)


@pytest.mark.parametrize("seed", range(5))
def test_gaps_never_exceed_the_cap_and_failure_comes_only_past_the_deadline(seed: int) -> None:
    policy = default_policy()
    played = play(policy, timedelta(days=3), seed=seed)  # Twilio never comes back
    assert played.outcome == "failed"
    assert "gave up" in played.reason
    assert ERROR in played.reason
    assert max(played.gaps) <= policy.cap_seconds
    # The attempt that gave up was the first one past the deadline; the one before was not.
    assert played.attempts[-1] - START >= policy.deadline
    assert played.attempts[-2] - START < policy.deadline
    # Attempts grow exponentially at first, then hold near the cap (equal jitter: ≥ cap/2).
    assert played.gaps[:3] == sorted(played.gaps[:3])
    assert min(played.gaps[12:]) >= policy.cap_seconds / 2
    # ... and the backstop on attempts never gets there first.
    assert not policy.exhausted(len(played.attempts))


def test_an_outage_of_just_under_the_deadline_still_ends_ready() -> None:
    policy = default_policy()
    played = play(policy, policy.deadline - timedelta(minutes=10), seed=1)
    assert played.outcome == "ready"


def test_slow_failures_do_not_stretch_the_schedule_past_the_cap_plus_the_call() -> None:
    """Timeouts cost their duration on top of the delay (10 s by default)."""
    policy = default_policy()
    played = play(policy, timedelta(hours=3), seed=3, call_seconds=10.0)
    assert played.outcome == "ready"
    assert max(played.gaps) <= policy.cap_seconds + 10.0


def test_attempts_over_a_four_hour_outage() -> None:
    """The figure for the docs: how hard a body knocks during Twilio's 4-hour retry window."""
    policy = default_policy()
    counts = [len(play(policy, timedelta(hours=4), seed=s).attempts) for s in range(200)]
    mean = sum(counts) / len(counts)
    print(f"attempts over a 4 h outage: min {min(counts)} mean {mean:.1f} max {max(counts)}")
    # 4 h at one call per 150-300 s once at the cap, plus the ~9 of the ramp.
    assert min(counts) > 4 * 3600 / 300
    assert max(counts) < 4 * 3600 / 150 + 12


def test_not_found_fails_after_a_few_in_a_row() -> None:
    policy = default_policy()
    decisions = [policy.after_not_found(not_found=n, error="404") for n in (1, 2, 3, 4)]
    assert [d.gives_up for d in decisions] == [False, False, False, True]
    assert all(d.retry_in is not None and d.retry_in <= 8 for d in decisions[:3])


def test_rate_limits_honour_retry_after_until_the_deadline() -> None:
    policy = default_policy()
    early = policy.after_rate_limit(
        retry_after=30, streak=1, attempts=1, pending_since=START, now=START, error="429"
    )
    assert early.retry_in is not None
    assert 30 <= early.retry_in <= 33
    late = policy.after_rate_limit(
        retry_after=30,
        streak=400,
        attempts=1,
        pending_since=START,
        now=START + policy.deadline,
        error="429",
    )
    assert late.gives_up
    assert "429" in late.reason
