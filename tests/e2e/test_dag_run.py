"""End to end: the real DAG, run by Airflow (`airflow dags test`), against a real source database (PostgreSQL,
MariaDB, SQLite) and the emulator as its own process over HTTP, with faults injected. Every run is checked for
exactly-once creation, and for the Asset event it emits (or not). SIGKILLs of the whole `airflow dags test` process
group mid-load, followed by runs that finish, are in tests/faults/test_soak.py (two, under faults) and
tests/faults/test_kill_loop.py."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_mariadb_database, fresh_source_database, mariadb_conn_json
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
CASES_ASSET_URI = f"servicenow://servicenow_default/{TABLE}"
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


def request_updates(source: SourceTable, emulator: EmulatorProcess) -> dict[str, str]:
    """Ten created rows get a new note (every other one a new short description too) and ``update_pending``, as a
    producer sets them; returns each one's case sys_id and its new note."""
    with source._transaction() as cursor:
        cursor.execute("SELECT id, sys_id FROM ticket_requests WHERE status = 'created' ORDER BY id LIMIT 10")
        chosen = [(int(row_id), str(sys_id)) for row_id, sys_id in cursor.fetchall()]
        for row_id, _ in chosen:
            extra = ", short_description = 'Updated by the bank'" if row_id % 2 else ""
            cursor.execute(source._q(f"UPDATE ticket_requests SET status = 'update_pending', notes = ?{extra} "
                                     "WHERE id = ?"), (f"New document for request {row_id}", row_id))
    return {sys_id: f"New document for request {row_id}" for row_id, sys_id in chosen}


def check_updates(emulator: EmulatorProcess, updated: dict[str, str]) -> None:
    """Each update's note is on its case exactly once (whatever the faults did to its PATCH)."""
    journal = Counter((entry["element_id"], entry["value"]) for entry in emulator.records("sys_journal_field"))
    for sys_id, note in updated.items():
        assert journal[(sys_id, note)] == 1, (sys_id, note, journal[(sys_id, note)])


def cases_events(airflow_home: Path, after: int = 0) -> list[dict[str, Any]]:
    """The events of the ServiceNow table's Asset in the metadata database (id above ``after``), as a downstream DAG
    scheduled on it receives them: the extra, and the run and map index that emitted each."""
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        found = db.execute(
            "SELECT e.id, e.extra, e.source_dag_id, e.source_task_id, e.source_run_id, e.source_map_index "
            "FROM asset_event e JOIN asset a ON a.id = e.asset_id WHERE a.uri = ? AND e.id > ? ORDER BY e.id",
            (CASES_ASSET_URI, after),
        ).fetchall()
    columns = ("id", "extra", "dag_id", "task_id", "run_id", "map_index")
    return [{**dict(zip(columns, row, strict=True)), "extra": json.loads(row[1])} for row in found]


def last_event_id(airflow_home: Path) -> int:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM asset_event").fetchone()[0])


def run_sync_twice(airflow_home: Path, source: SourceTable, conn: str, tmp_path: Path, count: int,
                   faults: tuple[str, ...], lineage: Path | None = None) -> dict[str, Any]:
    """Two runs: the first syncs ``count`` rows under ``faults`` (OpenLineage events to the file ``lineage``, if
    given), the second finds nothing to do."""
    requests = list(sample_requests(count, invalid_every=15))
    source.insert_requests(requests)
    invalid_ids = {r["request_id"] for i, r in enumerate(requests, start=1) if i % 15 == 0}
    with EmulatorProcess(tmp_path / "emulator", *faults) as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(timeout=3),
        })
        if lineage is not None:
            transport = {"type": "file", "log_file_path": str(lineage), "append": True}
            airflow.extra_env["AIRFLOW__OPENLINEAGE__TRANSPORT"] = json.dumps(transport)
        before = last_event_id(airflow_home)
        # settle_seconds: the emulator's writes are done before it answers; 2 s stands in for ServiceNow's 60 s quota
        # (a POST whose connection was cut is looked up only after it).
        code = airflow.run_dag(tmp_path / "run1.log", conf={"settle_seconds": 2})
        airflow.extra_env.pop("AIRFLOW__OPENLINEAGE__TRANSPORT", None)
        assert code == 0, (tmp_path / "run1.log").read_text()[-5000:]
        outcome = check_exactly_once(source, emulator, requests, invalid_ids)
        stats = emulator.stats()
        posts = stats["by_method"].get("POST", 0)
        # One event for the ServiceNow table, from the load, carrying how the run's rows ended.
        [event] = cases_events(airflow_home, before)
        assert (event["dag_id"], event["task_id"], event["map_index"]) == ("servicenow_ticket_sync", "load", 0)
        assert event["extra"] == {
            "dag_id": "servicenow_ticket_sync", "run_id": event["run_id"], "loader": 0, "loaders": 1,
            "created": outcome.get("created_created", 0), "adopted": outcome.get("created_adopted", 0),
            "failed": 0, "rejected": outcome["rejected"],
        }
        print("\nAsset event of the first run:", json.dumps(event["extra"]))

        updated = request_updates(source, emulator)
        before = last_event_id(airflow_home)
        code = airflow.run_dag(tmp_path / "run2.log", conf={"limit": 100_000, "settle_seconds": 2})
        assert code == 0, (tmp_path / "run2.log").read_text()[-5000:]
        assert emulator.stats()["by_method"].get("POST", 0) == posts, "the second run sent a POST"
        assert check_exactly_once(source, emulator, requests, invalid_ids) == outcome
        check_updates(emulator, updated)
        # The report counts the update task's last try: reads are retried in the task, but a PATCH whose answer was lost
        # and could not be checked fails the try, and its retry does the rest.
        assert "cases updated     " in (tmp_path / "run2.log").read_text()
        # A run that created nothing emits no event: a DAG scheduled on the table is not woken for nothing.
        assert cases_events(airflow_home, before) == []
        assert "asset event not emitted (no row came to a case)" in (tmp_path / "run2.log").read_text()
    return {"rows": count, "invalid": len(invalid_ids), "outcome": outcome, "posts": posts, "port": emulator.port,
            "requests": stats["requests_total"], "throttled": stats["throttled"],
            "faults": {k: v for k, v in stats["faults"].items() if v}}


def test_dag_run_on_postgresql_with_faults_creates_each_case_exactly_once(
    airflow_home: Path, pg_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = pg_source
    events_file = tmp_path / "openlineage.jsonl"
    result = run_sync_twice(airflow_home, source, conn, tmp_path, 600, FAULTS, lineage=events_file)
    outcome = result["outcome"]
    assert outcome.get("rejected") == 40
    assert outcome.get("created_created", 0) + outcome.get("created_adopted", 0) == 560
    # The faults really happened: every kind the issue names was injected and survived.
    assert {"error_500", "error_503", "cut_after_commit", "html_200"} <= set(result["faults"])
    assert result["throttled"] > 0
    # OpenLineage (file transport): the load's COMPLETE event names the PostgreSQL table and the instance, with counts.
    [event] = load_lineage_events(events_file)
    database = json.loads(conn)["schema"]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [
        ("postgres://127.0.0.1:5432", f"{database}.public.ticket_requests")
    ]
    assert [(d["namespace"], d["name"]) for d in event["outputs"]] == [(f"http://127.0.0.1:{result['port']}", TABLE)]
    facet = event["run"]["facets"]["ticketsync"]
    # The counts of the load's last try (a task retry under faults counts only what was left); exact counts of a
    # fault-free run: tests/e2e/test_operations.py (SQLite).
    assert (facet["failed"], facet["dryRun"]) == (0, False)
    assert 0 < facet["created"] + facet["adopted"] <= facet["taken"] <= 560
    assert facet["posts"] >= facet["created"]
    print("\nPostgreSQL end-to-end:", json.dumps(result))
    print("OpenLineage load COMPLETE datasets:", json.dumps({"inputs": event["inputs"], "outputs": event["outputs"],
                                                            "ticketsync": facet}))


def load_lineage_events(path: Path) -> list[dict[str, Any]]:
    """The load's COMPLETE events in an OpenLineage file transport's output."""
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["job"]["name"] == "servicenow_ticket_sync.load" and e["eventType"] == "COMPLETE"]


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
