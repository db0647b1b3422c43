"""Counters of what the emulator was asked and what it answered."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

from ticketsync_dev.emulator.faults import OTHER_FAULTS, RANDOM_FAULTS

REQUEST_LOG_SIZE = 20_000  # the last API requests kept for `GET /_emulator/requests`


class Stats:
    """Thread-safe request counters: by method, by status, injected faults, requests in flight; and the last
    ``REQUEST_LOG_SIZE`` API requests with when they were answered (UNIX time), their method and status."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._by_method: Counter[str] = Counter()
        self._by_status: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._by_table: dict[str, Counter[str]] = {}
        self._total = 0
        self._no_response = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._log: deque[tuple[float, str, int | None]] = deque(maxlen=REQUEST_LOG_SIZE)

    def reset(self) -> None:
        with self._lock:
            self._started = time.monotonic()
            self._by_method.clear()
            self._by_status.clear()
            self._faults.clear()
            self._by_table.clear()
            self._total = self._no_response = self._max_in_flight = 0
            self._log.clear()

    def begin(self, method: str, table: str | None = None) -> None:
        """An API request arrived (its headers are read); ``table`` is the table its path names, if any."""
        with self._lock:
            self._total += 1
            self._by_method[method] += 1
            if table is not None:
                self._by_table.setdefault(table, Counter())[method] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def end(self, status: int | None, method: str = "") -> None:
        """The ``method`` request was answered with `status`, or its connection was cut (None)."""
        with self._lock:
            self._log.append((time.time(), method, status))
            self._in_flight -= 1
            if status is None:
                self._no_response += 1
            else:
                self._by_status[str(status)] += 1

    def requests(self) -> list[dict[str, Any]]:
        """The last API requests, oldest first: ``{"at": UNIX time answered, "method", "status"}``."""
        with self._lock:
            log = list(self._log)
        return [{"at": at, "method": method, "status": status} for at, method, status in log]

    def fault(self, kind: str) -> None:
        with self._lock:
            self._faults[kind] += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            faults = dict.fromkeys((*RANDOM_FAULTS, *OTHER_FAULTS), 0)
            faults.update(self._faults)
            return {
                "requests_total": self._total,
                "by_method": dict(self._by_method),
                "by_status": dict(sorted(self._by_status.items())),
                "by_table": {table: dict(counts) for table, counts in sorted(self._by_table.items())},
                "faults": faults,
                "throttled": self._by_status["429"],
                "no_response": self._no_response,
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "uptime_seconds": round(time.monotonic() - self._started, 3),
            }
