"""The loader's requests in flight are concurrent transactions on the instance only because each lane holds its own
ServiceNow session: against the emulator's session synchroniser (one transaction at a time per session), a load with
lanes runs ``max_in_flight`` at once and creates about that many sessions; the control, one cookie jar shared by
every lane, collapses to one at a time."""

from __future__ import annotations

import json
import time

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

MAX_IN_FLIGHT = 8
ROWS = 96
LATENCY_MS = 60
SETTINGS = LoadSettings(chunk_size=32, max_in_flight=MAX_IN_FLIGHT, backoff_base=0.05, backoff_cap=0.2)


@pytest.fixture
def conn_id(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_LOADER_LANES", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 30},
    }))
    emulator.set_faults(latency_ms=LATENCY_MS)
    return "servicenow_loader_lanes"


def _load(source: SourceTable, conn_id: str, *, shared_session: bool) -> tuple[dict[str, int], float]:
    source.insert_requests(sample_requests(ROWS))
    source.claim("run-lanes", limit=10_000, chunk_size=500, lease_seconds=600)
    hook = ServiceNowHook(conn_id, pool_size=MAX_IN_FLIGHT, shared_session=shared_session)
    started = time.monotonic()
    try:
        counts = CaseLoader(hook, source, "run-lanes", SETTINGS).run().as_dict()
    finally:
        hook.close()
    return counts, time.monotonic() - started


@pytest.mark.parametrize("source", [Dialect.SQLITE], indirect=True)
def test_each_lane_has_its_own_session_so_the_instance_runs_max_in_flight_at_once(
    source: SourceTable, conn_id: str, emulator: RunningEmulator
) -> None:
    counts, elapsed = _load(source, conn_id, shared_session=False)

    stats = emulator.stats()
    assert counts["created"] == ROWS
    assert stats["max_transactions"] == MAX_IN_FLIGHT
    assert stats["sessions_created"] <= 2 * MAX_IN_FLIGHT  # a session per lane (and one for the look-ups)
    assert stats["sessions_refused"] == 0
    serial = (ROWS + 3) * LATENCY_MS / 1000
    assert elapsed < serial / 3, elapsed


@pytest.mark.parametrize("source", [Dialect.SQLITE], indirect=True)
def test_control_lanes_sharing_one_session_run_one_at_a_time(
    source: SourceTable, conn_id: str, emulator: RunningEmulator
) -> None:
    counts, elapsed = _load(source, conn_id, shared_session=True)

    stats = emulator.stats()
    assert counts["created"] == ROWS  # correct, but
    assert stats["max_transactions"] == 1  # the instance ran every request of the one session in turn
    assert stats["sessions_created"] == 1
    assert elapsed >= (ROWS + 3) * LATENCY_MS / 1000 * 0.95, elapsed
