"""A settle wait holds back only the rows whose POST timed out: the other rows of the retry round go ahead at once.

The loader runs against the emulator over real HTTP; the client it is given records when each row was sent and
looked up (it hands every call to the real hook)."""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from collections.abc import Sequence

import pytest

from ticketsync.hooks.servicenow import CreatedRecord, ExistingRecord, ServiceNowHook, ServiceNowTimeout
from ticketsync.hooks.servicenow.errors import ServiceNowTransientError
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

SETTLE = 2.5


class Recorded:
    """Hands every call to the hook and notes, per correlation id, what happened when."""

    def __init__(self, hook: ServiceNowHook) -> None:
        self.hook = hook
        self.lock = threading.Lock()
        self.events: dict[str, list[tuple[float, str]]] = defaultdict(list)

    def note(self, correlation_id: str, what: str) -> None:
        with self.lock:
            self.events[correlation_id].append((time.monotonic(), what))

    def create_record(self, table: str, body: dict[str, str], echo: Sequence[str] = ()) -> CreatedRecord:
        key = body["correlation_id"]
        self.note(key, "post")
        try:
            return self.hook.create_record(table, body, echo)
        except ServiceNowTimeout:
            self.note(key, "timeout")
            raise
        except ServiceNowTransientError:
            self.note(key, "transient")
            raise

    def find_by_correlation(self, table: str, correlation_ids: Sequence[str]) -> dict[str, list[ExistingRecord]]:
        for key in correlation_ids:
            self.note(key, "lookup")
        return self.hook.find_by_correlation(table, correlation_ids)


@pytest.mark.parametrize("source", [Dialect.SQLITE], indirect=True)
def test_rows_that_need_no_settling_are_retried_without_waiting_for_the_ones_that_do(
    source: SourceTable, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_WINDOW", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 0.3},
    }))
    source.insert_requests(sample_requests(60))
    source.claim("run-w", limit=1000, chunk_size=500, lease_seconds=600)
    emulator.set_faults(seed=7, error_503=0.15, slow_before_commit=0.15, slow_before_commit_ms=700, methods=["POST"])
    hook = ServiceNowHook("servicenow_window", pool_size=8)
    client = Recorded(hook)
    settings = LoadSettings(chunk_size=20, max_in_flight=8, max_attempts=10, retry_rounds=4, backoff_base=0.02,
                            backoff_cap=0.05, settle_seconds=SETTLE)
    try:
        counts = CaseLoader(client, source, "run-w", settings).run()
    finally:
        hook.close()

    timed_out = {key: events for key, events in client.events.items() if any(w == "timeout" for _, w in events)}
    refused = {key: events for key, events in client.events.items()
               if any(w == "transient" for _, w in events) and key not in timed_out}
    assert timed_out, "the seed no longer times a POST out: the test proves nothing"
    assert refused, "the seed no longer refuses a POST with 503: the test proves nothing"
    first_timeout_sent = min(_first_post(events) for events in timed_out.values())
    for key, events in refused.items():
        retried = [at for at, what in events if what == "lookup"][1:]  # the look-up of its retry round
        assert retried, key
        assert retried[0] < first_timeout_sent + SETTLE, f"{key} waited for another row's settle time"
    for key, events in timed_out.items():
        last_timeout_post = max(at for at, what in events[: _index_of_first(events, "timeout")] if what == "post")
        later_lookups = [at for at, what in events if what == "lookup" and at > last_timeout_post]
        assert later_lookups, key
        assert later_lookups[0] >= last_timeout_post + SETTLE, f"{key} was looked up before its POST settled"
    assert counts.still_pending == 0
    assert counts.created + counts.adopted == 60


def _first_post(events: list[tuple[float, str]]) -> float:
    return min(at for at, what in events if what == "post")


def _index_of_first(events: list[tuple[float, str]], what: str) -> int:
    return next(index for index, (_, kind) in enumerate(events) if kind == what)
