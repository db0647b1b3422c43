"""End to end: the real DAG, run by Airflow (`airflow dags test`), against a real source database (PostgreSQL,
MariaDB, SQLite) and the emulator as its own process over HTTP, with faults injected. Every run is checked for
exactly-once creation."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_mariadb_database, fresh_source_database, mariadb_conn_json
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
FAULTS = (
    "--error-500", "0.025", "--error-503", "0.025", "--cut-after-commit", "0.05", "--html-200", "0.02",
    "--rate-limit", "250", "--rate-limit-burst", "10", "--latency-ms", "5", "--seed", "20261128",
)
SUMMARY = {}


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    """A fresh database holding the default ``ticket_requests`` table, and its Airflow connection JSON."""
    with fresh_source_database(pg_database, "e2e") as (source, params):
        yield source, airflow_conn_json(params)


@pytest.fixture
def mariadb_source(mariadb_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    """A fresh MariaDB database holding ``ticket_requests``, and its Airflow connection JSON (conn_type ``mysql``)."""
    with fresh_mariadb_database(mariadb_database, "e2e") as (source, params):
        yield source, mariadb_conn_json(params)


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Iterator[tuple[SourceTable, str]]:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    yield source, sqlite_connection(path)
    source.close()


def rows(source: SourceTable) -> dict[str, dict[str, Any]]:
    columns = ("request_id", "status", "sys_id", "number", "error", "attempts", "sync_action")
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM ticket_requests")
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}


def check_exactly_once(source: SourceTable, emulator: EmulatorProcess, requests: list[dict[str, Any]],
                       invalid_ids: set[str]) -> dict[str, int]:
    """Each valid row is created exactly once and written back; each invalid row is rejected and never sent."""
    records = emulator.records(TABLE)
    per_correlation = Counter(record["correlation_id"] for record in records)
    assert not [key for key, n in per_correlation.items() if n > 1], "two records share a correlation_id"
    by_sys_id = {record["sys_id"]: record for record in records}
    state = rows(source)
    valid_ids = {r["request_id"] for r in requests} - invalid_ids
    for request_id in valid_ids:
        row = state[request_id]
        assert row["status"] == "created", row
        record = by_sys_id[row["sys_id"]]
        assert (record["correlation_id"], record["number"]) == (request_id, row["number"])
    for request_id in invalid_ids:
        assert state[request_id]["status"] == "rejected"
        assert state[request_id]["error"]
        assert ": " in state[request_id]["error"]
        assert request_id not in per_correlation, f"rejected row {request_id} was sent"
    assert set(per_correlation) == valid_ids
    return dict(Counter(
        f"{row['status']}_{row['sync_action']}" if row["sync_action"] else row["status"] for row in state.values()
    ))


def run_sync_twice(airflow_home: Path, source: SourceTable, conn: str, tmp_path: Path, count: int,
                   faults: tuple[str, ...]) -> dict[str, Any]:
    requests = list(sample_requests(count, invalid_every=15))
    source.insert_requests(requests)
    invalid_ids = {r["request_id"] for i, r in enumerate(requests, start=1) if i % 15 == 0}
    with EmulatorProcess(tmp_path / "emulator", *faults) as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(timeout=3),
        })
        code = airflow.run_dag(tmp_path / "run1.log")
        assert code == 0, (tmp_path / "run1.log").read_text()[-5000:]
        outcome = check_exactly_once(source, emulator, requests, invalid_ids)
        stats = emulator.stats()
        posts = stats["by_method"].get("POST", 0)

        code = airflow.run_dag(tmp_path / "run2.log", conf={"limit": 100_000})
        assert code == 0, (tmp_path / "run2.log").read_text()[-5000:]
        assert emulator.stats()["by_method"].get("POST", 0) == posts, "the second run sent a POST"
        assert check_exactly_once(source, emulator, requests, invalid_ids) == outcome
    return {"rows": count, "invalid": len(invalid_ids), "outcome": outcome, "posts": posts,
            "requests": stats["requests_total"], "throttled": stats["throttled"],
            "faults": {k: v for k, v in stats["faults"].items() if v}}


def test_dag_run_on_postgresql_with_faults_creates_each_case_exactly_once(
    airflow_home: Path, pg_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = pg_source
    result = run_sync_twice(airflow_home, source, conn, tmp_path, 600, FAULTS)
    assert result["outcome"].get("rejected") == 40
    assert result["outcome"].get("created_created", 0) + result["outcome"].get("created_adopted", 0) == 560
    # The faults really happened: every kind the issue names was injected and survived.
    assert {"error_500", "error_503", "cut_after_commit", "html_200"} <= set(result["faults"])
    assert result["throttled"] > 0
    print("\nPostgreSQL end-to-end:", json.dumps(result))


def test_dag_run_on_mariadb_with_faults_creates_each_case_exactly_once(
    airflow_home: Path, mariadb_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = mariadb_source
    result = run_sync_twice(airflow_home, source, conn, tmp_path, 600, FAULTS)
    assert result["outcome"].get("rejected") == 40
    assert result["outcome"].get("created_created", 0) + result["outcome"].get("created_adopted", 0) == 560
    assert {"error_500", "error_503", "cut_after_commit", "html_200"} <= set(result["faults"])
    assert result["throttled"] > 0
    print("\nMariaDB end-to-end:", json.dumps(result))


def test_dag_run_on_sqlite_with_faults_creates_each_case_exactly_once(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = sqlite_source
    result = run_sync_twice(airflow_home, source, conn, tmp_path, 300, FAULTS)
    assert result["outcome"].get("rejected") == 20
    assert result["outcome"].get("created_created", 0) + result["outcome"].get("created_adopted", 0) == 280
    print("\nSQLite end-to-end:", json.dumps(result))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_killing_the_load_mid_batch_loses_nothing_and_duplicates_nothing(
    airflow_home: Path, pg_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    """SIGKILL the whole `airflow dags test` process group while the load is posting; the next run finishes."""
    source, conn = pg_source
    requests = list(sample_requests(400))
    source.insert_requests(requests)
    with EmulatorProcess(tmp_path / "emulator", "--latency-ms", "40") as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        })
        process = airflow.start_dag_run(tmp_path / "killed.log", conf={"lease_seconds": 10, "max_in_flight": 4})

        def created() -> int:
            return sum(1 for row in rows(source).values() if row["status"] == "created")

        wait_for(lambda: created() >= 60, 120, "the load to be part-way")
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        at_kill = created()
        assert 60 <= at_kill < 400, at_kill
        in_emulator = len(emulator.records(TABLE))
        assert in_emulator >= at_kill  # rows in flight may be in ServiceNow but not yet written back

        # The dead run's lease (10 s, renewed per chunk) runs out; then the next scheduled run takes the rest.
        time.sleep(11)
        code = airflow.run_dag(tmp_path / "after.log")
        assert code == 0, (tmp_path / "after.log").read_text()[-5000:]
        outcome = check_exactly_once(source, emulator, requests, set())
        assert outcome.get("created_created", 0) + outcome.get("created_adopted", 0) == 400
        print(f"\nkill test: {at_kill} rows written back at the kill, {in_emulator} records in ServiceNow; "
              f"after the next run: {outcome}")
