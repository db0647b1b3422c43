"""Long waits free the worker: a load whose instance asks for a wait longer than ``defer_after`` stops at a safe point
(the POSTs on the wire finish and are written back), keeps its claim past the wait, and a next leg finishes it
exactly once; below the threshold it waits in the task. Over real HTTP (the emulator's hourly window, shortened to
seconds) and a real source table on each dialect."""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import requests

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

pytestmark = pytest.mark.integration

TABLE = "sn_bom_loan_service"
ROWS = 16
WINDOW = {"rate_limit_per_window": 12, "rate_limit_window_seconds": 7.0, "latency_ms": 400}
# One look-up and 11 POSTs fit in the first window; the 12th POST is refused with a wait of about 5 s.
DEFER_ROWS = 6
DEFER_WINDOW = {"rate_limit_per_window": 4, "rate_limit_window_seconds": 7.0, "latency_ms": 400}
# The deferral test's window: one look-up and 3 POSTs fit. The 4 lanes send their first POSTs together, so the
# refused one (answered at once) is refused while the other three are still on the wire (400 ms each): whatever the
# box's load, the deferral happens with POSTs in flight. Its next leg (one look-up, 3 POSTs) fits the next window.
SETTINGS = LoadSettings(chunk_size=20, max_in_flight=4, backoff_base=0.05, backoff_cap=0.2, defer_after=2.0)


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 30},
    }))
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def statuses(source: SourceTable) -> dict[str, tuple[str, str | None]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, status, sys_id FROM {source.table}")
        return {row[0]: (row[1], row[2]) for row in cursor.fetchall()}


def check_written_back(source: SourceTable, emulator: RunningEmulator) -> int:
    """Every record the instance holds is the case of exactly one row, written back; returns how many."""
    records = _records(emulator)
    per_correlation = Counter(record["correlation_id"] for record in records)
    assert all(count == 1 for count in per_correlation.values()), per_correlation
    state = statuses(source)
    for record in records:
        assert state[record["correlation_id"]] == ("created", record["sys_id"]), record
    return len(records)


def _records(emulator: RunningEmulator) -> list[dict[str, str]]:
    payload = requests.get(f"{emulator.url}/_emulator/records/{TABLE}", timeout=10).json()
    return list(payload["result"] if isinstance(payload, dict) else payload)


def test_a_long_wait_defers_after_the_posts_on_the_wire_and_keeps_the_claim_past_it(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    source.insert_requests(sample_requests(DEFER_ROWS))
    source.claim("run-d", limit=1000, chunk_size=500, lease_seconds=600)
    emulator.set_faults(**DEFER_WINDOW)
    caplog.set_level(logging.INFO, logger="ticketsync.loader")
    caplog.set_level(logging.INFO, logger="ticketsync.progress")

    started = time.monotonic()
    loader = CaseLoader(hook, source, "run-d", SETTINGS)
    first = loader.run()
    stopped = time.time()

    deferral = loader.deferral
    assert deferral is not None
    assert time.monotonic() - started < 4, "it waited in the task instead of deferring"
    assert 2.0 < deferral.resume_in <= 8.5  # the rest of the window, and a second
    # Nothing on the wire was cut short: POSTs answered after the first 429 (sent before it) are written back, and
    # every record the instance holds is the case of its row.
    log = emulator.requests()
    first_429 = next(entry["at"] for entry in log if entry["status"] == 429)
    assert any(entry["at"] > first_429 and entry["status"] == 201 for entry in log), log
    created = check_written_back(source, emulator)
    assert created == first.created == sum(entry["status"] == 201 for entry in log) > 0
    assert deferral.held == DEFER_ROWS - created == source.held("run-d")
    assert (first.taken, first.still_pending) == (created, 0)
    lines = [record.getMessage() for record in caplog.records]
    assert any("stopping here to defer (no POST was cut short)" in line for line in lines), lines
    assert any(line.startswith(f"load deferred: {created}/{DEFER_ROWS} rows done") and
               line.endswith(f"{DEFER_ROWS - created} rows left for the next leg") for line in lines), lines

    # The claim outlives the wait: past the resume moment the rows are still leased, and no other run takes them.
    time.sleep(max(0.0, stopped + deferral.resume_in - time.time()) + 0.2)
    assert source.unreleased("run-d") == deferral.held
    assert source.claim("another-run", limit=1000, chunk_size=500, lease_seconds=600) == 0

    # The next leg looks the rows up first and finishes them; the counts go on from the first leg's.
    second_loader = CaseLoader(hook, source, "run-d", SETTINGS, counts=first)
    second = second_loader.run()
    assert second_loader.deferral is None
    assert check_written_back(source, emulator) == DEFER_ROWS
    assert (second.created, second.taken, second.still_pending, second.failed) == (DEFER_ROWS, DEFER_ROWS, 0, 0)
    assert second.lookups >= first.lookups + 1
    assert second.rate_limited >= first.rate_limited >= 1
    assert source.unreleased("run-d") == 0


def test_a_wait_below_the_threshold_is_waited_in_the_task(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """The control: the same window, a threshold above its wait: no deferral, one leg, every row created once."""
    source.insert_requests(sample_requests(ROWS))
    source.claim("run-w", limit=1000, chunk_size=500, lease_seconds=600)
    emulator.set_faults(**WINDOW)

    started = time.monotonic()
    loader = CaseLoader(hook, source, "run-w", LoadSettings(
        chunk_size=20, max_in_flight=4, backoff_base=0.05, backoff_cap=0.2, defer_after=30.0,
    ))
    counts = loader.run()

    assert loader.deferral is None
    assert time.monotonic() - started > 4, "the window's wait was not waited"
    assert (counts.created, counts.still_pending, counts.rate_limited > 0) == (ROWS, 0, True)
    assert check_written_back(source, emulator) == ROWS
    assert source.unreleased("run-w") == 0
