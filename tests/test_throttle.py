"""The throttle's pace after a 429, on a fake clock: quick recovery after a one-off, convergence in a storm."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ticketsync.throttle import Throttle

DEMAND = 100.0  # requests per second the client would send if nothing held it back


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


@dataclass
class Instance:
    """A token bucket of `capacity` requests per second (one second's burst); None: it never says 429."""

    capacity: float | None = None
    retry_after: float | None = 1.0
    tokens: float = 0.0
    stamp: float = 0.0
    refused: int = 0
    per_second: dict[int, int] = field(default_factory=dict)

    def admits(self, now: float) -> bool:
        if self.capacity is None:
            return True
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.capacity)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False


def drive(throttle: Throttle, clock: FakeClock, instance: Instance, seconds: float, start: float) -> None:
    """Send requests through the throttle for `seconds` of fake time, at most DEMAND a second; count successes
    per whole second since `start` (the counts of an earlier drive are dropped)."""
    instance.per_second.clear()
    end = clock.now + seconds
    while clock.now < end:
        clock.sleep(throttle.paused_for())
        clock.sleep(1.0 / DEMAND)
        with throttle.slot():
            admitted = instance.admits(clock.now)
        if admitted:
            throttle.succeeded()
            second = int(clock.now - start)
            instance.per_second[second] = instance.per_second.get(second, 0) + 1
        else:
            throttle.rate_limited(instance.retry_after)


def make_throttle(clock: FakeClock, rate: float | None = None) -> Throttle:
    return Throttle(16, rate_per_second=rate, clock=clock, sleep=clock.sleep)


def test_one_429_costs_seconds_not_minutes() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock)
    instance = Instance()
    drive(throttle, clock, instance, 5, clock.now)
    assert throttle.pace is None  # unpaced: only the window and the demand limit it

    pause = throttle.rate_limited(1.0)
    assert pause == 1.0
    assert throttle.pace == pytest.approx(DEMAND / 2, rel=0.05)  # multiplicative decrease
    hit = clock.now
    drive(throttle, clock, instance, 15, hit)

    # within ~10 s (1 s of it the pause) the pre-429 pace is back
    assert instance.per_second[9] >= 0.95 * DEMAND, instance.per_second
    assert instance.per_second[6] >= 0.9 * DEMAND, instance.per_second
    assert instance.per_second.get(0, 0) == 0  # the pause was kept


def test_a_storm_keeps_the_pace_near_the_instances_capacity() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock)
    instance = Instance(capacity=60.0)
    start = clock.now
    drive(throttle, clock, instance, 120, start)

    late = [instance.per_second.get(second, 0) for second in range(60, 120)]
    mean = sum(late) / len(late)
    assert 0.65 * 60 <= mean <= 60, late  # converged: close to the capacity, never above it on average
    assert instance.refused <= 40, instance.refused  # one 429 every few seconds, not a flood


def test_a_429_without_retry_after_backs_off_and_recovers_as_well() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock)
    instance = Instance(retry_after=None)
    drive(throttle, clock, instance, 3, clock.now)

    pause = throttle.rate_limited(None)
    hit = clock.now
    drive(throttle, clock, instance, 15, hit)

    assert 0.5 <= pause <= 30
    assert instance.per_second[int(pause) + 9] >= 0.95 * DEMAND, instance.per_second


def test_a_named_hourly_limit_sets_the_pace_for_good() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock)
    instance = Instance()
    drive(throttle, clock, instance, 2, clock.now)

    throttle.rate_limited(1.0, limit_per_hour=36_000)
    drive(throttle, clock, instance, 30, clock.now)

    assert throttle.pace == pytest.approx(10.0)
    assert throttle.limit_per_hour == 36_000


def test_recovery_never_goes_above_a_configured_rate() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock, rate=40.0)
    instance = Instance()
    drive(throttle, clock, instance, 3, clock.now)

    throttle.rate_limited(1.0)
    assert throttle.pace == pytest.approx(20.0, rel=0.05)
    hit = clock.now
    drive(throttle, clock, instance, 30, hit)

    assert throttle.pace == pytest.approx(40.0)
    assert max(instance.per_second[second] for second in range(10, 30)) <= 41


def test_pacing_ends_once_the_pace_is_well_past_the_interrupted_one() -> None:
    clock = FakeClock()
    throttle = make_throttle(clock)
    instance = Instance()
    drive(throttle, clock, instance, 2, clock.now)

    throttle.rate_limited(1.0)
    drive(throttle, clock, instance, 60, clock.now)

    assert throttle.pace is None
