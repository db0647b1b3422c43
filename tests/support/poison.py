"""Poison rows: one request per way a single row's data can make a step of the sync fail, the emulator faults and
the source-database trigger that produce each, and the final state each must end in (docs/poison-rows.md).

Used by the loader-level matrix and the DAG run in tests/faults/test_poison_rows.py.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.samples import sample_request, sample_requests

TABLE = "sn_bom_loan_service"
GOOD = 50
# The instance's shorter fields (emulator truncation); every good row's values fit.
CORRELATION_LENGTH = 40
SHORT_DESCRIPTION_LENGTH = 80
EXISTING_CASE_ID = "PSN-CASE-a1"  # a case created earlier (by another request) that a pending row matches by case
DB_REFUSED_ID = "PSN-DB-REFUSED"


@dataclass(frozen=True)
class Poison:
    """One poison row: its request, and the final state (status, a text its error must hold) it must end in."""

    kind: str
    request_id: str
    status: str
    reason: str  # a fragment the row's error must contain
    changes: tuple[tuple[str, Any], ...] = ()
    has_record: bool = False  # whether a case with this exact correlation id is expected to exist (created once)


POISONS: tuple[Poison, ...] = (
    Poison("invalid value (transform)", "PSN-INVALID", "rejected", "short_description: is required",
           (("short_description", "   "),)),
    Poison("POST answered 400 every time", "PSN-POST-400", "failed", "400 Invalid request",
           (("short_description", "Loan question POISON-400"),)),
    Poison("POST answered 403 every time", "PSN-POST-403", "failed", "403 Operation Failed",
           (("short_description", "Loan question POISON-403"),)),
    Poison("POST answered 500 every time", "PSN-POST-500", "failed", "gave up after 3 attempts (no record found)",
           (("short_description", "Loan question POISON-500"),)),
    Poison("look-up answered 500 every time", "PSN-LOOKUP-500", "failed",
           "the look-up of this row's correlation_id failed while other look-ups succeed"),
    Poison("look-up answered 403 every time", "PSN-LOOKUP-403", "failed", "Nothing was sent"),
    Poison("POST answer carries another correlation id", "PSN-MIXED", "failed",
           "answered the POST with a record whose correlation_id is 'PSN-SOMEONE-ELSE'", has_record=True),
    Poison("correlation_id truncated by the instance", "PSN-LONG-" + "x" * 51, "created",
           f"stored correlation_id truncated to {CORRELATION_LENGTH} of 60 characters"),
    Poison("short_description truncated by the instance", "PSN-LONG-TEXT", "created",
           f"stored short_description to {SHORT_DESCRIPTION_LENGTH} of 150 characters",
           (("short_description", "Loan question " + "y" * 136),), has_record=True),
    Poison("source database refuses the outcome (trigger)", DB_REFUSED_ID, "failed",
           "the source database refused to store this row's outcome", has_record=True),
    Poison("differs only in case from an existing case", "psn-case-A1", "rejected",
           f"differs only in case from the correlation_id '{EXISTING_CASE_ID}' of existing case"),
    Poison("two pending rows differing only in case (the earlier)", "PSN-PAIR-b1", "created", "",
           has_record=True),
    Poison("two pending rows differing only in case (the later)", "psn-pair-B1", "rejected",
           "differs only in case from request 'PSN-PAIR-b1'"),
)


def emulator_faults() -> dict[str, Any]:
    """The emulator faults that make the poison rows fail (set over the admin API or in-process)."""
    return {
        "rules": [
            {"contains": "POISON-400", "status": 400},
            {"contains": "POISON-403", "status": 403},
            {"contains": "POISON-500", "status": 500},
            {"contains": "PSN-LOOKUP-500", "field": "sysparm_query", "methods": ["GET"], "status": 500},
            {"contains": "PSN-LOOKUP-403", "field": "sysparm_query", "methods": ["GET"], "status": 403},
            {"contains": "PSN-MIXED", "field": "correlation_id", "answer_correlation_id": "PSN-SOMEONE-ELSE"},
        ],
        "truncate": {"correlation_id": CORRELATION_LENGTH, "short_description": SHORT_DESCRIPTION_LENGTH},
    }


def backlog() -> list[dict[str, Any]]:
    """50 good requests with the poison rows spread among them (the later of the case pair after the earlier)."""
    good = list(sample_requests(GOOD, prefix="GOOD"))
    rng = random.Random(10)
    poisons = []
    for number, poison in enumerate(POISONS):
        request = sample_request(1000 + number, rng, prefix="PSN")
        request.update(dict(poison.changes), request_id=poison.request_id)
        poisons.append(request)
    mixed: list[dict[str, Any]] = []
    for index, request in enumerate(good):
        mixed.append(request)
        if index % 4 == 1 and poisons:
            mixed.append(poisons.pop(0))
    return mixed + poisons


def add_refusing_trigger(source: SourceTable, request_id: str = DB_REFUSED_ID) -> None:
    """A trigger on the source table that refuses to let one request become ``created`` (a bank's own rule)."""
    table = source.table
    if source.dialect is Dialect.POSTGRES:
        statements = [
            f"""CREATE OR REPLACE FUNCTION {table}_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.request_id = '{request_id}' AND NEW.status = 'created' THEN
                    RAISE EXCEPTION 'request % may not be marked created (bank rule 7)', NEW.request_id;
                  END IF;
                  RETURN NEW;
                END $$""",
            f"CREATE TRIGGER {table}_refuse BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_refuse()",
        ]
    else:
        statements = [refusing_trigger_sql(
            source, f"{table}_refuse", f"NEW.request_id = '{request_id}' AND NEW.status = 'created'",
            "request may not be marked created (bank rule 7)",
        )]
    with source._transaction() as cursor:
        for statement in statements:
            cursor.execute(statement)


def refusing_trigger_sql(source: SourceTable, name: str, condition: str, message: str) -> str:
    """A BEFORE UPDATE trigger that raises ``message`` when ``condition`` holds, on SQLite or MySQL / MariaDB."""
    table = source.table
    if source.dialect is Dialect.SQLITE:
        return (f"CREATE TRIGGER {name} BEFORE UPDATE ON {table} FOR EACH ROW WHEN {condition} "
                f"BEGIN SELECT RAISE(ABORT, '{message}'); END")
    return (f"CREATE TRIGGER {name} BEFORE UPDATE ON {table} FOR EACH ROW BEGIN IF {condition} THEN "
            f"SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{message}'; END IF; END")


def final_rows(source: SourceTable) -> dict[str, dict[str, Any]]:
    columns = ("request_id", "status", "sys_id", "number", "error", "attempts", "sync_action")
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {source.table}")
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}


def check(source: SourceTable, records: Iterable[dict[str, Any]]) -> list[str]:
    """Every rule of the matrix; returns the broken ones (empty when the run ended as documented)."""
    records = [record for record in records if record.get("correlation_id") != EXISTING_CASE_ID]
    state = final_rows(source)
    problems = []
    per_correlation = Counter(str(record.get("correlation_id")).lower() for record in records)
    duplicates = sorted(key for key, count in per_correlation.items() if count > 1)
    if duplicates:
        problems.append(f"duplicates (without case): {duplicates}")
    by_sys_id = {record["sys_id"]: record for record in records}
    for request in sample_requests(GOOD, prefix="GOOD"):
        row = state[request["request_id"]]
        record = by_sys_id.get(row["sys_id"] or "")
        if row["status"] != "created" or record is None or record["correlation_id"] != request["request_id"]:
            problems.append(f"good row {request['request_id']} is {row['status']}: {row['error']}")
    for poison in POISONS:
        row = state[poison.request_id]
        if row["status"] != poison.status or poison.reason not in (row["error"] or ""):
            problems.append(f"{poison.kind}: {poison.request_id} is {row['status']}: {row['error']}")
        prefix = poison.request_id[:CORRELATION_LENGTH]
        exists = sum(1 for record in records if record.get("correlation_id") == prefix)
        if exists != (1 if poison.has_record or poison.status == "created" else 0):
            problems.append(f"{poison.kind}: {exists} cases with correlation_id {prefix!r}")
    expected = {record["correlation_id"] for record in records} - {
        p.request_id[:CORRELATION_LENGTH] for p in POISONS} - {r["request_id"] for r in sample_requests(GOOD,
                                                                                                       prefix="GOOD")}
    if expected:
        problems.append(f"unexpected cases: {sorted(expected)}")
    return problems
