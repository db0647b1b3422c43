"""Pacing shared by every in-flight request of one loader.

ServiceNow serves a limited number of API requests at once and may enforce an hourly rate limit per user. The
loader therefore keeps a window of requests in flight (at most ``max_in_flight``), spaces requests to an optional
client-side rate, and reacts to a 429 as one: everyone pauses (for ``Retry-After`` when given), the window is
halved, and the pace drops to 70 % of the rate achieved over the last second; both grow back with each success
(additive increase, multiplicative decrease), the window by about one place per window of successes, the pace by
about one request per second each second, never above a configured rate.
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return (rng or random).uniform(0, ceiling)


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
        self._clock = clock
        self._sleep = sleep
        self.rate_limited_count = 0

    @property
    def window(self) -> int:
        return int(self._window)

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
            if self._rate is not None and self._rate != self._max_rate:
                grown = self._rate + 1.0 / self._rate
                self._rate = min(grown, self._max_rate) if self._max_rate else grown
                self._interval = 1.0 / self._rate

    def _slower_rate(self, now: float, limit_per_hour: float | None) -> float:
        if limit_per_hour:
            target = limit_per_hour / 3600.0
            self._max_rate = min(self._max_rate, target) if self._max_rate else target
            return target
        span = max(0.05, now - self._recent[0]) if self._recent else 1.0
        achieved = len(self._recent) / span
        return max(1.0, 0.7 * min(achieved, self._rate or achieved))

    def rate_limited(self, retry_after: float | None, limit_per_hour: float | None = None) -> float:
        """A 429: pause everyone, halve the window and slow the pace (once per pause); return the pause.

        When the instance names its limit (``X-RateLimit-Limit``, per hour), the pace becomes that limit spread
        evenly over the hour; otherwise 70 % of the rate achieved just before.
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
            self._cond.notify_all()
            return pause
