"""Updates of existing cases (issue 13) against the emulator over real HTTP and a real source table (SQLite and
PostgreSQL): PATCHes under cut connections, timeouts and 5xx append each new note exactly once, create no case,
and bring the rows back to ``created``; a closed case follows the policy; without the journal check a note
is appended twice (the control)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import new_source
from ticketsync.definitions import packaged_definition
from ticketsync.definitions.transform import transform_for
from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowTransientError
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.source import Dialect, SourceTable
from ticketsync.source.updates import CHANGED_DURING_UPDATE
from ticketsync.updater import CaseUpdater, UpdateSettings, plan_updates
from ticketsync.updates import UPDATABLE_FIELDS as UPDATABLE
from ticketsync.updates import Snapshot
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.emulator.reference import seeded_sys_id
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"
FAST = LoadSettings(chunk_size=25, max_in_flight=4, retry_rounds=2, backoff_base=0.05, backoff_cap=0.2)
QUICK = UpdateSettings(chunk_size=4, max_attempts=8, settle_seconds=1.6, backoff_base=0.01, lease_seconds=120)


@pytest.fixture(params=[Dialect.SQLITE, Dialect.POSTGRES], ids=["sqlite", "postgres"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceTable]:
    table = new_source(request, request.param, tmp_path)
    yield table
    table.close()


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVICENOW_DEFAULT",
        json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
                    "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 1}}),
    )
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def execute(source: SourceTable, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with source._transaction() as cursor:
        cursor.execute(source._q(sql), params)
        return list(cursor.fetchall()) if cursor.description else []


def create_cases(source: SourceTable, hook: ServiceNowHook, count: int) -> dict[int, str]:
    source.insert_requests(sample_requests(count))
    source.claim("t1", limit=count, chunk_size=500, lease_seconds=600)
    assert CaseLoader(hook, source, "t1", FAST, sleep=lambda _: None).run().as_dict()["created"] == count
    return {int(r[0]): str(r[1]) for r in execute(source, f"SELECT id, sys_id FROM {source.table}")}


def request_update(source: SourceTable, row_id: int, **columns: str) -> None:
    assignments = "".join(f"{name} = ?, " for name in columns)
    execute(source, f"UPDATE {source.table} SET {assignments}status = 'update_pending' WHERE id = ?",
            (*columns.values(), row_id))


def notes(hook: ServiceNowHook, sys_id: str) -> list[str]:
    return [entry["value"] for entry in hook.journal_entries(TABLE, sys_id)]


def update_until_done(source: SourceTable, hook: ServiceNowHook, settings: UpdateSettings) -> list[dict[str, int]]:
    runs = []
    for run in range(4):  # a row left update_pending (answer lost and unverifiable) is taken by the next run
        counts = CaseUpdater(hook, source, f"run{run}:update", settings).run().as_dict()
        runs.append(counts)
        if counts["still_pending"] == 0:
            break
    return runs


def test_updates_under_faults_apply_each_note_once_and_create_nothing(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    cases = create_cases(source, hook, 12)
    first_notes = {row_id: notes(hook, sys_id) for row_id, sys_id in cases.items()}
    emulator.work(TABLE, cases[12], state="3")  # an agent closed it; the business rule makes it inactive
    # The loader stored each create's snapshot; rows 1-4 stand for rows synced before migration 5 (NULL).
    snapshots = dict(execute(source, f"SELECT id, sent_fields FROM {source.table} ORDER BY id"))
    assert Snapshot.from_json(snapshots[5]).note == first_notes[5][-1]  # type: ignore[union-attr]
    execute(source, f"UPDATE {source.table} SET sent_fields = NULL WHERE id <= 4")
    for row_id in range(1, 13):
        changes = {"notes": f"Payslip received for row {row_id}"}
        if row_id % 2 == 0:
            changes["short_description"] = f"Loan deferment, 3 months (row {row_id})"
        request_update(source, row_id, **changes)
    posts = emulator.stats()["by_method"].get("POST", 0)
    emulator.set_faults(methods=("PATCH",), cut_after_commit=0.2, slow_after_commit=0.1, slow_after_commit_ms=1500,
                        slow_before_commit=0.05, slow_before_commit_ms=1300, error_500=0.33, seed=13)

    runs = update_until_done(source, hook, QUICK)

    emulator.set_faults(cut_after_commit=0, slow_after_commit=0, slow_before_commit=0, error_500=0)
    stats = emulator.stats()
    assert sum(run["lost_answers"] for run in runs) >= 3, (runs, stats)  # the faults did hit
    assert sum(run["updated"] for run in runs) == 11, runs
    assert runs[0]["closed"] == 1, runs
    assert stats["by_method"].get("POST", 0) == posts  # no case created
    assert len(emulator.store.records(TABLE)) == 12
    rows = {int(r[0]): r[1:] for r in execute(source, f"SELECT id, status, error, short_description, sent_fields "
                                                       f"FROM {source.table}")}
    for row_id in range(1, 12):
        status, error, short_description, sent = rows[row_id]
        assert (status, error) == ("created", None), (row_id, rows[row_id])
        assert hook.get_record(TABLE, cases[row_id])["short_description"] == short_description
        journal = notes(hook, cases[row_id])
        assert journal.count(f"Payslip received for row {row_id}") == 1, (row_id, journal)
        assert len(journal) == len(first_notes[row_id]) + 1
        assert Snapshot.from_json(sent).note == f"Payslip received for row {row_id}"  # type: ignore[union-attr]
    status, error, *_ = rows[12]
    assert status == "created"
    assert "is closed (state 3, active false)" in error
    assert "closed_policy skip" in error
    assert notes(hook, cases[12]) == first_notes[12]
    assert CaseUpdater(hook, source, "again:update", QUICK).run().as_dict()["claimed"] == 0


def test_a_closed_case_with_note_only_gets_the_note_and_no_field_change(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    cases = create_cases(source, hook, 2)
    emulator.work(TABLE, cases[1], state="3")
    before = hook.get_record(TABLE, cases[1])["short_description"]
    request_update(source, 1, notes="Customer called again", short_description="Changed after closing")
    execute(source, f"DELETE FROM {source.table} WHERE id = 2")
    emulator.delete(TABLE, cases[2])

    counts = CaseUpdater(hook, source, "r:update", UpdateSettings(closed_policy="note_only")).run().as_dict()

    assert counts["closed"] == 1, counts
    assert counts["updated"] == 1, counts
    assert hook.get_record(TABLE, cases[1])["short_description"] == before
    assert notes(hook, cases[1]).count("Customer called again") == 1
    status, error = execute(source, f"SELECT status, error FROM {source.table} WHERE id = 1")[0]
    assert status == "created"
    assert "only the note was appended (closed_policy note_only)" in error


def test_a_deleted_case_is_reported_and_never_created_again(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    cases = create_cases(source, hook, 1)
    emulator.delete(TABLE, cases[1])
    request_update(source, 1, notes="Too late")

    counts = CaseUpdater(hook, source, "r:update", QUICK).run().as_dict()

    assert counts["not_found"] == 1
    assert counts["patches"] == 0
    assert emulator.store.records(TABLE) == []
    status, error = execute(source, f"SELECT status, error FROM {source.table}")[0]
    assert status == "created"
    assert error.startswith("case not found on the instance")


@pytest.mark.parametrize("verify", [True, False], ids=["journal-checked", "control-unchecked"])
def test_a_cut_answer_resent_without_the_journal_check_appends_the_note_twice(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, verify: bool
) -> None:
    cases = create_cases(source, hook, 1)
    request_update(source, 1, notes="Only once, please")
    emulator.set_faults(methods=("PATCH",), cut_after_commit=1.0)
    settings = UpdateSettings(max_attempts=2, settle_seconds=0, backoff_base=0.01, verify=verify)

    CaseUpdater(hook, source, "r:update", settings).run()

    expected = 1 if verify else 2
    assert notes(hook, cases[1]).count("Only once, please") == expected


def test_a_dry_run_plans_updates_from_the_source_and_sends_nothing(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    cases = create_cases(source, hook, 3)
    request_update(source, 1, notes="A new note")
    request_update(source, 2)  # nothing changed
    request_update(source, 3, short_description="Another description")
    execute(source, f"UPDATE {source.table} SET sent_fields = NULL WHERE id = 3")
    requests = emulator.stats()["requests_total"]

    plan = plan_updates(source.pending_updates(limit=100))

    fields = plan.pop("fields")
    # row 3 has no snapshot: its plan is an upper bound (every non-empty field; the case is read before sending)
    assert plan == {"update_pending": 3, "would_update": 2, "unchanged": 1, "invalid": 0, "without_snapshot": 1,
                    "keys_to_resolve": 0, "notes": 2}
    assert fields["short_description"] == 1
    assert set(fields) <= set(UPDATABLE)
    assert emulator.stats()["requests_total"] == requests
    assert execute(source, f"SELECT COUNT(*) FROM {source.table} WHERE status = 'update_pending' "
                           "AND claim_token = 't1'") == [(3,)]
    assert len(cases) == 3


def test_failed_reads_are_retried_in_the_task_and_every_update_lands_in_one_run(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """A 5xx or an HTML page on a read (the state read, the journal read) does not fail the run: reads change
    nothing, so the updater repeats them with backoff and the run updates every row (CI found a DAG run whose
    three update tries each ended on a failed read, leaving rows update_pending and the report short)."""
    cases = create_cases(source, hook, 8)
    execute(source, f"UPDATE {source.table} SET sent_fields = NULL WHERE id <= 4")  # these read the journal too
    for row_id in cases:
        request_update(source, row_id, notes=f"Statement sent for row {row_id}")
    emulator.set_faults(methods=("GET",), error_500=0.2, error_503=0.1, html_200=0.1, seed=7)

    counts = CaseUpdater(hook, source, "r:update", QUICK).run().as_dict()

    emulator.set_faults(error_500=0, error_503=0, html_200=0)
    assert counts["read_retries"] >= 2, counts  # the faults did hit the reads
    assert (counts["updated"], counts["still_pending"]) == (8, 0), counts
    for row_id, sys_id in cases.items():
        assert notes(hook, sys_id).count(f"Statement sent for row {row_id}") == 1
    assert execute(source, f"SELECT DISTINCT status, error FROM {source.table}") == [("created", None)]


def test_reads_that_keep_failing_end_the_try_and_leave_the_rows_for_the_retry(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """The control: reads failing every time are tried ``max_attempts`` times, then the error goes up (the task
    fails and its retry takes the rows), and the rows stay ``update_pending`` with nothing sent."""
    cases = create_cases(source, hook, 2)
    for row_id in cases:
        request_update(source, row_id, notes="Never sent")
    emulator.set_faults(methods=("GET",), error_503=1.0)
    patches = emulator.stats()["by_method"].get("PATCH", 0)
    updater = CaseUpdater(hook, source, "r:update", UpdateSettings(max_attempts=3, backoff_base=0.01))

    with pytest.raises(ServiceNowTransientError, match="after 3 tries"):
        updater.run()

    emulator.set_faults(error_503=0)
    assert updater.counts.read_retries == 2
    assert emulator.stats()["by_method"].get("PATCH", 0) == patches
    assert execute(source, f"SELECT DISTINCT status FROM {source.table}") == [("update_pending",)]


@pytest.fixture(params=[Dialect.SQLITE, Dialect.POSTGRES, Dialect.MYSQL], ids=["sqlite", "postgres", "mariadb"])
def any_source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceTable]:
    table = new_source(request, request.param, tmp_path)
    yield table
    table.close()


def test_a_change_made_while_its_update_is_sent_is_not_lost(
    any_source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """The producer writes a second note while the first one's PATCH is in flight: the run does not set the row back
    to ``created`` (that would drop the second note for good); it records what was sent and leaves the row
    ``update_pending``, and the next run appends only the second note. Without the guard the first run ends the
    row ``created`` and the second note never reaches the case."""
    source = any_source
    cases = create_cases(source, hook, 1)
    request_update(source, 1, notes="First note")
    emulator.set_faults(methods=("PATCH",), slow_before_commit=1.0, slow_before_commit_ms=1500)
    producer = source.clone()  # the bank's application: its own connection, its own thread

    def edit_while_patch_is_held() -> None:
        deadline = time.monotonic() + 10
        while emulator.stats()["by_method"].get("PATCH", 0) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the PATCH has reached the instance and is held there
        execute(producer, f"UPDATE {source.table} SET notes = ?, status = 'update_pending' WHERE id = 1",
                ("Second note",))
        producer.close()

    bank = threading.Thread(target=edit_while_patch_is_held)
    bank.start()
    CaseUpdater(hook, source, "r1:update", QUICK).run()
    bank.join(timeout=30)
    emulator.set_faults(slow_before_commit=0)

    status, error, sent = execute(source, f"SELECT status, error, sent_fields FROM {source.table}")[0]
    assert status == "update_pending", (status, error)
    assert error == CHANGED_DURING_UPDATE
    assert Snapshot.from_json(sent).note == "First note"  # type: ignore[union-attr]

    counts = CaseUpdater(hook, source, "r2:update", QUICK).run().as_dict()

    assert counts["updated"] == 1, counts
    journal = notes(hook, cases[1])
    assert (journal.count("First note"), journal.count("Second note")) == (1, 1), journal
    assert execute(source, f"SELECT status, error FROM {source.table}") == [("created", None)]


@pytest.mark.parametrize(("settle", "expected"), [(1.5, 1), (0.0, 2)], ids=["settled", "control-checked-too-soon"])
def test_a_patch_whose_connection_was_lost_is_checked_only_after_it_could_have_landed(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, settle: float, expected: int
) -> None:
    """The connection is lost at once while the instance goes on and applies the PATCH 0.7 s later. Checked after
    settle_seconds, the note is found and not sent again; checked at once (the control), it is not there yet, the
    PATCH is sent again and the note lands twice."""
    cases = create_cases(source, hook, 1)
    request_update(source, 1, notes="Applied late")
    emulator.set_faults(methods=("PATCH",), cut_then_commit=1.0, slow_before_commit_ms=700, seed=1)
    settings = UpdateSettings(max_attempts=2, settle_seconds=settle, backoff_base=0.01)

    CaseUpdater(hook, source, "r:update", settings).run()

    emulator.set_faults(cut_then_commit=0)
    time.sleep(1.0)  # let a late PATCH land
    assert notes(hook, cases[1]).count("Applied late") == expected


CARD = packaged_definition("sn_bom_credit_card_service")


@pytest.fixture
def card_source(tmp_path: Path) -> Iterator[SourceTable]:
    """The credit card definition's source table (its own columns description and priority), on SQLite."""
    own = [column for column in CARD.source_columns() if column not in PRODUCER_COLUMNS]
    path = tmp_path / "cards.db"
    table = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE, CARD.source.table, extra_columns=own)
    table.ensure_schema()
    yield table
    table.close()


def card_request(n: int) -> dict[str, str]:
    """A card request by business keys only (no sys_id), as the card producer writes it."""
    return {
        "request_id": f"CARD-{n}", "source_system": "cards-crm", "short_description": f"Card blocked ({n})",
        "description": "Declined abroad", "consumer_number": f"C-{n:04d}", "account_number": f"CC-4000{n:02d}",
        "assignment_group_name": "Card Services", "contact_type": "phone", "priority": "High", "notes": "Called in",
    }


def test_a_card_rows_changed_description_is_patched_alone_with_its_definitions_fields(
    card_source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    transform = transform_for(CARD)
    card_source.insert_requests([card_request(1), card_request(2)])
    card_source.claim("t1", limit=2, chunk_size=500, lease_seconds=600)
    assert CaseLoader(hook, card_source, "t1", FAST, sleep=lambda _: None, transform=transform).run().as_dict()[
        "created"] == 2
    ids = {str(r[0]): (int(r[1]), str(r[2])) for r in execute(card_source, "SELECT request_id, id, sys_id FROM "
                                                                           f"{card_source.table}")}
    row_id, sys_id = ids["CARD-1"]
    sent = Snapshot.from_json(execute(card_source, f"SELECT sent_fields FROM {card_source.table} WHERE id = ?",
                                      (row_id,))[0][0])
    assert sent is not None
    assert set(sent.fields) == set(CARD.updatable_fields())  # the definition's fields, not the loan's
    assert {"description", "priority"} <= set(sent.fields)
    assert not {"category", "product", "work_notes"} & set(sent.fields)  # a constant, unmapped, a journal input
    # an agent changes what the row did not: an update that sent those fields (or the key-given references as
    # empty) would overwrite the agent's work or clear the case's consumer
    emulator.work(CARD.target_table, sys_id, short_description="Card blocked, customer abroad", priority="1")
    before = hook.get_record(CARD.target_table, sys_id)
    request_update(card_source, row_id, description="Declined abroad; the card is now blocked")
    methods = dict(emulator.stats()["by_method"])

    counts = CaseUpdater(hook, card_source, "u1:update", QUICK, transform=transform).run().as_dict()

    by_method = emulator.stats()["by_method"]
    assert (counts["updated"], counts["patches"], counts["refused"]) == (1, 1, 0), counts
    assert by_method.get("PATCH", 0) == methods.get("PATCH", 0) + 1
    assert by_method.get("POST", 0) == methods.get("POST", 0)  # no case created
    after = hook.get_record(CARD.target_table, sys_id)
    assert after["description"] == "Declined abroad; the card is now blocked"
    unchanged = [k for k in before if k == "sys_id" or not k.startswith("sys_")]  # the instance stamps sys_ fields
    assert len(unchanged) > 10
    assert {k: after[k] for k in unchanged if k != "description"} == {
        k: before[k] for k in unchanged if k != "description"}
    assert (after["priority"], after["short_description"]) == ("1", "Card blocked, customer abroad")
    assert after["consumer"] == seeded_sys_id("csm_consumer", "C-0001")
    [(status, error)] = execute(card_source, f"SELECT status, error FROM {card_source.table} WHERE id = ?", (row_id,))
    assert (status, error) == ("created", None)
    # a changed priority (a label the definition maps) is the definition's field too: PATCHed by its value
    request_update(card_source, row_id, priority="low")
    assert CaseUpdater(hook, card_source, "u2:update", QUICK, transform=transform).run().as_dict()["updated"] == 1
    assert hook.get_record(CARD.target_table, sys_id)["priority"] == "4"


def test_a_dry_run_does_not_count_key_given_references_as_changed(
    card_source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """Rows given by business keys: the dry run cannot resolve their keys (it asks the instance nothing), so their
    references are not counted as changed fields (before, every such row planned a PATCH of consumer, sold_product and
    assignment_group); it counts them in keys_to_resolve instead. The run that sends resolves them and PATCHes only
    the description."""
    transform = transform_for(CARD)
    card_source.insert_requests([card_request(1), card_request(2)])
    card_source.claim("t1", limit=2, chunk_size=500, lease_seconds=600)
    assert CaseLoader(hook, card_source, "t1", FAST, sleep=lambda _: None, transform=transform).run().as_dict()[
        "created"] == 2
    ids = {str(r[0]): int(r[1]) for r in execute(card_source, f"SELECT request_id, id FROM {card_source.table}")}
    request_update(card_source, ids["CARD-1"], description="Declined abroad; the card is now blocked")
    request_update(card_source, ids["CARD-2"])  # nothing changed
    requests = emulator.stats()["requests_total"]

    plan = plan_updates(card_source.pending_updates(limit=100), transform)

    assert emulator.stats()["requests_total"] == requests
    assert plan == {"update_pending": 2, "would_update": 1, "unchanged": 1, "invalid": 0, "without_snapshot": 0,
                    "keys_to_resolve": 2, "notes": 0, "fields": {"description": 1}}
    methods = dict(emulator.stats()["by_method"])
    counts = CaseUpdater(hook, card_source, "u1:update", QUICK, transform=transform).run().as_dict()
    assert (counts["updated"], counts["unchanged"], counts["patches"]) == (1, 1, 1), counts
    assert emulator.stats()["by_method"].get("PATCH", 0) == methods.get("PATCH", 0) + 1
