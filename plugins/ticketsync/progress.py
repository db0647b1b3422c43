"""Progress lines in the task log while a load runs: counts, rate, requests in flight, ETA, and why it is slow."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProgressSnapshot:
    """What a load has done so far and how it is paced; read from the loader without locking (counts only grow)."""

    claimed: int
    created: int
    adopted: int
    rejected: int
    failed: int
    in_flight: int
    pace: float | None = None  # requests per second the throttle keeps to; None when unpaced
    configured_rate: float | None = None  # the rate_limit setting of this loader, if any
    limit_per_hour: float | None = None  # the hourly limit the instance named in a 429, if it did
    paused_for: float = 0.0  # seconds left of a common pause after a 429

    @property
    def done(self) -> int:
        return self.created + self.adopted + self.rejected + self.failed


def duration(seconds: float) -> str:
    """``1 h 58 min``, ``4 min 10 s``, ``12 s``."""
    total = max(0, math.ceil(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def pacing_reason(snapshot: ProgressSnapshot) -> str | None:
    """Why the load goes slower than its window allows, or None when nothing holds it back."""
    if snapshot.paused_for > 0:
        return f"paused for {duration(snapshot.paused_for)} after a 429 from the instance"
    pace = snapshot.pace
    if pace is None:
        return None
    if snapshot.limit_per_hour and math.isclose(pace, snapshot.limit_per_hour / 3600, rel_tol=1e-6):
        return f"paced to {pace:.2f}/s by the instance's limit of {snapshot.limit_per_hour:,.0f}/h"
    if snapshot.configured_rate and math.isclose(pace, snapshot.configured_rate, rel_tol=1e-6):
        return f"paced to {pace:.2f}/s by the rate_limit setting"
    return f"paced to {pace:.2f}/s, recovering after a 429"


def progress_line(
    snapshot: ProgressSnapshot, rows_per_second: float, window: float, *, final: bool = False, deferred: bool = False
) -> str:
    """One progress line.

    :param snapshot: the counts and pacing now.
    :param rows_per_second: rows done per second over the last ``window`` seconds.
    :param window: the seconds the rate was measured over.
    :param final: the line at the end of the load (no ETA).
    :param deferred: the last line of a leg that stops to defer (final too).
    """
    remaining = max(0, snapshot.claimed - snapshot.done)
    if deferred:
        return progress_line(snapshot, rows_per_second, window, final=True).replace(
            "load finished", "load deferred", 1
        ).replace("rows left pending", "rows left for the next leg", 1)
    head = "load finished" if final else "progress"
    text = (
        f"{head}: {snapshot.done:,}/{snapshot.claimed:,} rows done (created {snapshot.created:,}, adopted "
        f"{snapshot.adopted:,}, rejected {snapshot.rejected:,}, failed {snapshot.failed:,}), "
        f"{rows_per_second:.1f} rows/s over the last {duration(window)}, {snapshot.in_flight} in flight"
    )
    if final:
        return text + (f", {remaining:,} rows left pending" if remaining else "")
    reason = pacing_reason(snapshot)
    text += f", ETA {eta(snapshot, remaining, rows_per_second)}"
    return text + (f"; {reason}" if reason else "")


def eta(snapshot: ProgressSnapshot, remaining: int, rows_per_second: float) -> str:
    """The time left at the pace the instance imposes (a named limit), else at the rate measured, else unknown."""
    if remaining == 0:
        return "0 s"
    named = snapshot.limit_per_hour and snapshot.pace and snapshot.pace <= snapshot.limit_per_hour / 3600 * 1.000001
    rate = snapshot.pace if named else rows_per_second or snapshot.pace
    if not rate:
        return "unknown"
    return duration(snapshot.paused_for + remaining / rate)


class ProgressReporter:
    """Logs a progress line every ``interval`` seconds on its own thread (so a long pause still shows), and a last
    line when stopped.

    :param snapshot: returns the load's counts and pacing now.
    :param interval: seconds between lines.
    """

    def __init__(
        self, snapshot: Callable[[], ProgressSnapshot], *, interval: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval <= 0:
            raise ValueError("the progress interval must be positive")
        self._snapshot = snapshot
        self._interval = interval
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="load-progress", daemon=True)
        self._started = 0.0
        self._last: tuple[float, int] = (0.0, 0)
        self._done_at_start = 0

    def start(self) -> None:
        self._started = self._clock()
        self._last = (self._started, self._snapshot().done)
        self._done_at_start = self._last[1]  # a resumed load's earlier legs are not this leg's rate
        self._thread.start()

    def stop(self, *, deferred: bool = False) -> None:
        """Stop the thread and log the last line (the whole load's rate); ``deferred``: the load stops to defer."""
        if not self._thread.is_alive():
            return
        self._stop.set()
        self._thread.join()
        snapshot = self._snapshot()
        elapsed = max(1e-9, self._clock() - self._started)
        log.info("%s", progress_line(
            snapshot, (snapshot.done - self._done_at_start) / elapsed, elapsed, final=True, deferred=deferred
        ))

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.report()

    def report(self) -> None:
        """Log one line now, with the rate since the previous line."""
        snapshot = self._snapshot()
        now = self._clock()
        then, done_then = self._last
        window = max(1e-9, now - then)
        self._last = (now, snapshot.done)
        try:
            log.info("%s", progress_line(snapshot, (snapshot.done - done_then) / window, window))
        except Exception:  # observability only: a progress line must never break the load
            log.debug("progress line failed", exc_info=True)
