"""ServiceNowUpdateOperator: the update task as Airflow runs it (its execute with a task context, connections from
AIRFLOW_CONN_*), against the emulator over real HTTP with a third of the PATCHes failing, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.support.loader_process import context
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.operators.update import ServiceNowUpdateOperator
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"


@pytest.fixture(params=["sqlite", "postgres"])
def source(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SourceTable]:
    if request.param == "sqlite":
        path = tmp_path / "source.db"
        table = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
        table.ensure_schema()
        monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
        yield table
        table.close()
        return
    with fresh_source_database(request.getfixturevalue("pg_database"), "update") as (table, params):
        monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", airflow_conn_json(params))
        yield table


def execute(source: SourceTable, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with source._transaction() as cursor:
        cursor.execute(source._q(sql), params)
        return list(cursor.fetchall()) if cursor.description else []


def test_the_update_task_under_5xx_and_cuts_applies_each_note_once(
    source: SourceTable, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 2},
    }))
    hook = ServiceNowHook()
    source.insert_requests(sample_requests(15))
    source.claim("t1", limit=15, chunk_size=15, lease_seconds=60)
    CaseLoader(hook, source, "t1", LoadSettings(backoff_base=0.01), sleep=lambda _: None).run()
    execute(source, f"UPDATE {source.table} SET status = 'update_pending', notes = 'Payslip received ' || id")
    posts = emulator.stats()["by_method"].get("POST", 0)
    emulator.set_faults(methods=("PATCH",), error_500=0.34, cut_after_commit=0.2, seed=5)

    task = ServiceNowUpdateOperator(task_id="update", settle_seconds="0", max_attempts="10", chunk_size="4")
    counts: dict[str, int] = {}
    for attempt in range(3):  # Airflow's retries: a try that could not check a lost answer fails and is retried
        try:
            counts = task.execute(context(f"run-{attempt}"))
        except AirflowFailException:
            raise
        except AirflowException:
            continue
        break

    emulator.set_faults(error_500=0, cut_after_commit=0)
    faults = emulator.stats()["faults"]
    assert faults["error_500"] + faults["cut_after_commit"] >= 3, faults  # the faults did hit
    assert counts["updated"] >= 1, counts
    assert counts["lost_answers"] >= 1, counts
    assert execute(source, f"SELECT DISTINCT status FROM {source.table}") == [("created",)]
    assert emulator.stats()["by_method"].get("POST", 0) == posts
    for row_id, sys_id in execute(source, f"SELECT id, sys_id FROM {source.table}"):
        values = [entry["value"] for entry in hook.journal_entries(TABLE, str(sys_id))]
        assert values.count(f"Payslip received {row_id}") == 1, (row_id, values)
    hook.close()


def test_an_unknown_closed_policy_fails_the_task_at_once() -> None:
    with pytest.raises(AirflowFailException, match="closed_policy must be one of skip, note_only"):
        ServiceNowUpdateOperator(task_id="update", closed_policy="ignore").settings()


def test_a_dry_run_plans_without_claiming_and_plans_nothing_on_a_table_not_migrated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "source.db"
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    task = ServiceNowUpdateOperator(task_id="update", is_dry_run="True")
    assert task.execute(context("dry-0")) == {"dry_run": True, "update_pending": 0}  # no table: nothing created
    assert not path.exists() or sqlite3.connect(path).execute("SELECT name FROM sqlite_master").fetchall() == []

    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(sample_requests(2))
    execute(source, f"UPDATE {source.table} SET status = 'update_pending', sys_id = ? WHERE id = 1", ("a" * 32,))
    plan = task.execute(context("dry-1"))
    assert (plan["update_pending"], plan["would_update"], plan["without_snapshot"]) == (1, 1, 1)
    assert execute(source, f"SELECT claim_token FROM {source.table} WHERE id = 1") == [(None,)]
    source.close()
