"""End to end: the credit card definition synced by its own DAG (`servicenow_credit_card_sync`, built by the DAG
factory), through the real DAG run (`airflow dags test`) on PostgreSQL, against the emulator as its own process."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_ADMIN_DSN, airflow_conn_json, pg_connector
from ticketsync.definitions import packaged_definition
from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator.reference import seeded_sys_id
from ticketsync_dev.local import EmulatorProcess, LocalAirflow

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAG_ID = "servicenow_credit_card_sync"
TABLE = "sn_bom_credit_card_service"
SOURCE_TABLE = "card_service_requests"
CARD_ASSET_URI = f"servicenow://servicenow_default/{TABLE}"
LOAN_ASSET_URI = "servicenow://servicenow_default/sn_bom_loan_service"
PRIORITIES = (("High", "2"), ("1", "1"), ("low", "4"), ("MODERATE", "3"))
COLUMNS = ("request_id", "status", "sys_id", "number", "error", "resolved_references")


def card_requests() -> list[dict[str, Any]]:
    """Ten good card requests by business key, one with a group no one has (on_no_match: empty), and two bad ones."""
    requests = [
        {
            "request_id": f"CARD-{n:03d}", "source_system": "cards-crm",
            "short_description": f"Card blocked after travel ({n})",
            "description": f"The customer's card was declined abroad, attempt {n}.",
            "consumer_number": f"C-{n:04d}", "account_number": f"CC-4000{n:02d}",
            "assignment_group_name": "Card Services", "contact_type": "Phone",
            "priority": PRIORITIES[n % len(PRIORITIES)][0], "notes": f"Called in on line {n}",
        }
        for n in range(1, 11)
    ]
    requests.append({**requests[0], "request_id": "CARD-NOGROUP", "assignment_group_name": "No Such Group"})
    requests.append({**requests[1], "request_id": "CARD-BADPRIO", "priority": "urgent"})
    requests.append({**requests[2], "request_id": "CARD-BADACCT", "account_number": "CC-499999"})
    return requests


@pytest.fixture
def card_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    """A new database with the card table as the definition names it, created by the migrator for that table."""
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"ticketsync_cards_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params = {**pg_database, "dbname": name}
    own = [column for column in packaged_definition(TABLE).source_columns() if column not in PRODUCER_COLUMNS]
    assert own == ["description", "priority"]
    source = SourceTable(pg_connector(params), Dialect.POSTGRES, SOURCE_TABLE, extra_columns=own)
    source.ensure_schema()
    try:
        yield source, airflow_conn_json(params)
    finally:
        source.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def state(source: SourceTable) -> dict[str, dict[str, Any]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(COLUMNS)} FROM {SOURCE_TABLE}")
        return {row[0]: dict(zip(COLUMNS, row, strict=True)) for row in cursor.fetchall()}


def asset_events(airflow_home: Path, uri: str, after: int) -> list[dict[str, Any]]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        found = db.execute(
            "SELECT e.extra, e.source_dag_id, e.source_task_id FROM asset_event e JOIN asset a ON a.id = e.asset_id "
            "WHERE a.uri = ? AND e.id > ? ORDER BY e.id", (uri, after),
        ).fetchall()
    return [{"extra": json.loads(extra), "dag_id": dag_id, "task_id": task_id} for extra, dag_id, task_id in found]


def last_event_id(airflow_home: Path) -> int:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        return int(db.execute("SELECT COALESCE(MAX(id), 0) FROM asset_event").fetchone()[0])


def test_the_credit_card_definition_syncs_end_to_end_through_its_own_dag(
    airflow_home: Path, card_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = card_source
    definition = packaged_definition(TABLE)
    assert (definition.dag_id, definition.source.table) == (DAG_ID, SOURCE_TABLE)
    requests = card_requests()
    source.insert_requests(requests)
    bad = {"CARD-BADPRIO", "CARD-BADACCT"}
    good = [r for r in requests if r["request_id"] not in bad]
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        airflow = LocalAirflow(home=airflow_home, dag_id=DAG_ID, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        })
        before = last_event_id(airflow_home)
        code = airflow.run_dag(tmp_path / "run1.log", conf={"chunk_size": 5})
        log = (tmp_path / "run1.log").read_text()
        assert code == 0, log[-5000:]

        # every good row became exactly one card service case, with the fields the definition maps
        records = emulator.records(TABLE)
        assert Counter(record["correlation_id"] for record in records) == Counter(r["request_id"] for r in good)
        assert emulator.records("sn_bom_loan_service") == [], "a card request became a loan case"
        by_id = {record["correlation_id"]: record for record in records}
        rows = state(source)
        for request in good:
            record, row = by_id[request["request_id"]], rows[request["request_id"]]
            assert (row["status"], row["sys_id"], row["number"]) == ("created", record["sys_id"], record["number"])
            assert record["number"].startswith("CCS")
            assert record["consumer"] == seeded_sys_id("csm_consumer", request["consumer_number"])
            assert record["sold_product"] == seeded_sys_id("sn_bom_financial_account", request["account_number"])
            group = request["assignment_group_name"]
            assert record["assignment_group"] == ("" if group == "No Such Group" else
                                                  seeded_sys_id("sys_user_group", group))
            assert record["priority"] == dict(PRIORITIES)[request["priority"]]  # a label mapped to its value
            assert record["category"] == "1"  # the definition's constant
            assert record["contact_type"] == "phone"
            assert (record["short_description"], record["description"]) == (
                request["short_description"], request["description"])
            assert record["correlation_display"] == "cards-crm"
            resolved = json.loads(row["resolved_references"])
            assert resolved["consumer"] == record["consumer"]
            assert resolved["sold_product"] == record["sold_product"]

        # the bad rows are rejected, each with a reason naming its column; the task log names the row
        rejected = {rid: row["error"] for rid, row in rows.items() if row["status"] == "rejected"}
        assert set(rejected) == bad
        assert rejected["CARD-BADPRIO"] == (
            "priority: must be one of 1, 2, 3, 4 or critical, high, moderate, low, got 'urgent'")
        assert rejected["CARD-BADACCT"] == (
            "account_number: no sn_bom_financial_account with account_number 'CC-499999'")
        assert "(request_id 'CARD-BADPRIO'): priority: must be one of" in log

        # the card table's own Asset event, and none on the loan table's
        [event] = asset_events(airflow_home, CARD_ASSET_URI, before)
        assert (event["dag_id"], event["task_id"]) == (DAG_ID, "load")
        assert (event["extra"]["created"], event["extra"]["rejected"]) == (len(good), len(bad))
        assert asset_events(airflow_home, LOAN_ASSET_URI, before) == []

        # a rerun sends nothing and emits nothing
        posts = emulator.stats()["by_method"]["POST"]
        assert posts == len(good)
        before = last_event_id(airflow_home)
        code = airflow.run_dag(tmp_path / "run2.log")
        assert code == 0, (tmp_path / "run2.log").read_text()[-5000:]
        assert emulator.stats()["by_method"]["POST"] == posts, "the rerun sent a POST"
        assert state(source) == rows
        assert asset_events(airflow_home, CARD_ASSET_URI, before) == []
    print(f"\ncredit card sync end to end: {len(good)} cases created in {TABLE}, {len(bad)} rejected, "
          f"Asset event {event['extra']}")


STATUS_DAG_ID = "servicenow_credit_card_status"


def case_states(source: SourceTable) -> dict[str, tuple[Any, ...]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, status, case_state, case_state_label, error FROM {SOURCE_TABLE}")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def test_the_card_status_dag_brings_a_worked_case_back_and_an_update_patches_only_the_changed_field(
    airflow_home: Path, card_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    """The card definition's own status DAG writes its cases' states into card_service_requests, and its sync DAG's
    update task PATCHes a card row's changed description alone (the definition's fields and transform)."""
    source, conn = card_source
    source.insert_requests(card_requests()[:3])
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        connections = {"ticket_source": conn, "servicenow_default": emulator.connection()}
        sync = LocalAirflow(home=airflow_home, dag_id=DAG_ID, connections=connections)
        status = LocalAirflow(home=airflow_home, dag_id=STATUS_DAG_ID, connections=connections)
        assert sync.run_dag(tmp_path / "sync1.log") == 0, (tmp_path / "sync1.log").read_text()[-5000:]
        sys_ids = {request_id: row["sys_id"] for request_id, row in state(source).items()}
        assert len(sys_ids) == 3
        assert all(sys_ids.values())

        # an agent works one case; the card status DAG brings every case's state back into the card rows
        emulator.work(TABLE, sys_ids["CARD-001"], state="10")
        assert status.run_dag(tmp_path / "status.log") == 0, (tmp_path / "status.log").read_text()[-5000:]
        states = case_states(source)
        assert states["CARD-001"] == ("created", "10", "Open", None)
        assert states["CARD-002"] == states["CARD-003"] == ("created", "1", "New", None)
        assert re.search(r"^rows changed\s+3$", (tmp_path / "status.log").read_text(), re.MULTILINE)

        # the producer changes a card row's description: one PATCH with that field alone, no POST
        before = {record["sys_id"]: record for record in emulator.records(TABLE)}[sys_ids["CARD-002"]]
        with source._transaction() as cursor:
            cursor.execute(
                f"UPDATE {SOURCE_TABLE} SET description = %s, status = 'update_pending' WHERE request_id = %s",
                ("The card was declined abroad; the customer is home again", "CARD-002"),
            )
        methods = dict(emulator.stats()["by_method"])
        assert sync.run_dag(tmp_path / "sync2.log") == 0, (tmp_path / "sync2.log").read_text()[-5000:]
        by_method = emulator.stats()["by_method"]
        assert by_method.get("PATCH", 0) == methods.get("PATCH", 0) + 1
        assert by_method.get("POST", 0) == methods.get("POST", 0)
        after = {record["sys_id"]: record for record in emulator.records(TABLE)}[sys_ids["CARD-002"]]
    assert after["description"] == "The card was declined abroad; the customer is home again"
    kept = [key for key in before if key == "sys_id" or not key.startswith("sys_")]  # sys_ fields: the instance's
    assert {"consumer", "sold_product", "assignment_group", "priority", "short_description"} <= set(kept)
    assert {key: after[key] for key in kept if key != "description"} == {
        key: before[key] for key in kept if key != "description"}
    assert case_states(source)["CARD-002"] == ("created", "1", "New", None)
    print(f"\ncard status and update end to end: states {states}; one PATCH, {by_method}")
