"""Business keys resolved on the instance: CaseLoader against the emulator's seeded reference tables, over real
HTTP, with a real source table (SQLite and PostgreSQL)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings, ServiceNowUnavailable
from ticketsync.models import SourceRow
from ticketsync.references import ReferenceResolver
from ticketsync.source import SourceTable
from ticketsync.transform import prepare
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.emulator.reference import seeded_sys_id

TABLE = "sn_bom_loan_service"
FAST = LoadSettings(chunk_size=10, max_in_flight=4, retry_rounds=2, backoff_base=0.01, backoff_cap=0.05)
KEY_TABLES = ("csm_consumer", "sn_bom_financial_account", "sys_user_group")


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 2},
    }))
    hook = ServiceNowHook(pool_size=4)
    yield hook
    hook.close()


def keyed(index: int, consumer_number: str, account: str, group: str | None = "Loan Servicing", **extra: Any) -> dict:
    return {
        "request_id": f"KEY-{index:04d}", "source_system": "core-banking", "consumer_number": consumer_number,
        "account_number": account, "assignment_group_name": group, "short_description": "Request for deferment",
        **extra,
    }


def rows(source: SourceTable) -> dict[str, tuple]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, status, sys_id, error, resolved_references FROM {source.table}")
        return {row[0]: row[1:] for row in cursor.fetchall()}


def load(source: SourceTable, hook: ServiceNowHook, token: str) -> dict[str, int]:
    source.claim(token, limit=10_000, chunk_size=500, lease_seconds=600)
    return CaseLoader(hook, source, token, FAST, sleep=lambda _: None).run().as_dict()


def test_keys_resolve_in_one_look_up_per_reference_table_per_chunk(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    # 20 good rows over 12 consumers (keys repeat), in two chunks of 10
    good = [keyed(n, f"C-{(n % 12) + 1:04d}", f"LN-1000{(n % 12) + 1:02d}") for n in range(20)]
    source.insert_requests(good)
    emulator.reset()

    counts = load(source, hook, "run-1")

    assert counts["created"] == 20
    assert counts["rejected"] == 0
    by_table = emulator.stats()["by_table"]
    # one look-up per reference table per chunk, not one per row; the second chunk asks only for keys the first
    # did not (C-0011, C-0012 and their accounts), and its group is cached
    assert {table: by_table[table] for table in KEY_TABLES} == {
        "csm_consumer": {"GET": 2}, "sn_bom_financial_account": {"GET": 2}, "sys_user_group": {"GET": 1},
    }
    assert counts["reference_lookups"] == 5
    records = {record["correlation_id"]: record for record in emulator.store.records(TABLE)}
    stored = rows(source)
    for request in good:
        record = records[request["request_id"]]
        assert record["consumer"] == seeded_sys_id("csm_consumer", request["consumer_number"])
        assert record["sold_product"] == seeded_sys_id("sn_bom_financial_account", request["account_number"])
        assert record["assignment_group"] == seeded_sys_id("sys_user_group", "Loan Servicing")
        status, sys_id, _error, resolved = stored[request["request_id"]]
        assert (status, sys_id) == ("created", record["sys_id"])
        assert json.loads(resolved) == {
            "assignment_group": record["assignment_group"], "consumer": record["consumer"],
            "sold_product": record["sold_product"],
        }


def test_unknown_ambiguous_and_both_given_keys_reject_the_row_with_a_reason(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    consumer_sys_id = seeded_sys_id("csm_consumer", "C-0001")
    source.insert_requests([
        keyed(1, "C-0042", "LN-100001"),
        keyed(2, "C-0002", "LN-100099"),
        keyed(3, "C-0003", "LN-100003", group="Collections"),
        keyed(4, "C-0004", "LN-100004", consumer=consumer_sys_id),
        keyed(5, "C-0005", "LN-100005", group="No Such Group"),
        keyed(6, "C-0006", "LN-100006"),
    ])

    counts = load(source, hook, "run-1")

    assert (counts["created"], counts["rejected"]) == (1, 5)
    errors = {request_id: row[2] for request_id, row in rows(source).items() if row[0] == "rejected"}
    assert errors["KEY-0001"] == "consumer_number: no csm_consumer with number 'C-0042'"
    duplicates = sorted(seeded_sys_id("sn_bom_financial_account", "LN-100099", n) for n in (1, 2))
    assert errors["KEY-0002"] == (
        f"account_number: 2 sn_bom_financial_account records have account_number 'LN-100099' "
        f"({', '.join(duplicates)}); give sold_product (the sys_id) instead"
    )
    assert errors["KEY-0003"].startswith("assignment_group_name: 2 sys_user_group records have name 'Collections' (")
    assert errors["KEY-0004"] == (
        f"consumer_number: give either consumer (the sys_id) or consumer_number (the key), not both "
        f"(consumer is '{consumer_sys_id}', consumer_number is 'C-0004')"
    )
    assert errors["KEY-0005"] == "assignment_group_name: no sys_user_group with name 'No Such Group'"
    assert [record["correlation_id"] for record in emulator.store.records(TABLE)] == ["KEY-0006"]
    assert rows(source)["KEY-0001"][3] is None  # nothing resolved was written for a rejected row


def test_an_instance_that_cannot_answer_a_key_look_up_leaves_the_rows_pending(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests([keyed(1, "C-0001", "LN-100001"), keyed(2, "C-0002", "LN-100002")])
    emulator.set_faults(error_503=1.0, tables=["csm_consumer"])

    with pytest.raises(ServiceNowUnavailable, match="could not look up number in csm_consumer"):
        load(source, hook, "run-1")

    assert {row[0] for row in rows(source).values()} == {"pending"}
    assert emulator.store.records(TABLE) == []
    emulator.set_faults(error_503=0.0)
    assert load(source, hook, "run-2")["created"] == 2


def test_a_rerun_sends_nothing_and_looks_up_no_key(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests([keyed(n, f"C-{n:04d}", f"LN-1000{n:02d}") for n in range(1, 6)])
    load(source, hook, "run-1")
    # the rows are replayed (reset to pending): the load adopts each record and resolves no key
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id FROM {source.table}")
        request_ids = [row[0] for row in cursor.fetchall()]
    emulator_records = len(emulator.store.records(TABLE))
    source.replay("run-2", request_ids, lease_seconds=600)
    counts = CaseLoader(hook, source, "run-2", FAST, sleep=lambda _: None).run().as_dict()
    assert (counts["adopted"], counts["posts"], counts["reference_lookups"]) == (5, 0, 0)
    assert len(emulator.store.records(TABLE)) == emulator_records == 5
    assert load(source, hook, "run-3")["taken"] == 0  # and a plain rerun finds nothing pending


def test_keys_of_a_batch_are_looked_up_once_and_cached() -> None:
    asked: list[tuple[str, str, list[str]]] = []

    def fetch(table: str, key_field: str, keys: list[str]) -> dict[str, list[str]]:
        asked.append((table, key_field, keys))
        return {key.casefold(): [f"{abs(hash(key)):032x}"[:32]] for key in keys}

    resolver = ReferenceResolver(fetch)
    batch = [prepare(SourceRow(id=n, **keyed(n, "C-0001", f"LN-10000{n}"))) for n in range(1, 4)]
    resolver.resolve(batch)  # type: ignore[arg-type]
    resolver.resolve(batch)  # type: ignore[arg-type]

    assert [(table, keys) for table, _, keys in asked] == [
        ("csm_consumer", ["C-0001"]),
        ("sn_bom_financial_account", ["LN-100001", "LN-100002", "LN-100003"]),
        ("sys_user_group", ["Loan Servicing"]),
    ]


def test_a_key_look_up_the_instance_ignored_is_not_trusted(hook: ServiceNowHook) -> None:
    """An unknown field in the query is dropped by the instance, which then answers with the whole table."""
    from ticketsync.hooks.servicenow import ServiceNowRequestError

    with pytest.raises(ServiceNowRequestError, match="the instance ignored 'customer_noIN…' on csm_consumer"):
        hook.find_by_keys("csm_consumer", "customer_no", ["C-0001"])
    assert hook.find_by_keys("csm_consumer", "number", ["C-0001", "C-0404"]) == {
        "c-0001": [seeded_sys_id("csm_consumer", "C-0001")]
    }


def test_on_no_match_empty_sends_the_field_empty_but_an_ambiguous_key_still_rejects() -> None:
    from ticketsync.models import BusinessKey, KeyLookup, PreparedCase

    key = BusinessKey("assignment_group_name", "assignment_group", "sys_user_group", "name", on_no_match="empty")
    found = {"collections": ["a" * 32, "b" * 32], "loan servicing": ["c" * 32]}
    resolver = ReferenceResolver(lambda _t, _f, keys: {k.casefold(): found[k.casefold()] for k in keys
                                                        if k.casefold() in found})
    base = prepare(SourceRow(id=1, **keyed(1, "C-0001", "LN-100001", group=None)))
    assert isinstance(base, PreparedCase)
    cases = [dataclasses.replace(base, row_id=n, keys=(KeyLookup(key, group),))
             for n, group in ((1, "Nobody"), (2, "Collections"), (3, "Loan Servicing"))]
    empty, ambiguous, one = resolver.resolve(cases)
    assert isinstance(empty, PreparedCase)
    assert "assignment_group" not in empty.body.to_json()
    assert not isinstance(ambiguous, PreparedCase)
    assert ambiguous.reason.startswith("assignment_group_name: 2 sys_user_group records have name 'Collections'")
    assert isinstance(one, PreparedCase)
    assert one.body.to_json()["assignment_group"] == "c" * 32
    assert one.resolved == (("assignment_group", "c" * 32),)


def test_keys_compare_without_case_as_the_instance_does(
    source: SourceTable, hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    source.insert_requests([keyed(1, "c-0001", "ln-100001", group="LOAN SERVICING"), keyed(2, "C-0001", "LN-100001")])

    counts = load(source, hook, "run-1")

    assert counts["created"] == 2
    records = {record["correlation_id"]: record for record in emulator.store.records(TABLE)}
    assert records["KEY-0001"]["consumer"] == records["KEY-0002"]["consumer"] == seeded_sys_id("csm_consumer", "C-0001")
    assert records["KEY-0001"]["assignment_group"] == seeded_sys_id("sys_user_group", "Loan Servicing")
    assert emulator.stats()["by_table"]["csm_consumer"] == {"GET": 1}  # one key, whatever its case
