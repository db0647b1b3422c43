"""The fault matrix: for each fault the emulator injects, the sync ends with every valid row created exactly once,
the invalid ones rejected (never sent), and nothing left pending.

Each case runs the real load (the pure transform + ``CaseLoader`` + ``ServiceNowHook``) against a real source
table (PostgreSQL and SQLite) and the emulator over real HTTP. "Ends" may take more than one task attempt, as in
production: a load that fails retryably (ServiceNow unavailable) or leaves rows pending is run again under the same
claim token (an Airflow task retry), at most ``MAX_TASK_ATTEMPTS`` times. The figures of every case are printed at
the end of the session (and kept in ``.artifacts/faults/fault-matrix.json``).

Storm cases use a ``Retry-After`` of 0.2 s instead of ServiceNow's whole seconds, to keep CI fast; the loader
honours whatever the instance sends. The DAG test at the bottom runs every fault at once through Airflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import conn_json
from tests.support.faults import TABLE, Backlog, save_result, verdict
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings, ServiceNowUnavailable
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.faults import RANDOM_FAULTS
from ticketsync_dev.local import EmulatorProcess, LocalAirflow

pytestmark = pytest.mark.integration

USER, PASSWORD = "admin", "matrix-pw"
TOKEN = "servicenow_ticket_sync:matrix"
MAX_TASK_ATTEMPTS = 5
BACKLOG = Backlog(120, invalid_every=12)  # 110 valid, 10 invalid
# Small backoffs for CI; max_attempts high enough that a row is never unlucky five times in a row at a 20 % rate.
# settle_seconds: the emulator's slowest write (0.7 s) stands in for ServiceNow's 60 s transaction quota.
SETTINGS = LoadSettings(chunk_size=20, max_in_flight=8, max_attempts=10, retry_rounds=3, backoff_base=0.02,
                        backoff_cap=0.1, settle_seconds=1.0)
NO_FAULTS = {name: 0.0 for name in RANDOM_FAULTS}


@dataclass(frozen=True)
class Case:
    name: str
    faults: dict[str, Any]
    injected: tuple[str, ...]  # what must have been injected, or the case proves nothing
    adopts: bool = False  # the fault strikes after the commit: some rows must have been adopted, not re-created
    timeout: float = 2.0  # the client's timeout (connection extra), seconds
    storm_attempts: int = 0  # the faults stop after this many task attempts (0: they never stop)
    settings: LoadSettings = SETTINGS
    failed_ok: bool = False
    min_attempts: int = 1
    backlog: Backlog = BACKLOG
    on_sqlite: bool = True  # dialect-independent and slow cases run on PostgreSQL only


def _5xx(status: int) -> Case:
    return Case(f"{status}", {f"error_{status}": 0.2}, (f"error_{status}",))


# A 429 storm is slow by design: the loader pauses for Retry-After and halves its pace (at least 1 request/s), then
# recovers by slow start and additive increase (ticketsync.throttle). The storm cases use a smaller backlog.
STORM_BACKLOG = Backlog(60, invalid_every=12)

CASES = [
    Case("429 storm with Retry-After", {"error_429": 0.1, "retry_after_seconds": 0.2}, ("error_429",),
         backlog=STORM_BACKLOG, on_sqlite=False),
    Case("429 storm without Retry-After", {"error_429_busy": 0.2}, ("error_429_busy",), backlog=STORM_BACKLOG),
    # Every POST is refused for a whole task attempt: the rows stay pending without using an attempt (max_attempts
    # is 1 here, so a counted 429 would have made them failed), and the next attempt creates them.
    Case("429 storm outlasting an attempt", {"error_429": 1.0, "retry_after_seconds": 0.05, "methods": ["POST"]},
         ("error_429",), storm_attempts=1, min_attempts=2, backlog=Backlog(12, invalid_every=12),
         settings=replace(SETTINGS, max_attempts=1, retry_rounds=0, max_rate_limited_waits=1)),
    _5xx(500), _5xx(502), _5xx(503), _5xx(504),
    Case("slower than the client timeout, after commit", {"slow_after_commit": 0.15, "slow_after_commit_ms": 700},
         ("slow_after_commit",), adopts=True, timeout=0.3),
    Case("slower than the client timeout, before commit",
         {"slow_before_commit": 0.15, "slow_before_commit_ms": 700, "methods": ["POST"]},
         ("slow_before_commit",), adopts=True, timeout=0.3),
    Case("connection cut before commit", {"cut_before_commit": 0.2}, ("cut_before_commit",)),
    Case("connection cut after commit", {"cut_after_commit": 0.2}, ("cut_after_commit",), adopts=True),
    # The connection is lost at once while the instance goes on writing (it commits 0.7 s later): the row must wait
    # settle_seconds like a timed-out POST before its look-up, or the retry would create a second case.
    Case("connection cut, the write lands later", {"cut_then_commit": 0.2, "slow_before_commit_ms": 700,
                                                   "methods": ["POST"]},
         ("cut_then_commit",), adopts=True),
    Case("truncated JSON body", {"malformed_json": 0.2}, ("malformed_json",), adopts=True),
    Case("malformed (non-JSON) body", {"garbled_json": 0.2}, ("garbled_json",), adopts=True),
    Case("200 HTML page", {"html_200": 0.2}, ("html_200",)),
    Case("201 without sys_id", {"missing_sys_id": 0.2}, ("missing_sys_id",), adopts=True),
    # Not transient: a data policy refuses the insert. The row is failed with ServiceNow's reason at once.
    Case("403 data policy (permanent)", {"error_403": 0.1, "methods": ["POST"]}, ("error_403",), failed_ok=True),
    Case("all of them at once", {
        "error_429": 0.03, "error_429_busy": 0.03, "retry_after_seconds": 0.2, "error_500": 0.02, "error_502": 0.02,
        "error_503": 0.02, "error_504": 0.02, "slow_after_commit": 0.02, "slow_after_commit_ms": 700,
        "cut_before_commit": 0.02, "cut_after_commit": 0.03, "malformed_json": 0.02, "garbled_json": 0.02,
        "html_200": 0.02, "missing_sys_id": 0.02,
    }, ("cut_after_commit", "error_503"), timeout=0.3),
]


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(user=USER, password=PASSWORD)) as emulator:
        yield emulator


@pytest.fixture
def emulator(running: RunningEmulator) -> RunningEmulator:
    running.reset(reset_faults=True)
    return running


def make_hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, timeout: float) -> ServiceNowHook:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_MATRIX", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": USER, "password": PASSWORD, "extra": {"timeout": timeout},
    }))
    return ServiceNowHook("servicenow_matrix", pool_size=SETTINGS.max_in_flight)


def sync_until_done(source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, case: Case) -> int:
    """Claim, then run the load as Airflow would retry it, until nothing is pending; returns the attempts used."""
    source.claim(TOKEN, limit=10_000, chunk_size=500, lease_seconds=600)
    for attempt in range(1, MAX_TASK_ATTEMPTS + 1):
        if case.storm_attempts and attempt > case.storm_attempts:
            emulator.set_faults(**NO_FAULTS)
        try:
            counts = CaseLoader(hook, source, TOKEN, case.settings).run()
        except ServiceNowUnavailable:
            continue  # the task fails retryably; its retry takes the same rows
        if counts.still_pending == 0:
            return attempt
    return MAX_TASK_ATTEMPTS + 1


MATRIX = [
    pytest.param(dialect, case, id=f"{case.name} [{dialect}]")
    for case in CASES for dialect in (Dialect.POSTGRES, Dialect.SQLITE) if case.on_sqlite or dialect is Dialect.POSTGRES
]


@pytest.mark.parametrize(("source", "case"), MATRIX, indirect=["source"])
def test_each_fault_ends_with_every_valid_row_created_exactly_once(
    case: Case, source: SourceTable, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    source.insert_requests(case.backlog.requests())
    emulator.set_faults(seed=len(case.name), **case.faults)
    hook = make_hook(emulator, monkeypatch, case.timeout)
    started = time.monotonic()
    try:
        attempts = sync_until_done(source, hook, emulator, case)
    finally:
        hook.close()
    seconds = time.monotonic() - started
    stats = emulator.stats()
    result = verdict(source, emulator.store.records(TABLE), case.backlog, failed_ok=case.failed_ok)
    injected = {kind: n for kind, n in stats["faults"].items() if n}
    save_result("fault-matrix", f"{case.name} [{source.dialect}]", {
        **result.as_dict(), "attempts": attempts, "requests": stats["requests_total"],
        "throttled": stats["throttled"], "seconds": round(seconds, 1), "faults": injected,
    })

    assert not result.problems, result.problems
    assert attempts <= MAX_TASK_ATTEMPTS, "rows still pending after every attempt"
    assert attempts >= case.min_attempts
    assert (result.pending, result.duplicates, result.rejected) == (0, 0, len(case.backlog.invalid_ids))
    assert result.created + result.adopted + result.failed == len(case.backlog.valid_ids)
    for kind in case.injected:
        assert injected.get(kind, 0) > 0, f"{kind} was never injected: the case proved nothing"
    if case.adopts:
        assert result.adopted > 0, "no POST answer was lost after its commit: the case proved nothing"
    if case.failed_ok:
        assert result.failed == injected["error_403"]
    else:
        assert result.failed == 0


def test_without_settling_a_write_slower_than_the_client_timeout_duplicates(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The control of the case above: look a timed-out POST up at once (settle_seconds=0), while the instance is
    still writing it, and the retry creates a second record. This is what ``settle_seconds`` prevents."""
    import sqlite3

    source = SourceTable(lambda: sqlite3.connect(tmp_path / "control.db"), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(BACKLOG.requests())
    # The write commits 2 s after the POST began, the client gives up at 0.3 s: the retry's look-up has 1.7 s to come
    # before the commit (with 0.7 s a loaded CI box once retried too late every time, and no duplicate appeared).
    emulator.set_faults(seed=3, slow_before_commit=0.15, slow_before_commit_ms=2000, methods=["POST"])
    hook = make_hook(emulator, monkeypatch, 0.3)
    case = Case("control", {}, (), settings=replace(SETTINGS, settle_seconds=0.0))
    try:
        sync_until_done(source, hook, emulator, case)
    finally:
        hook.close()
        source.close()
    time.sleep(2.5)  # let the slow writes finish
    records = emulator.store.records(TABLE)
    assert len(records) > len(BACKLOG.valid_ids), "no duplicate: the control no longer shows the race"


# ------------------------------------------------------------------------------------------------------------------
# the same, through Airflow: every fault at once, the real DAG on PostgreSQL, runs until done
# ------------------------------------------------------------------------------------------------------------------

MIXED = (
    "--error-429", "0.02", "--error-429-busy", "0.02", "--retry-after", "0.5", "--error-500", "0.01",
    "--error-502", "0.01", "--error-503", "0.01", "--error-504", "0.01", "--cut-before-commit", "0.01",
    "--cut-after-commit", "0.02",
    "--malformed-json", "0.01", "--garbled-json", "0.01", "--html-200", "0.01", "--missing-sys-id", "0.01",
    "--latency-ms", "2", "--seed", "5",
)


@pytest.mark.slow
def test_the_dag_under_every_fault_at_once_ends_with_each_case_created_exactly_once(
    airflow_home: Path, pg_source: tuple[SourceTable, dict[str, Any]], tmp_path: Path
) -> None:
    source, params = pg_source
    backlog = Backlog(300, invalid_every=20)
    source.insert_requests(backlog.requests())
    started = time.monotonic()
    with EmulatorProcess(tmp_path / "emulator", *MIXED) as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn_json(params), "servicenow_default": emulator.connection(timeout=1.0),
        })
        codes = []
        for run in range(1, 4):  # a run that ends with rows pending fails; the next scheduled run takes them
            codes.append(airflow.run_dag(tmp_path / f"run{run}.log"))
            if codes[-1] == 0:
                break
        stats = emulator.stats()
        result = verdict(source, emulator.records(TABLE), backlog)
    injected = {kind: n for kind, n in stats["faults"].items() if n}
    save_result("fault-matrix", "DAG run, every fault at once [postgres]", {
        **result.as_dict(), "attempts": len(codes), "requests": stats["requests_total"],
        "throttled": stats["throttled"], "seconds": round(time.monotonic() - started, 1), "faults": injected,
    })
    assert codes[-1] == 0, (tmp_path / f"run{len(codes)}.log").read_text()[-5000:]
    assert not result.problems, result.problems
    assert (result.pending, result.duplicates, result.failed) == (0, 0, 0)
    assert result.created + result.adopted == len(backlog.valid_ids)
    assert len(injected) >= 10, injected
