"""CaseLoader against the emulator over real HTTP and a real source table (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator

import pytest

from ticketsync.hooks.servicenow import ServiceNowAuthError, ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings, ServiceNowUnavailable
from ticketsync.source import SourceTable
from ticketsync.transform import prepare
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"
FAST = LoadSettings(chunk_size=25, max_in_flight=8, retry_rounds=4, backoff_base=0.05, backoff_cap=0.2)


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 2},
    }))
    hook = ServiceNowHook(pool_size=8)
    yield hook
    hook.close()


def load(source: SourceTable, hook: ServiceNowHook, token: str, settings: LoadSettings = FAST) -> dict[str, int]:
    source.claim(token, limit=100_000, chunk_size=500, lease_seconds=600)
    return CaseLoader(hook, source, token, settings, sleep=lambda _: None).run().as_dict()


def rows_by_request(source: SourceTable) -> dict[str, tuple]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, status, sys_id, number, error, attempts, sync_action FROM {source.table}")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def assert_exactly_once(source: SourceTable, emulator: RunningEmulator, expected_valid: int) -> None:
    records = emulator.store.records(TABLE)
    per_correlation = Counter(record["correlation_id"] for record in records)
    duplicates = {key: n for key, n in per_correlation.items() if n > 1}
    assert not duplicates, f"duplicate records: {duplicates}"
    assert len(records) == expected_valid
    by_sys_id = {record["sys_id"]: record for record in records}
    created = {rid: row for rid, row in rows_by_request(source).items() if row[0] == "created"}
    assert len(created) == expected_valid
    for request_id, (_, sys_id, number, *_rest) in created.items():
        assert by_sys_id[sys_id]["correlation_id"] == request_id
        assert by_sys_id[sys_id]["number"] == number


def test_valid_rows_become_one_record_each_and_invalid_ones_are_rejected(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(120, invalid_every=10))
    counts = load(source, hook, "run-1")
    assert counts["created"] == 108
    assert counts["rejected"] == 12
    assert counts["posts"] == 108
    assert counts["lookups"] == 5  # one IN query per chunk of 25
    assert_exactly_once(source, emulator, 108)
    rejected = {rid: row[3] for rid, row in rows_by_request(source).items() if row[0] == "rejected"}
    assert rejected["REQ-0000010"] == "short_description: is required and must not be blank"
    assert "POST" in emulator.stats()["by_method"]


def test_the_body_stored_is_the_body_sent(source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    source.insert_requests(sample_requests(10))
    load(source, hook, "run-1")
    records = {record["correlation_id"]: record for record in emulator.store.records(TABLE)}
    journal = {entry["element_id"]: entry["value"] for entry in emulator.store.records("sys_journal_field")}
    for request in sample_requests(10):
        body = prepare_body(request)
        record = records[request["request_id"]]
        for field, value in body.items():
            if field == "work_notes":
                assert journal[record["sys_id"]] == value
            else:
                assert record[field] == value, field


def prepare_body(request: dict) -> dict[str, str]:
    from ticketsync.models import PreparedCase, SourceRow

    result = prepare(SourceRow(id=1, **request))
    assert isinstance(result, PreparedCase)
    return result.body.to_json()


def test_a_second_run_creates_nothing(source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    source.insert_requests(sample_requests(50))
    load(source, hook, "run-1")
    posts = emulator.stats()["by_method"]["POST"]
    assert load(source, hook, "run-2")["taken"] == 0
    assert emulator.stats()["by_method"]["POST"] == posts


def test_existing_records_are_adopted_not_duplicated(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """A row whose POST committed but whose answer was lost (or a rerun after a crash) is found and adopted."""
    source.insert_requests(sample_requests(30))
    for request in list(sample_requests(30))[:10]:
        emulator.store.create(TABLE, {"correlation_id": request["request_id"], "short_description": "x"}, "admin")
    counts = load(source, hook, "run-1")
    assert (counts["adopted"], counts["created"]) == (10, 20)
    assert_exactly_once(source, emulator, 30)
    actions = Counter(row[5] for row in rows_by_request(source).values())
    assert actions == {"adopted": 10, "created": 20}


def test_pre_existing_duplicates_are_adopted_oldest_first_and_named(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(1))
    first = emulator.store.create(TABLE, {"correlation_id": "REQ-0000001", "short_description": "a"}, "admin")
    second = emulator.store.create(TABLE, {"correlation_id": "REQ-0000001", "short_description": "b"}, "admin")
    load(source, hook, "run-1")
    status, sys_id, _, error, *_ = rows_by_request(source)["REQ-0000001"]
    assert (status, sys_id) == ("created", first["sys_id"])
    assert second["number"] in error


@pytest.mark.parametrize(
    "faults",
    [
        {"error_500": 0.05, "error_503": 0.05, "cut_after_commit": 0.05, "html_200": 0.03},
        {"cut_before_commit": 0.1, "malformed_json": 0.05, "missing_sys_id": 0.05, "error_502": 0.05},
        {"rate_limit_per_second": 150, "rate_limit_burst": 5, "error_504": 0.05},
    ],
    ids=["5xx-cut-html", "cut-malformed-missing", "rate-limit"],
)
def test_faults_never_cause_a_duplicate_or_a_lost_row(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator, faults: dict
) -> None:
    source.insert_requests(sample_requests(300, invalid_every=20))
    emulator.set_faults(seed=11, **faults)
    counts = load(source, hook, "run-1")
    assert counts["still_pending"] == 0, counts
    assert counts["created"] + counts["adopted"] == 285
    assert counts["rejected"] == 15
    assert_exactly_once(source, emulator, 285)
    assert Counter(row[0] for row in rows_by_request(source).values()) == {"created": 285, "rejected": 15}


def test_cut_after_commit_is_recovered_by_adoption(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(40))
    emulator.set_faults(cut_after_commit=0.3, seed=3)
    counts = load(source, hook, "run-1")
    assert counts["adopted"] > 0
    assert counts["created"] + counts["adopted"] == 40
    assert_exactly_once(source, emulator, 40)
    attempts = [row[4] for row in rows_by_request(source).values() if row[5] == "adopted"]
    assert all(n >= 1 for n in attempts)


def test_rows_still_failing_stay_pending_with_the_error_then_fail_after_max_attempts(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(3))
    emulator.set_faults(error_503=1.0, methods=("POST",))
    settings = LoadSettings(chunk_size=10, max_attempts=4, retry_rounds=1, backoff_base=0.01)
    counts = load(source, hook, "run-1", settings)
    assert counts["still_pending"] == 3
    status, _, _, error, attempts, _ = rows_by_request(source)["REQ-0000001"]
    assert (status, attempts) == ("pending", 2)
    assert error.startswith("attempt 2: 503")
    counts = load(source, hook, "run-2", settings)  # attempts 3 and 4
    assert counts["still_pending"] == 3
    counts = load(source, hook, "run-3", settings)  # a look-up confirms no record, then failed
    assert counts["failed"] == 3
    status, _, _, error, attempts, _ = rows_by_request(source)["REQ-0000001"]
    assert (status, attempts) == ("failed", 4)
    assert error.startswith("gave up after 4 attempts (no record found); last error: attempt 4: 503")
    assert emulator.store.records(TABLE) == []


def test_401_stops_at_once_and_leaves_rows_pending_for_the_next_run(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(20))
    emulator.set_faults(fail_auth=True)
    with pytest.raises(ServiceNowAuthError):
        load(source, hook, "run-1")
    assert emulator.stats()["requests_total"] == 1
    emulator.set_faults(fail_auth=False)
    assert load(source, hook, "run-2")["created"] == 20


def test_an_unreachable_instance_fails_the_load_and_loses_nothing(
    source: SourceTable, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SN_DOWN", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": 9, "login": "a", "password": "b",
    }))
    source.insert_requests(sample_requests(10))
    with pytest.raises(ServiceNowUnavailable, match="could not look up"):
        load(source, ServiceNowHook("sn_down"), "run-1")
    assert Counter(row[0] for row in rows_by_request(source).values()) == {"pending": 10}
    assert source.claim("run-2", limit=100, chunk_size=100, lease_seconds=60) == 10


def test_in_flight_requests_stay_under_the_cap(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(80))
    emulator.set_faults(latency_ms=15)
    load(source, hook, "run-1", LoadSettings(chunk_size=20, max_in_flight=5))
    assert 3 <= emulator.stats()["max_in_flight"] <= 5


def test_a_refused_row_is_failed_with_servicenow_message_and_the_others_go_on(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests(sample_requests(60))
    emulator.set_faults(error_403=0.2, methods=("POST",), seed=5)
    counts = load(source, hook, "run-1")
    assert counts["failed"] > 0
    assert counts["created"] + counts["failed"] == 60
    assert counts["still_pending"] == 0
    failed = [row for row in rows_by_request(source).values() if row[0] == "failed"]
    assert len(failed) == counts["failed"] == emulator.stats()["faults"]["error_403"]
    for _, sys_id, _, error, attempts, _ in failed:
        assert sys_id is None
        assert attempts == 1
        assert error.startswith("403 Operation Failed: Data Policy Exception: The following fields are mandatory: "
                                "Assignment group (ServiceNow refused this row's POST; nothing was created.")
    assert_exactly_once(source, emulator, counts["created"])


class _WriteBackFails(SourceTable):
    def write_outcomes(self, token: str, outcomes: object) -> int:
        raise RuntimeError("the source database refused the write-back")


def test_a_failed_write_back_fails_the_load_and_leaves_the_rows_pending(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """Outcomes are written on a background thread; its failure must still reach the task, never be swallowed."""
    source.insert_requests(sample_requests(60))
    source.claim("run-1", limit=100, chunk_size=100, lease_seconds=600)
    broken = _WriteBackFails(source._connect, source.dialect, source.table)
    with pytest.raises(RuntimeError, match="refused the write-back"):
        CaseLoader(hook, broken, "run-1", FAST, sleep=lambda _: None).run()
    broken.close()
    assert source.backlog() == {"pending": 60}
    # POSTs not started when the failure surfaced were cancelled (how many is a matter of timing)
    posted = len(emulator.store.records(TABLE))
    assert posted > 0
    # the next attempt looks every row up and adopts what was created, creates the rest: no duplicate
    counts = load(source, hook, "run-1")
    assert counts["adopted"] == posted
    assert counts["adopted"] + counts["created"] == 60
    assert_exactly_once(source, emulator, 60)
