"""Pacing shared by every in-flight request of one loader.

ServiceNow serves a limited number of API requests at once and may enforce an hourly rate limit per user. The
loader therefore keeps a window of requests in flight (at most ``max_in_flight``), spaces requests to an optional
client-side rate, and reacts to a 429 as one: everyone pauses (for ``Retry-After`` when given), the window is
halved, and it grows back by about one request per window of successes (additive increase, multiplicative
decrease).
"""

from __future__ import annotations

import random
import threading
import time
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
        self._interval = 1.0 / rate_per_second if rate_per_second else 0.0
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

    def rate_limited(self, retry_after: float | None) -> float:
        """A 429: pause everyone, halve the window (once per pause), return the pause in seconds."""
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
                self._last_decrease = now
            self._pause_until = max(self._pause_until, now + pause)
            self._cond.notify_all()
            return pause
