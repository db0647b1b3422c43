"""Property-based, the whole task: hostile rows are written to a real source table (SQLite, PostgreSQL, MariaDB), then
the real transform and CaseLoader run against the emulator over real HTTP. Every row ends ``created`` or
``rejected`` with a reason naming its columns, each created record holds exactly the body that was sent, and one
bad row never stops or loses the others.

What each database can hold decides what is generated (see ``tests.support.hostile.storable``): NUL only reaches
ticketsync from SQLite (PostgreSQL TEXT refuses it at the producer's insert), blobs arrive as bytes from SQLite and
as PostgreSQL's hex text of the bytea, and bytes that are not UTF-8 are written to SQLite TEXT columns with a cast.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pymysql
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.hostile import hostile_row, storable, valid_row
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.models import PRODUCER_COLUMNS, PreparedCase, Rejection, SourceRow
from ticketsync.source import Dialect, SourceTable
from ticketsync.transform import prepare
from ticketsync_dev.emulator import RunningEmulator

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
SETTINGS = LoadSettings(chunk_size=3, max_in_flight=4, retry_rounds=1, backoff_base=0.01, backoff_cap=0.02,
                        flush_every=2)
EXAMPLES = int(os.environ.get("TICKETSYNC_HYPOTHESIS_TASK_EXAMPLES", "25"))
NOT_UTF8 = (b"caf\xe9", b"\xff\xfe\x00", b"\xc3\x28", b"\xed\xa0\x80", b"ok \x80")


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 5},
    }))
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def produce(source: SourceTable, row: dict[str, Any], not_utf8: tuple[str, bytes] | None) -> bool:
    """Insert one row as a producing system would; False when the database itself refuses it (not our concern:
    a duplicate or missing request_id, a value the column type cannot hold)."""
    values = {column: value for column, value in row.items()
              if storable(value, source.dialect) and not (column == "target_table" and value is None)}
    try:
        source.insert_requests([values])
        if not_utf8 is not None and source.dialect is Dialect.SQLITE:
            column, raw = not_utf8
            with source._transaction() as cursor:
                cursor.execute(f"UPDATE {source.table} SET {column} = CAST(? AS TEXT) "
                               f"WHERE id = (SELECT MAX(id) FROM {source.table})", (raw,))
    except (sqlite3.Error, psycopg.Error, pymysql.Error, OverflowError):  # the producer's own write failed
        return False
    return True


def stored_rows(source: SourceTable, token: str) -> list[SourceRow]:
    source.claim(token, limit=1000, chunk_size=100, lease_seconds=600)
    return [row for chunk in source.iter_claimed(token, chunk_size=100) for row in chunk]


def final_state(source: SourceTable) -> dict[int, tuple[str, str | None, str | None]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT id, status, error, sys_id FROM {source.table}")
        return {int(row[0]): (row[1], row[2], row[3]) for row in cursor.fetchall()}


def check_record(emulator: RunningEmulator, hook: ServiceNowHook, sys_id: str, body: dict[str, str]) -> None:
    """The record holds every field exactly as sent; the journal field went to the journal, verbatim."""
    record = emulator.store.get(TABLE, sys_id)
    assert record is not None
    read_back = hook.get_record(TABLE, sys_id)  # and the Table API serves it back unchanged over HTTP
    for field, value in body.items():
        if field == "work_notes":
            continue
        assert record[field] == value, (field, record[field], value)
        assert read_back[field] == value, (field, read_back[field], value)
    assert record["work_notes"] == ""
    journal, _ = emulator.store.query("sys_journal_field", f"element_id={sys_id}")
    expected = [("work_notes", body["work_notes"])] if "work_notes" in body else []
    assert [(entry["element"], entry["value"]) for entry in journal] == expected


@st.composite
def batch(draw: st.DrawFn, dialect: Dialect) -> list[tuple[dict[str, Any], bool, tuple[str, bytes] | None]]:
    """1-6 rows, each valid or hostile; on SQLite some get bytes that are not UTF-8 in one column."""
    rows = []
    for index in range(draw(st.integers(min_value=1, max_value=6))):
        valid = draw(st.booleans())
        row = draw(valid_row(index + 1) if valid else hostile_row())
        not_utf8 = None
        if dialect is Dialect.SQLITE and not valid and draw(st.integers(0, 3)) == 0:
            not_utf8 = (draw(st.sampled_from(PRODUCER_COLUMNS)), draw(st.sampled_from(NOT_UTF8)))
        rows.append((row, valid, not_utf8))
    return rows


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_rows_end_created_or_rejected_and_records_hold_what_was_sent(
    source: SourceTable, emulator: RunningEmulator, hook: ServiceNowHook, data: st.DataObject
) -> None:
    with source._transaction() as cursor:
        cursor.execute(f"DELETE FROM {source.table}")
    emulator.reset(reset_faults=True)
    generated = data.draw(batch(source.dialect))
    must_create = {json.dumps(row["request_id"]) for row, valid, _ in generated if valid and produce(source, row, None)}
    for row, valid, not_utf8 in generated:
        if not valid:
            produce(source, row, not_utf8)

    rows = stored_rows(source, "hostile")
    expected = {row.id: prepare(row) for row in rows}
    counts = CaseLoader(hook, source, "hostile", SETTINGS, sleep=lambda _: None).run()

    state = final_state(source)
    assert set(state) == set(expected), "a row was lost or appeared"
    assert counts.taken == len(rows)
    assert (counts.failed, counts.still_pending) == (0, 0)
    created = {row_id for row_id, (status, _, _) in state.items() if status == "created"}
    for row in rows:
        status, error, sys_id = state[row.id]
        outcome = expected[row.id]
        if isinstance(outcome, Rejection):
            assert status == "rejected"
            assert error == outcome.reason
            assert error.split(": ", 1)[0] in PRODUCER_COLUMNS
        else:
            assert isinstance(outcome, PreparedCase)
            assert status == "created", (status, error)
            assert sys_id is not None
            check_record(emulator, hook, sys_id, outcome.body.to_json())
            must_create.discard(json.dumps(row.request_id))
    assert not must_create, f"valid rows not created: {must_create}"
    records = emulator.store.records(TABLE)
    assert len(records) == len(created)
    assert max(Counter(record["correlation_id"] for record in records).values(), default=1) == 1
