"""Poison rows (issue 10): one request per way a single row's data can make a step fail, among 50 good ones, on
PostgreSQL and SQLite. Every good row is created in one run, each poison row ends in its documented state with its
reason (docs/poison-rows.md), and no case is created twice, not even in another case of letters.

The loader-level matrix runs the real load (transform + CaseLoader + ServiceNowHook) against the in-process
emulator; the DAG test runs the same backlog through Airflow (``airflow dags test``) with the emulator as its own
process, and checks that the run's report names every poison row.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.support.faults import save_result
from tests.support.poison import (
    EXISTING_CASE_ID,
    GOOD,
    POISONS,
    TABLE,
    add_refusing_trigger,
    backlog,
    check,
    emulator_faults,
    final_rows,
    refusing_trigger_sql,
)
from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowRequestError
from ticketsync.loader import CaseLoader, LoadSettings, ServiceNowUnavailable
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.local import EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = pytest.mark.integration

TOKEN = "servicenow_ticket_sync:poison"
SETTINGS = LoadSettings(chunk_size=20, max_in_flight=8, max_attempts=3, retry_rounds=3, backoff_base=0.02,
                        backoff_cap=0.1, settle_seconds=0.5)


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_POISON", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 3},
    }))
    hook = ServiceNowHook("servicenow_poison", pool_size=8)
    yield hook
    hook.close()


def load(source: SourceTable, hook: ServiceNowHook, token: str = TOKEN) -> dict[str, int]:
    source.claim(token, limit=10_000, chunk_size=500, lease_seconds=600)
    return CaseLoader(hook, source, token, SETTINGS, sleep=lambda _: None).run().as_dict()


def test_one_poison_row_per_kind_ends_in_its_row_and_every_good_row_is_created_in_one_run(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    existing = emulator.store.create(TABLE, {"correlation_id": EXISTING_CASE_ID, "short_description": "x"}, "admin")
    emulator.set_faults(**emulator_faults())
    source.insert_requests(backlog())
    add_refusing_trigger(source)

    counts = load(source, hook)

    assert check(source, emulator.store.records(TABLE)) == []
    state = final_rows(source)
    assert existing["number"] in state["psn-case-A1"]["error"]
    assert counts["still_pending"] == 0, counts
    assert counts["unwritable"] == 0, counts
    by_status: dict[str, int] = {}
    for poison in POISONS:
        by_status[poison.status] = by_status.get(poison.status, 0) + 1
    assert counts["created"] == GOOD + by_status["created"]
    assert counts["rejected"] == by_status["rejected"]
    assert counts["failed"] == by_status["failed"]
    named = {request_id for request_id, _, _ in source.first_errors(
        TOKEN, ("failed", "rejected", "pending", "created"), limit=100)}
    assert {p.request_id for p in POISONS if p.reason} <= named
    # the POST that failed at 500 was retried (looked up first each time), then gave up; nothing else repeated
    assert state["PSN-POST-500"]["attempts"] == 3
    assert state["PSN-LOOKUP-500"]["attempts"] == 3
    assert emulator.stats()["faults"]["rule"] >= 6
    save_result("poison", f"loader [{source.dialect}]", {"counts": counts, "records": len(
        emulator.store.records(TABLE))})


def test_the_later_of_two_rows_differing_only_in_case_is_rejected_in_whichever_chunk_it_is(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """Both pending in one run, in different chunks (and the later one first in id order of its own chunk)."""
    requests_ = list(sample_requests(45))
    requests_[3]["request_id"] = "Pair-X1"
    requests_[40]["request_id"] = "PAIR-x1"
    source.insert_requests(requests_)
    counts = load(source, hook)
    state = final_rows(source)
    assert state["Pair-X1"]["status"] == "created"
    assert state["PAIR-x1"]["status"] == "rejected"
    assert "differs only in case from request 'Pair-X1' (row 4, earlier" in state["PAIR-x1"]["error"]
    assert (counts["created"], counts["rejected"]) == (44, 1)
    assert [r["correlation_id"] for r in emulator.store.records(TABLE)].count("Pair-X1") == 1
    assert "PAIR-x1" not in {r["correlation_id"] for r in emulator.store.records(TABLE)}


def test_a_row_matching_an_earlier_run_s_case_only_by_case_is_rejected_and_the_runs_after_go_on(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """The issue's case: `CASE-a1` synced, then `case-A1` arrives. It used to stop every following run."""
    first = next(iter(sample_requests(1, prefix="FIRST")))
    source.insert_requests([{**first, "request_id": "CASE-a1"}])
    assert load(source, hook, "run-1")["created"] == 1
    number = final_rows(source)["CASE-a1"]["number"]

    source.insert_requests([{**first, "request_id": "case-A1"}, *sample_requests(20)])
    counts = load(source, hook, "run-2")
    assert (counts["created"], counts["rejected"], counts["adopted"]) == (20, 1, 0)
    row = final_rows(source)["case-A1"]
    assert row["status"] == "rejected"
    assert f"existing case {number}" in row["error"]
    assert "differs only in case from the correlation_id 'CASE-a1'" in row["error"]
    assert row["sys_id"] is None

    source.insert_requests(sample_requests(5, prefix="LATER"))
    assert load(source, hook, "run-3")["created"] == 5
    assert len(emulator.store.records(TABLE)) == 26


def test_a_row_with_its_own_case_and_another_request_s_by_case_adopts_its_own_and_names_the_other(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    own = emulator.store.create(TABLE, {"correlation_id": "REQ-0000001", "short_description": "x"}, "admin")
    other = emulator.store.create(TABLE, {"correlation_id": "req-0000001", "short_description": "y"}, "admin")
    source.insert_requests(sample_requests(1))
    assert load(source, hook)["adopted"] == 1
    row = final_rows(source)["REQ-0000001"]
    assert (row["status"], row["sys_id"]) == ("created", own["sys_id"])
    assert other["number"] in row["error"]


def test_an_instance_that_refuses_every_look_up_stops_the_run_and_the_rows_say_they_were_held_back(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """A probe look-up fails too: the instance, not a row. Nothing is sent; every row says why it waits."""
    source.insert_requests(sample_requests(30))
    emulator.set_faults(error_500=1.0, methods=["GET"])
    with pytest.raises(ServiceNowUnavailable, match="Check that the instance is up"):
        load(source, hook)
    assert emulator.stats()["by_method"].get("POST", 0) == 0
    for row in final_rows(source).values():
        assert row["status"] == "pending"
        assert row["error"].startswith("held back: not sent, because the load stopped on an error that is not "
                                       "this row's (could not look up existing records")
    emulator.set_faults(error_500=0.0)
    assert load(source, hook, "run-2")["created"] == 30


def test_a_dropped_query_term_still_stops_the_look_up_saying_what_was_seen(
    hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """Records that match none of the ids even without case: the instance ignored the term (here: a table without a
    correlation_id field, whose term the emulator drops as the instance does). Not a row's fault: it stops."""
    emulator.store.create(TABLE, {"correlation_id": "REQ-1", "short_description": "x", "work_notes": "n"}, "admin")
    with pytest.raises(ServiceNowRequestError) as raised:
        hook.find_by_correlation("sys_journal_field", ["REQ-1"])
    text = str(raised.value)
    assert "asked sys_journal_field for 1 correlation ids" in text
    assert "with no correlation_id field, which matches none of them even without regard to case" in text
    assert "Check that the table has a field correlation_id and that the integration user can read it" in text


def test_a_trigger_refusing_every_change_of_a_row_leaves_it_pending_with_the_reason_and_fails_the_load_last(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """Even `failed` is refused for one row: the others are all written; that row keeps its lease ended, says why
    in its error if it can, and the load counts it as unwritable (the operator then fails the task)."""
    source.insert_requests(sample_requests(30))
    table = source.table
    refuse = "NEW.request_id = 'REQ-0000007' AND NEW.status <> 'pending'"
    if source.dialect is Dialect.POSTGRES:
        statements = [
            f"CREATE FUNCTION {table}_no() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF {refuse} THEN "
            "RAISE EXCEPTION 'no final status for this request'; END IF; RETURN NEW; END $$",
            f"CREATE TRIGGER {table}_no BEFORE UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {table}_no()",
        ]
    else:
        statements = [refusing_trigger_sql(source, f"{table}_no", refuse, "no final status for this request")]
    with source._transaction() as cursor:
        for statement in statements:
            cursor.execute(statement)
    counts = load(source, hook)
    assert (counts["created"], counts["unwritable"], counts["failed"]) == (29, 1, 0)
    state = final_rows(source)
    row = state["REQ-0000007"]
    assert row["status"] == "pending"
    assert "the source database refused to store this row's outcome" in row["error"]
    assert "no final status for this request" in row["error"]
    assert sum(1 for r in state.values() if r["status"] == "created") == 29
    assert len(emulator.store.records(TABLE)) == 30


# ------------------------------------------------------------------------------------------------------------------
# through the real DAG run
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def pg_dag_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    with fresh_source_database(pg_database, "poison") as (source, params):
        yield source, airflow_conn_json(params)


@pytest.fixture
def sqlite_dag_source(tmp_path: Path) -> Iterator[tuple[SourceTable, str]]:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    yield source, sqlite_connection(path)
    source.close()


@pytest.mark.slow
@pytest.mark.parametrize("dialect", ["postgres", "sqlite"])
def test_dag_run_with_one_poison_row_per_kind_among_50_good_rows(
    airflow_home: Path, request: pytest.FixtureRequest, tmp_path: Path, dialect: str
) -> None:
    source, conn = request.getfixturevalue("pg_dag_source" if dialect == "postgres" else "sqlite_dag_source")
    source.insert_requests(backlog())
    add_refusing_trigger(source)
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        seeded = requests.post(f"{emulator.url}/api/now/table/{TABLE}", auth=("admin", emulator.password),
                               json={"correlation_id": EXISTING_CASE_ID, "short_description": "x"}, timeout=5)
        assert seeded.status_code == 201, seeded.text
        emulator.set_faults(**emulator_faults())
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(timeout=3),
        })
        log = tmp_path / "run.log"
        code = airflow.run_dag(log, conf={"max_attempts": 3})
        text = log.read_text()
        # the run fails at its report, on purpose: failed rows need a person
        assert code != 0, text[-3000:]
        assert "requests failed permanently and need a person" in text, text[-5000:]
        assert check(source, emulator.records(TABLE)) == [], text[-5000:]
        for poison in POISONS:
            if poison.reason:
                assert f"{poison.status} {poison.request_id}: " in text, (poison, text[-5000:])
        stats = emulator.stats()
    save_result("poison", f"DAG run [{dialect}]", {
        "good": GOOD, "poison": len(POISONS), "requests": stats["requests_total"],
        "faults": {k: v for k, v in stats["faults"].items() if v},
        "rows": {p.request_id[:20]: final_rows(source)[p.request_id]["status"] for p in POISONS},
    })


def test_a_dry_run_plans_each_poison_row_by_the_same_rules_and_writes_nothing(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    from ticketsync import dryrun
    from ticketsync.correlation import CaseTwins, SourceTwin

    emulator.store.create(TABLE, {"correlation_id": EXISTING_CASE_ID, "short_description": "x"}, "admin")
    emulator.set_faults(**emulator_faults())
    source.insert_requests(backlog())
    plan = dryrun.DryRunPlan()
    twins = CaseTwins(SourceTwin(*twin) for twin in source.case_twins())
    for rows in dryrun.selection(source, limit=1000, chunk_size=20):
        dryrun.plan_chunk(hook, rows, plan, max_attempts=3, twins=twins)
    rejected = dict(plan.reject)
    assert "differs only in case from the correlation_id 'PSN-CASE-a1'" in rejected["psn-case-A1"]
    assert "differs only in case from request 'PSN-PAIR-b1'" in rejected["psn-pair-B1"]
    assert set(rejected) == {"PSN-INVALID", "psn-case-A1", "psn-pair-B1"}
    failing = dict(plan.fail)
    assert set(failing) == {"PSN-LOOKUP-500", "PSN-LOOKUP-403"}
    assert failing["PSN-LOOKUP-403"].startswith("its look-up fails: 403")
    assert len(plan.create) == GOOD + len(POISONS) - 5
    assert emulator.stats()["by_method"].get("POST", 0) == 0
    assert {row["status"] for row in final_rows(source).values()} == {"pending"}
