"""Status back (issue 13): the status pull against the emulator over real HTTP and a real source table (SQLite and
PostgreSQL): paged reads, idempotent write-back, the watermark and its overlap, deleted cases reported."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from ticketsync.casestatus.models import (
    CaseState,
    UnexpectedAnswer,
    case_state,
    first_page_query,
    next_page_query,
    window_start,
)
from ticketsync.casestatus.puller import CaseStatusPuller, StatusSettings
from ticketsync.definitions import packaged_definition
from ticketsync.definitions.transform import transform_for
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"
KEY = f"servicenow_default/{TABLE}"
FAST = LoadSettings(chunk_size=25, max_in_flight=4, retry_rounds=2, backoff_base=0.05, backoff_cap=0.2)


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVICENOW_DEFAULT",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": emulator.port,
                "schema": "http",
                "login": "admin",
                "password": "s3cret-emulator",
                "extra": {"timeout": 5},
            }
        ),
    )
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def create_cases(source: SourceTable, hook: ServiceNowHook, count: int) -> None:
    source.insert_requests(sample_requests(count))
    source.claim("t1", limit=count, chunk_size=500, lease_seconds=600)
    counts = CaseLoader(hook, source, "t1", FAST, sleep=lambda _: None).run().as_dict()
    assert counts["created"] == count


def pull(source: SourceTable, client: Any, **settings: Any) -> dict[str, int]:
    return CaseStatusPuller(client, source, "servicenow_default", StatusSettings(**settings)).run().as_dict()


def rows(source: SourceTable) -> dict[str, dict[str, Any]]:
    columns = (
        "request_id",
        "sys_id",
        "status",
        "case_state",
        "case_state_label",
        "case_updated_at",
        "updated_at",
        "error",
    )
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {source.table} ORDER BY id")
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}


def as_text(value: Any) -> str:
    """A stored timestamp as the instance writes it (PostgreSQL returns datetimes, SQLite ISO text)."""
    text = value.strftime("%Y-%m-%d %H:%M:%S") if hasattr(value, "strftime") else str(value)
    return text.replace("T", " ")[:19]


def test_first_pull_pages_through_every_case_and_a_second_changes_nothing(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    create_cases(source, hook, 30)
    records = {r["sys_id"]: r for r in emulator.store.records(TABLE)}

    first = pull(source, hook, page_size=7)
    after_first = rows(source)
    second = pull(source, hook, page_size=7)

    assert (first["pages"], first["cases_read"], first["rows_changed"], first["verified"]) == (5, 30, 30, 30)
    assert first["list_requests"] == 5 + 1  # 5 pages + one existence query for 30 sys_ids: never one per row
    for row in after_first.values():
        assert (row["case_state"], row["case_state_label"]) == ("1", "New")
        assert as_text(row["case_updated_at"]) == records[row["sys_id"]]["sys_updated_on"]
    assert second["rows_changed"] == 0
    assert second["rows_unchanged"] == 30  # read again through the overlap, written nothing
    assert rows(source) == after_first
    assert source.status_pull(KEY).watermark == max(r["sys_updated_on"] for r in records.values())


def test_worked_cases_come_back_unchanged_rows_are_not_written_and_a_deleted_case_is_reported(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    create_cases(source, hook, 20)
    pull(source, hook, page_size=5)
    before = rows(source)
    by_request = {r["request_id"]: r["sys_id"] for r in before.values()}
    ids = list(by_request)
    for request_id in ids[:5]:
        emulator.work(TABLE, by_request[request_id], state="10", work_notes="Looking into it")
    for request_id in ids[5:8]:
        emulator.work(TABLE, by_request[request_id], state="3", comments="Done")
    emulator.delete(TABLE, by_request[ids[8]])

    counts = pull(source, hook, page_size=5)
    after = rows(source)
    again = pull(source, hook, page_size=5)

    assert counts["rows_changed"] == 8
    assert (counts["not_found"], counts["not_found_new"]) == (1, 1)
    assert [(after[r]["case_state"], after[r]["case_state_label"]) for r in ids[:8]] == [("10", "Open")] * 5 + [
        ("3", "Closed")
    ] * 3
    gone = after[ids[8]]
    assert gone["status"] == "created"
    assert (gone["case_state"], gone["case_state_label"]) == ("1", "New")  # the last known state, not a guess
    assert gone["error"].startswith("case not found on the instance: ")
    assert by_request[ids[8]] in gone["error"]
    for request_id in ids[9:]:
        assert after[request_id] == before[request_id]  # not written: updated_at unchanged too
    assert (again["rows_changed"], again["not_found"], again["not_found_new"]) == (0, 1, 0)
    assert rows(source) == after


class ChangesDuringThePull:
    """The hook, with an agent at work on the instance while the first page's answer is on its way back."""

    def __init__(self, hook: ServiceNowHook, emulator: RunningEmulator) -> None:
        self.hook = hook
        self.emulator = emulator
        self.changed: str | None = None

    def list_records(self, table: str, *, query: str, fields: Sequence[str], **kwargs: Any) -> list[dict[str, Any]]:
        records = self.hook.list_records(table, query=query, fields=fields, **kwargs)
        if self.changed is None and kwargs.get("display_value") == "all":
            first = case_state(records[0])
            # A transaction that started in the second of a case already read and commits now, after that case
            # went by: it lands behind the pull's cursor.
            self.emulator.work(table, first.sys_id, updated_on=first.updated_on, state="18")
            self.changed = first.sys_id
        return records


def test_a_case_changed_during_a_pull_is_brought_back_by_the_next_pull(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    create_cases(source, hook, 12)
    agent = ChangesDuringThePull(hook, emulator)

    pull(source, agent, page_size=4)
    during = {r["sys_id"]: r for r in rows(source).values()}
    counts = pull(source, hook, page_size=4)
    after = {r["sys_id"]: r for r in rows(source).values()}

    assert agent.changed is not None
    assert during[agent.changed]["case_state"] == "1"  # the first pull could not see it: the danger is real
    assert counts["rows_changed"] == 1
    assert (after[agent.changed]["case_state"], after[agent.changed]["case_state_label"]) == ("18", "Awaiting Info")


def test_status_pulls_is_empty_until_the_status_dag_ran(source: SourceTable, hook: ServiceNowHook) -> None:
    assert source.status_pulls() == {}
    create_cases(source, hook, 2)
    assert source.status_pulls() == {}  # the table exists now, with no pull in it

    pull(source, hook)

    [(key, state)] = source.status_pulls().items()
    assert key == KEY
    assert state.watermark is not None
    assert state.completed_seconds_ago is not None
    assert 0 <= state.completed_seconds_ago < 60


def test_max_pages_leaves_the_watermark_at_the_last_page_written_and_the_next_run_goes_on(
    source: SourceTable, hook: ServiceNowHook
) -> None:
    create_cases(source, hook, 10)

    first = pull(source, hook, page_size=3, max_pages=2, overlap_seconds=0)
    stopped = source.status_pull(KEY)
    second = pull(source, hook, page_size=3, max_pages=10, overlap_seconds=0)

    assert (first["incomplete_tables"], first["rows_changed"], first["verified"]) == (1, 6, 0)
    assert stopped.completed_seconds_ago is None
    assert stopped.watermark is not None
    assert second["incomplete_tables"] == 0
    assert sum(1 for r in rows(source).values() if r["case_state"] == "1") == 10
    assert source.status_pull(KEY).completed_seconds_ago is not None


def test_existence_check_goes_round_the_table_in_slices(source: SourceTable, hook: ServiceNowHook) -> None:
    create_cases(source, hook, 7)

    counts = [pull(source, hook, verify_batch=3)["verified"] for _ in range(4)]

    assert counts == [3, 3, 1, 3]  # 7 rows: two full slices, the rest, then from the top again
    assert source.status_pull(KEY).verify_after_id == 3


def test_list_requests_that_fail_transiently_are_tried_again_and_the_result_is_the_same(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    create_cases(source, hook, 40)
    for sys_id in [r["sys_id"] for r in emulator.store.records(TABLE)][:10]:
        emulator.work(TABLE, sys_id, state="6")
    emulator.set_faults(error_503=0.2, error_429=0.1, cut_before_commit=0.05, methods=("GET",), seed=13)

    counts = CaseStatusPuller(
        hook, source, "servicenow_default", StatusSettings(page_size=4, attempts=8), sleep=lambda _: None
    ).run()

    assert counts.retries > 0
    assert counts.list_requests == counts.pages + 1 + counts.retries
    assert (counts.rows_changed, counts.not_found) == (40, 0)
    states = [(r["case_state"], r["case_state_label"]) for r in rows(source).values()]
    assert sorted(states).count(("6", "Resolved")) == 10


# ---- pure parts ------------------------------------------------------------------------------------------------


def test_window_starts_the_overlap_before_the_watermark() -> None:
    assert window_start("2026-12-01 10:00:05", 600) == "2026-12-01 09:50:05"
    assert first_page_query("2026-12-01 09:50:05") == (
        "sys_updated_on>=2026-12-01 09:50:05^correlation_idISNOTEMPTY^ORDERBYsys_updated_on^ORDERBYsys_id"
    )


def test_next_page_is_a_keyset_after_the_last_case() -> None:
    last = CaseState(sys_id="a" * 32, number="LSC1", state="1", state_label="New", updated_on="2026-12-01 10:00:05")

    assert next_page_query(last) == (
        "sys_updated_on>2026-12-01 10:00:05^correlation_idISNOTEMPTY"
        f"^NQsys_updated_on=2026-12-01 10:00:05^sys_id>{'a' * 32}^correlation_idISNOTEMPTY"
        "^ORDERBYsys_updated_on^ORDERBYsys_id"
    )


@pytest.mark.parametrize(
    "record",
    [
        {"sys_id": {"value": "x"}, "sys_updated_on": {"value": "2026-12-01 10:00:00"}, "state": {"value": "1"}},
        {"sys_id": {"value": "a" * 32}, "sys_updated_on": {"value": "01/12/2026"}, "state": {"value": "1"}},
        {"sys_id": {"value": "a" * 32}, "sys_updated_on": {"value": "2026-12-01 10:00:00"}},
        "not a record",
    ],
    ids=["bad-sys-id", "display-format-date", "no-state", "not-an-object"],
)
def test_an_answer_the_pull_cannot_trust_stops_it(record: Any) -> None:
    with pytest.raises(UnexpectedAnswer):
        case_state(record)


def test_a_case_reads_value_and_label() -> None:
    state = case_state(
        {
            "sys_id": {"value": "a" * 32, "display_value": "a" * 32},
            "number": {"value": "LSC0001001", "display_value": "LSC0001001"},
            "state": {"value": "10", "display_value": "Open"},
            "sys_updated_on": {"value": "2026-12-01 10:00:00", "display_value": "01/12/2026 11:00:00"},
        }
    )

    assert (state.state, state.state_label, state.updated_on) == ("10", "Open", "2026-12-01 10:00:00")


def test_the_operator_parses_its_templated_arguments_once_and_names_a_bad_one() -> None:
    from ticketsync.operators.status import CaseStatusOperator
    from ticketsync.typed import InvalidValue

    good = CaseStatusOperator(task_id="a", page_size="25", overlap_seconds="600", max_pages=3, verify_batch="0")
    assert good.settings() == StatusSettings(page_size=25, overlap_seconds=600.0, max_pages=3, verify_batch=0)
    with pytest.raises(InvalidValue, match="page_size must be a whole number of at least 1, got 'abc'"):
        CaseStatusOperator(task_id="b", page_size="abc").settings()
    with pytest.raises(InvalidValue, match="overlap_seconds must be a number of seconds, at least 0, got -1"):
        CaseStatusOperator(task_id="c", overlap_seconds=-1).settings()


def test_a_definitions_pull_reads_its_own_target_table_for_every_row(
    hook: ServiceNowHook, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Card rows do not name their table (their target_table column keeps the loan contract's default): the card
    status pull reads the definition's table; read as the loan's rows are, it would find none of their cases."""
    card = packaged_definition("sn_bom_credit_card_service")
    own = [column for column in card.source_columns() if column not in PRODUCER_COLUMNS]
    path = tmp_path / "cards.db"
    with SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE, card.source.table, extra_columns=own) as cards:
        cards.ensure_schema()
        cards.insert_requests([
            {"request_id": f"CARD-{n}", "short_description": "Card blocked", "consumer_number": f"C-{n:04d}",
             "account_number": f"CC-4000{n:02d}", "priority": "low"} for n in (1, 2, 3)
        ])
        cards.claim("t1", limit=3, chunk_size=500, lease_seconds=600)
        loaded = CaseLoader(hook, cards, "t1", FAST, sleep=lambda _: None, transform=transform_for(card)).run()
        assert loaded.as_dict()["created"] == 3
        sys_ids = [r["sys_id"] for r in emulator.store.records(card.target_table)]
        emulator.work(card.target_table, sys_ids[0], state="10")

        as_loan = CaseStatusPuller(hook, cards, "servicenow_default", StatusSettings()).run().as_dict()  # control
        assert (as_loan["cases_read"], as_loan["rows_changed"]) == (0, 0)
        assert {row["case_state"] for row in rows(cards).values()} == {None}

        puller = CaseStatusPuller(hook, cards, "servicenow_default", StatusSettings(), target_table=card.target_table)
        counts = puller.run().as_dict()
        assert puller.tables() == [card.target_table]
        assert (counts["cases_read"], counts["rows_changed"], counts["verified"], counts["not_found"]) == (3, 3, 3, 0)
        states = {row["sys_id"]: (row["case_state"], row["case_state_label"]) for row in rows(cards).values()}
        assert states == {sys_ids[0]: ("10", "Open"), sys_ids[1]: ("1", "New"), sys_ids[2]: ("1", "New")}
        assert cards.status_pull(f"servicenow_default/{card.target_table}").watermark is not None
