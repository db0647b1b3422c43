"""End to end: the status DAG run by Airflow (`airflow dags test`) after the sync DAG, against PostgreSQL and the
emulator in its own process: cases worked on the instance (states changed, some closed, one deleted) come back."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.support.receivers import WebhookReceiver, wait_until
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]
TABLE = "sn_bom_loan_service"


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str, str]]:
    with fresh_source_database(pg_database, "status") as (source, params):
        yield source, airflow_conn_json(params), params["dbname"]


def status_events(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["job"]["name"] == "servicenow_case_status.pull" and e["eventType"] == "COMPLETE"]


def case_rows(source: SourceTable) -> dict[str, tuple[Any, ...]]:
    columns = "request_id, sys_id, status, case_state, case_state_label, case_updated_at, updated_at, error"
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {columns} FROM ticket_requests ORDER BY id")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def summary(log: Path) -> dict[str, int]:
    """The counts the status task logged (its summary table)."""
    text = log.read_text()
    found = {}
    for label in ("pages read", "list requests", "cases read", "rows changed", "rows unchanged", "cases not found"):
        match = re.search(rf"^{label}\s+(\d+)$", text, re.MULTILINE)
        assert match, f"{label!r} not in the log:\n{text[-3000:]}"
        found[label] = int(match.group(1))
    return found


def test_status_dag_brings_worked_cases_back_paged_and_a_second_run_changes_nothing(
    airflow_home: Path, pg_source: tuple[SourceTable, str, str], tmp_path: Path
) -> None:
    source, conn, database = pg_source
    source.insert_requests(sample_requests(60))
    events_file = tmp_path / "openlineage.jsonl"
    transport = json.dumps({"type": "file", "log_file_path": str(events_file), "append": True})
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        connections = {"ticket_source": conn, "servicenow_default": emulator.connection()}
        sync = LocalAirflow(home=airflow_home, connections=connections)
        status = LocalAirflow(
            home=airflow_home,
            connections=connections,
            dag_id="servicenow_case_status",
            extra_env={"AIRFLOW__OPENLINEAGE__TRANSPORT": transport},
        )
        assert sync.run_dag(tmp_path / "sync.log") == 0, (tmp_path / "sync.log").read_text()[-5000:]
        conf = {"page_size": 25}
        assert status.run_dag(tmp_path / "status1.log", conf=conf) == 0, (tmp_path / "status1.log").read_text()[-5000:]
        first = case_rows(source)
        ids = list(first)
        sys_ids = {request_id: row[0] for request_id, row in first.items()}
        for request_id in ids[:6]:
            emulator.work(TABLE, sys_ids[request_id], state="10", work_notes="Taken")
        for request_id in ids[6:9]:
            emulator.work(TABLE, sys_ids[request_id], state="3", comments="Resolved with the customer")
        emulator.delete(TABLE, sys_ids[ids[9]])
        gets_before = emulator.stats()["by_method"].get("GET", 0)

        assert status.run_dag(tmp_path / "status2.log", conf=conf) == 0, (tmp_path / "status2.log").read_text()[-5000:]
        gets = emulator.stats()["by_method"].get("GET", 0) - gets_before
        worked = case_rows(source)
        assert status.run_dag(tmp_path / "status3.log", conf=conf) == 0, (tmp_path / "status3.log").read_text()[-5000:]
        port = emulator.port

    assert all(row[2:4] == ("1", "New") for row in first.values())
    second, third = summary(tmp_path / "status2.log"), summary(tmp_path / "status3.log")
    assert second["rows changed"] == 9
    assert second["cases not found"] == 1
    assert gets == second["list requests"]
    assert second["list requests"] == second["pages read"] + 1  # 59 cases in pages of 25, one existence query
    assert second["pages read"] == 3
    assert [worked[r][2:4] for r in ids[:9]] == [("10", "Open")] * 6 + [("3", "Closed")] * 3
    assert worked[ids[9]][1:4] == ("created", "1", "New")
    assert worked[ids[9]][6].startswith("case not found")
    assert all(worked[r] == first[r] for r in ids[10:])  # not written: updated_at is the same
    assert (third["rows changed"], third["cases not found"]) == (0, 1)
    assert case_rows(source) == worked
    events = status_events(events_file)
    assert len(events) == 3
    assert [(d["namespace"], d["name"]) for d in events[1]["inputs"]] == [(f"http://127.0.0.1:{port}", TABLE)]
    assert [(d["namespace"], d["name"]) for d in events[1]["outputs"]] == [
        ("postgres://127.0.0.1:5432", f"{database}.public.ticket_requests")
    ]
    facet = events[1]["run"]["facets"]["ticketsyncStatus"]
    assert (facet["pages"], facet["listRequests"], facet["rowsChanged"], facet["notFound"]) == (3, 4, 9, 1)
    print(f"\nstatus end-to-end: run 2 {second}; run 3 {third}")


def test_the_sync_report_alerts_when_the_status_pull_is_stuck(airflow_home: Path, tmp_path: Path) -> None:
    """The status DAG cannot alert while it is paused: the sync DAG's report checks its watermark's age too."""
    path = tmp_path / "source.db"
    with SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE) as source:
        source.ensure_schema()
        source.insert_requests(sample_requests(3))
        source.finish_status_pull(f"servicenow_default/{TABLE}", 0)
        with source._transaction() as cursor:  # the last complete pull was two hours ago
            cursor.execute(
                "UPDATE ticket_requests_status_pulls SET watermark = '2026-01-01 00:00:00', "
                "completed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')"
            )
    with EmulatorProcess(tmp_path / "emulator") as emulator, WebhookReceiver() as webhook:
        sync = LocalAirflow(
            home=airflow_home,
            connections={
                "ticket_source": sqlite_connection(path),
                "servicenow_default": emulator.connection(),
                "ticketsync_alert_webhook": webhook.connection("/hooks/ops"),
            },
            extra_env={"AIRFLOW_VAR_TICKETSYNC_ALERT_MAX_STATUS_AGE_MINUTES": "60"},
        )
        assert sync.run_dag(tmp_path / "sync.log") == 0, (tmp_path / "sync.log").read_text()[-5000:]
        assert wait_until(lambda: len(webhook.posts) >= 1)

    [post] = webhook.posts
    assert post.body["ticketsync"]["kind"] == "stuck_status"
    text = post.body["text"]
    # two hours when written, plus however long the run took
    assert re.search(rf"case status of servicenow_default/{TABLE} is stuck \(last complete: 12\d minutes ago\)", text)
    assert "alert above 60 minutes, Variable ticketsync_alert_max_status_age_minutes" in text
    assert "its watermark is 2026-01-01 00:00:00" in text
