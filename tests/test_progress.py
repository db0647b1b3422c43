"""Progress lines in the task log: their fields, their cadence, and the reason when the load is paced or paused."""

from __future__ import annotations

import itertools
import json
import logging
import re
from collections.abc import Iterator

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.progress import ProgressSnapshot, duration, progress_line
from ticketsync.source import SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

INTERVAL = 0.25
LINE = re.compile(
    r"progress: (?P<done>[\d,]+)/(?P<claimed>[\d,]+) rows done \(created (?P<created>[\d,]+), adopted [\d,]+, "
    r"rejected (?P<rejected>[\d,]+), failed [\d,]+\), (?P<rate>[\d.]+) rows/s over the last \d+ s, "
    r"(?P<in_flight>\d+) in flight, ETA (?P<eta>[^;]+)(; (?P<reason>.+))?$"
)


def test_the_line_names_the_instances_limit_and_the_eta_it_means() -> None:
    snapshot = ProgressSnapshot(
        claimed=10_000, created=140, adopted=5, rejected=5, failed=0, in_flight=1, pace=5000 / 3600,
        limit_per_hour=5000,
    )

    line = progress_line(snapshot, 1.4, 15)

    assert line == (
        "progress: 150/10,000 rows done (created 140, adopted 5, rejected 5, failed 0), 1.4 rows/s over the last "
        "15 s, 1 in flight, ETA 1 h 58 min; paced to 1.39/s by the instance's limit of 5,000/h"
    )


@pytest.mark.parametrize(
    ("snapshot", "reason"),
    [
        (ProgressSnapshot(10, 0, 0, 0, 0, 0, pace=None), None),
        (ProgressSnapshot(10, 0, 0, 0, 0, 0, pace=20.0, configured_rate=20.0), "paced to 20.00/s by the rate_limit"),
        (ProgressSnapshot(10, 0, 0, 0, 0, 0, pace=12.5), "paced to 12.50/s, recovering after a 429"),
        (ProgressSnapshot(10, 0, 0, 0, 0, 0, pace=12.5, paused_for=3.2), "paused for 4 s after a 429"),
    ],
)
def test_the_reason_says_what_holds_the_load_back(snapshot: ProgressSnapshot, reason: str | None) -> None:
    line = progress_line(snapshot, 0.0, 15)

    match = LINE.match(line)
    assert match, line
    assert (match["reason"] or None) == reason or (reason and match["reason"].startswith(reason))


def test_durations_read_as_a_person_would_say_them() -> None:
    assert [duration(s) for s in (0, 12.2, 250, 7092, 90_000)] == ["0 s", "13 s", "4 min 10 s", "1 h 58 min",
                                                                  "25 h 0 min"]


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 5},
    }))
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def _progress_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "ticketsync.progress"]


def test_a_load_logs_progress_at_the_interval_and_a_last_line(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    source.insert_requests(sample_requests(60, invalid_every=10))
    source.claim("run-p", limit=1000, chunk_size=500, lease_seconds=600)
    emulator.set_faults(latency_ms=40)
    settings = LoadSettings(chunk_size=10, max_in_flight=2, progress_interval=INTERVAL)
    caplog.set_level(logging.INFO, logger="ticketsync.progress")
    try:
        counts = CaseLoader(hook, source, "run-p", settings).run()
    finally:
        emulator.set_faults(latency_ms=0)

    records = _progress_records(caplog)
    lines = [record.getMessage() for record in records]
    periodic = [LINE.match(line) for line in lines[:-1]]
    assert len(periodic) >= 3, lines  # 54 POSTs + 6 look-ups at 40 ms, two at a time: over a second
    assert all(periodic), lines
    assert all(match["claimed"] == "60" for match in periodic if match)
    done = [int(match["done"]) for match in periodic if match]
    assert done == sorted(done)
    assert done[-1] > done[0]
    assert any(float(match["rate"]) > 0 for match in periodic if match)
    gaps = [later.created - earlier.created for earlier, later in itertools.pairwise(records[:-1])]
    assert all(INTERVAL * 0.8 <= gap <= INTERVAL * 3 for gap in gaps), gaps  # the cadence holds
    assert lines[-1].startswith(f"load finished: 60/60 rows done (created {counts.created}, adopted 0, rejected 6,")


def test_a_named_rate_limit_is_the_reason_in_the_line(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    source.insert_requests(sample_requests(40))
    source.claim("run-r", limit=1000, chunk_size=500, lease_seconds=600)
    emulator.set_faults(rate_limit_per_second=10, rate_limit_burst=5)
    caplog.set_level(logging.INFO, logger="ticketsync.progress")
    try:
        CaseLoader(hook, source, "run-r", LoadSettings(chunk_size=20, max_in_flight=4, progress_interval=0.5)).run()
    finally:
        emulator.set_faults(rate_limit_per_second=0, rate_limit_burst=0)

    lines = [record.getMessage() for record in _progress_records(caplog)]
    assert any("by the instance's limit of 36,000/h" in line for line in lines), lines
