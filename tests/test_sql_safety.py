"""SQL safety: table names from configuration are plain identifiers or refused before any SQL runs; values only
ever travel as bound parameters; bytes a producer wrote that are not UTF-8 reject their row, not the whole run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.models import SourceRow
from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.source import Dialect, SourceTable
from ticketsync.transform import prepare
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

HOSTILE_NAMES = [
    "ticket_requests; DROP TABLE ticket_requests",
    "ticket_requests --",
    'ticket_requests" ; DELETE FROM "ticket_requests',
    "ticket_requests WHERE 1=1",
    "ticket_requests\n",
    "ticket_requests\x00",
    "tickets)",
    "{{ params.table }}",
    "тикеты",
    "1tickets",
    "t" * 64,
    "",
]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_table_name_is_refused_with_a_clear_error(name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid table name .*letters, digits and underscores only"):
        SourceTable(lambda: sqlite3.connect(":memory:"), Dialect.SQLITE, table=name)


def test_a_hostile_table_name_given_to_the_operator_runs_no_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(sample_requests(3))
    source.close()
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    operator = ClaimRequestsOperator(task_id="extract", source_table="ticket_requests; DROP TABLE ticket_requests")
    context: Any = {"ti": SimpleNamespace(dag_id="d", run_id="r")}
    with pytest.raises(ValueError, match="invalid table name 'ticket_requests; DROP TABLE ticket_requests'"):
        operator.execute(context)
    with sqlite3.connect(path) as check:
        assert check.execute("SELECT COUNT(*), MAX(claim_token) FROM ticket_requests").fetchone() == (3, None)


def test_sql_and_template_syntax_in_values_is_stored_verbatim(source: SourceTable) -> None:
    hostile = "'; DROP TABLE ticket_requests; -- {{ var }} {% if %} %s ? $1 \\x00"
    source.insert_requests([{"request_id": "R-1", "short_description": hostile, "notes": hostile}])
    source.claim("t", limit=10, chunk_size=10, lease_seconds=60)
    (rows,) = list(source.iter_claimed("t", chunk_size=10))
    assert (rows[0].short_description, rows[0].notes) == (hostile, hostile)
    assert source.backlog() == {"pending": 1}


def test_bytes_that_are_not_utf8_reject_their_row_and_the_others_go_through(
    tmp_path: Path, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer can put any bytes in a SQLite TEXT column; the default reader raised on the whole chunk."""
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    requests = list(sample_requests(5))
    source.insert_requests(requests)
    with sqlite3.connect(path) as raw:
        raw.execute("UPDATE ticket_requests SET notes = CAST(? AS TEXT) WHERE request_id = ?",
                    (b"caf\xe9 au lait", requests[2]["request_id"]))
        assert raw.execute("SELECT typeof(notes) FROM ticket_requests WHERE request_id = ?",
                           (requests[2]["request_id"],)).fetchone() == ("text",)
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator",
    }))
    source.claim("t", limit=10, chunk_size=10, lease_seconds=60)
    counts = CaseLoader(ServiceNowHook(), source, "t", LoadSettings(), sleep=lambda _: None).run()
    assert (counts.created, counts.rejected) == (4, 1)
    with source._transaction() as cursor:
        cursor.execute("SELECT status, error FROM ticket_requests WHERE request_id = ?", (requests[2]["request_id"],))
        assert cursor.fetchone() == ("rejected", "notes: is not valid UTF-8 (byte 0xE9 at position 3)")
    assert source.first_errors("t", ("rejected",)) == [
        (requests[2]["request_id"], "rejected", "notes: is not valid UTF-8 (byte 0xE9 at position 3)")
    ]
    source.close()


def test_a_lone_surrogate_is_rejected_naming_the_column() -> None:
    result = prepare(SourceRow(id=1, request_id="R-1", consumer="0" * 32, sold_product="1" * 32,
                               short_description="ok \ud800 then"))
    assert not hasattr(result, "body")
    assert getattr(result, "reason", "") == "short_description: contains an unpaired surrogate U+D800 at position 3"
