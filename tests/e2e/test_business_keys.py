"""End to end: requests that carry only business keys, through the real DAG (`airflow dags test`) on PostgreSQL,
against the emulator as its own process with its seeded reference tables."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from ticketsync.source import SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import keyed_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
# source key column -> (reference field, table, key field)
KEYS = {
    "consumer_number": ("consumer", "csm_consumer", "number"),
    "account_number": ("sold_product", "sn_bom_financial_account", "account_number"),
    "assignment_group_name": ("assignment_group", "sys_user_group", "name"),
}
ROWS, BAD_EVERY, CHUNK = 200, 8, 25


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    with fresh_source_database(pg_database, "keys") as (source, params):
        yield source, airflow_conn_json(params)


def state(source: SourceTable) -> dict[str, dict[str, Any]]:
    columns = ("request_id", "status", "sys_id", "error", "resolved_references", "consumer", "sold_product")
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM ticket_requests")
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}


def key_index(emulator: EmulatorProcess) -> dict[str, dict[str, list[str]]]:
    """The instance's truth, read back from the emulator: key -> sys_ids, per reference table."""
    index: dict[str, dict[str, list[str]]] = {}
    for _field, table, key_field in KEYS.values():
        for record in emulator.records(table):
            index.setdefault(table, {}).setdefault(record[key_field], []).append(record["sys_id"])
    return index


def test_business_key_rows_reference_exactly_the_records_their_keys_name(
    airflow_home: Path, pg_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = pg_source
    requests = list(keyed_requests(ROWS, bad_every=BAD_EVERY))
    assert not any(r.get(field) for r in requests for field in ("sold_product", "assignment_group"))
    source.insert_requests(requests)
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        })
        code = airflow.run_dag(tmp_path / "run1.log", conf={"chunk_size": CHUNK})
        assert code == 0, (tmp_path / "run1.log").read_text()[-5000:]

        truth = key_index(emulator)
        records = {record["correlation_id"]: record for record in emulator.records(TABLE)}
        rows = state(source)
        rejected = {rid: row["error"] for rid, row in rows.items() if row["status"] == "rejected"}
        for request in requests:
            row = rows[request["request_id"]]
            if row["status"] == "rejected":
                assert request["request_id"] not in records
                continue
            assert row["status"] == "created", row
            record = records[request["request_id"]]
            assert row["sys_id"] == record["sys_id"]
            resolved = json.loads(row["resolved_references"])
            for column, (field, table, _key_field) in KEYS.items():
                assert truth[table][request[column]] == [record[field]], (column, request[column])
                assert resolved[field] == record[field]
            assert row["consumer"] is None  # the producer's columns are left as written
        # every bad row, and only those, is rejected with its reason
        bad = {r["request_id"] for i, r in enumerate(requests, start=1) if i % BAD_EVERY == 0}
        assert set(rejected) == bad
        reasons = Counter(error.split(":")[0] for error in rejected.values())
        assert reasons == {"consumer_number": 10, "account_number": 5, "assignment_group_name": 10}
        assert "consumer_number: no csm_consumer with number 'C-0042'" in rejected.values()
        assert any(e.startswith("account_number: 2 sn_bom_financial_account records have account_number 'LN-100099'")
                   for e in rejected.values())
        assert any(e.startswith("consumer_number: give either consumer (the sys_id) or consumer_number")
                   for e in rejected.values())

        # at most one look-up per reference table per chunk
        stats = emulator.stats()
        chunks = -(-ROWS // CHUNK)
        lookups = {table: stats["by_table"].get(table, {}).get("GET", 0) for _f, table, _k in KEYS.values()}
        assert all(1 <= count <= chunks for count in lookups.values()), lookups
        posts = stats["by_method"]["POST"]
        assert posts == ROWS - len(bad)

        code = airflow.run_dag(tmp_path / "run2.log")
        assert code == 0, (tmp_path / "run2.log").read_text()[-5000:]
        assert emulator.stats()["by_method"]["POST"] == posts, "the rerun sent a POST"
        assert state(source) == rows
    print(f"\nbusiness keys end-to-end: {ROWS} rows, {len(bad)} rejected ({dict(reasons)}), {posts} created; "
          f"reference look-ups {lookups} for {chunks} chunks")
