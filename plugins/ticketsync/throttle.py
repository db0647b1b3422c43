"""Pacing shared by every in-flight request of one loader.

ServiceNow serves a limited number of API requests at once and may enforce an hourly rate limit per user. The
loader therefore keeps a window of requests in flight (at most ``max_in_flight``), spaces requests to an optional
client-side rate, and reacts to a 429 as one: everyone pauses (for ``Retry-After`` when given), the window is
halved, and, unless the instance named its hourly limit, the pace drops to half the rate achieved over the last
second. The pace then recovers as TCP's congestion control does: slow start (it doubles every second without a 429)
up to 90 % of the pace the 429 interrupted, then additive increase (about 2.5 % of that pace per second), so the
pre-429 pace is back within about five seconds, and a storm that keeps answering 429 keeps pulling it down. Once
the pace is twice the interrupted one (and no rate was configured), pacing ends. The window grows back by about
one place per window of successes.

A wait longer than ``defer_after`` seconds (an hourly window exhausted) is not waited for: from then on no request
starts (a slot raises :class:`LongWait`), so the load can stop at a safe point and defer itself.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SLOW_START_DOUBLING = 1.0  # seconds in which the pace doubles while below the slow-start threshold
SLOW_START_SHARE = 0.9  # the slow-start threshold, as a share of the pace a 429 interrupted
ADDITIVE_SHARE = 0.025  # above the threshold, the pace grows by this share of the interrupted pace per second
DECREASE_SHARE = 0.5  # after a 429 without a named limit, the pace drops to this share of the achieved rate


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


class LongWait(Exception):
    """The instance asked for a wait longer than the throttle's ``defer_after``; no request starts any more.

    :param seconds: how long the instance asked to wait, from now.
    """

    def __init__(self, seconds: float) -> None:
        super().__init__(f"the instance asked for a wait of {seconds:.0f} s")
        self.seconds = seconds


class Throttle:
    """A window of in-flight requests, an optional rate, and a common pause after a 429."""

    def __init__(
        self,
        max_in_flight: int,
        *,
        rate_per_second: float | None = None,
        default_pause: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        defer_after: float | None = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._cond = threading.Condition()
        self._window = float(max_in_flight)
        self._in_flight = 0
        self._max_rate = rate_per_second or None
        self._rate = self._max_rate  # the current pace; None = unpaced
        self._interval = 1.0 / self._rate if self._rate else 0.0
        self._recent: deque[float] = deque()
        self._next_slot = 0.0
        self._pause_until = 0.0
        self._last_decrease = float("-inf")
        self._default_pause = default_pause
        self._consecutive_429 = 0
        self._interrupted = 0.0  # the pace the last 429 interrupted (requests per second)
        self._threshold = 0.0  # slow start below this pace, additive increase above it
        self._grown_at = 0.0  # when the pace last grew
        self.limit_per_hour: float | None = None  # the hourly limit the instance named, once it did
        self._clock = clock
        self._sleep = sleep
        self.rate_limited_count = 0
        self._defer_after = defer_after
        self.long_wait_until: float | None = None  # clock() when a wait longer than defer_after ends, once asked

    @property
    def window(self) -> int:
        return int(self._window)

    @property
    def in_flight(self) -> int:
        """Requests holding a place now."""
        return self._in_flight

    @property
    def pace(self) -> float | None:
        """The current pace in requests per second; None when unpaced."""
        return self._rate

    def long_wait(self) -> float | None:
        """Seconds left of a wait longer than ``defer_after`` the instance asked for, or None if it asked none."""
        until = self.long_wait_until
        return None if until is None else max(0.0, until - self._clock())

    def paused_for(self) -> float:
        """Seconds until the common pause after a 429 ends (0 when not paused)."""
        return max(0.0, self._pause_until - self._clock())

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one in-flight place for the duration of a request."""
        self._acquire()
        try:
            yield
        finally:
            with self._cond:
                self._in_flight -= 1
                self._cond.notify()

    def _acquire(self) -> None:
        with self._cond:
            while True:
                now = self._clock()
                if self.long_wait_until is not None:
                    raise LongWait(self.long_wait_until - now)
                if now < self._pause_until:
                    self._cond.wait(self._pause_until - now)
                elif self._in_flight >= max(1, int(self._window)):
                    self._cond.wait(0.25)
                else:
                    break
            self._in_flight += 1
            self._recent.append(now)
            while self._recent and self._recent[0] < now - 1.0:
                self._recent.popleft()
            start = max(now, self._next_slot)
            self._next_slot = start + self._interval
            delay = start - now
        if delay > 0:
            self._sleep(delay)

    def succeeded(self) -> None:
        """Additive increase: about +1 in-flight place per window of successful requests."""
        with self._cond:
            self._consecutive_429 = 0
            if self._window < self.max_in_flight:
                self._window = min(float(self.max_in_flight), self._window + 1.0 / max(1.0, self._window))
                self._cond.notify()
            if self._rate is not None and (self._max_rate is None or self._rate < self._max_rate):
                self._grow(self._clock())

    def _grow(self, now: float) -> None:
        """Slow start up to the threshold, additive increase above it; called with the lock held."""
        assert self._rate is not None
        elapsed = now - self._grown_at
        if elapsed <= 0:
            return  # still paused, or already grown at this instant
        self._grown_at = now
        if self._rate < self._threshold:
            rate = min(self._threshold, self._rate * 2 ** (elapsed / SLOW_START_DOUBLING))
        else:
            rate = self._rate + ADDITIVE_SHARE * max(1.0, self._interrupted) * elapsed
        if self._max_rate is not None:
            rate = min(rate, self._max_rate)
        elif rate >= 2 * self._interrupted:
            self._rate, self._interval = None, 0.0  # well past the interrupted pace: the window governs again
            return
        self._rate, self._interval = rate, 1.0 / rate

    def _slower_rate(self, now: float, limit_per_hour: float | None) -> float:
        if limit_per_hour:
            target = limit_per_hour / 3600.0
            self._max_rate = min(self._max_rate, target) if self._max_rate else target
            self.limit_per_hour = limit_per_hour
            return target
        span = max(0.05, now - self._recent[0]) if self._recent else 1.0
        achieved = min(len(self._recent) / span, self._rate or float("inf"))
        self._interrupted = max(1.0, achieved)
        self._threshold = SLOW_START_SHARE * self._interrupted
        return max(1.0, DECREASE_SHARE * achieved)

    def rate_limited(self, retry_after: float | None, limit_per_hour: float | None = None) -> float:
        """A 429: pause everyone, halve the window and slow the pace (once per pause); return the pause.

        When the instance names its limit (``X-RateLimit-Limit``, per hour), the pace becomes that limit spread
        evenly over the hour for good; otherwise half the rate achieved just before, recovering as the module says.
        A pause longer than ``defer_after`` makes every later slot raise :class:`LongWait`.

        :param retry_after: the instance's ``Retry-After`` in seconds, if it sent one.
        :param limit_per_hour: the instance's ``X-RateLimit-Limit``, if it sent one.
        """
        with self._cond:
            self.rate_limited_count += 1
            self._consecutive_429 += 1
            now = self._clock()
            if retry_after is not None:
                pause = retry_after
            else:
                pause = backoff_delay(self._consecutive_429, base=self._default_pause, cap=30.0)
                pause = max(pause, self._default_pause / 2)
            if now - self._last_decrease > pause:
                self._window = max(1.0, self._window / 2)
                self._rate = self._slower_rate(now, limit_per_hour)
                self._interval = 1.0 / self._rate
                self._last_decrease = now
            self._pause_until = max(self._pause_until, now + pause)
            self._grown_at = max(self._grown_at, self._pause_until)
            if self._defer_after is not None and pause > self._defer_after:
                self.long_wait_until = max(self.long_wait_until or 0.0, now + pause)
            self._cond.notify_all()
            return pause
