"""The transaction quota: a Table API transaction that runs too long is cancelled before it writes anything.

The base system's quota rule "REST Table API request timeout" cancels an inbound Table API transaction after 60
seconds; the instance answers `Transaction cancelled: maximum execution time exceeded`. The emulator's clock starts
when the request (headers and body) has arrived and counts, in order: the wait in the session synchroniser, the
configured latency and a `slow_before_commit` (or `cut_then_commit`) write. ServiceNow does not document whether
the session wait counts; the emulator counts it (the stricter choice). Time spent after the commit
(`slow_after_commit`) is a slow answer on the way back and does not count. The quota is checked at each step and
right before the write, so a cancelled transaction writes nothing and answers about when the quota ran out, as the
instance's quota manager does.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class TransactionClock:
    """How much of its quota one transaction has left.

    :param quota: the quota in seconds; 0 (or less) means no quota.
    :param clock: the monotonic clock to measure with.
    :param sleep: how to wait (tests of the emulator's own logic may pass a fake one).
    """

    def __init__(
        self,
        quota: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self.quota = quota
        self._deadline = clock() + quota if quota > 0 else None

    def remaining(self) -> float | None:
        """Seconds left before the quota cancels the transaction (never negative), or None without a quota."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock())

    def exceeded(self) -> bool:
        """Whether the quota has run out."""
        remaining = self.remaining()
        return remaining is not None and remaining <= 0

    def spend(self, seconds: float) -> bool:
        """Work for ``seconds``; False when the quota runs out first (then only the rest of the quota is spent)."""
        remaining = self.remaining()
        if remaining is not None and seconds >= remaining:
            self._sleep(remaining)
            return False
        if seconds > 0:
            self._sleep(seconds)
        return True
