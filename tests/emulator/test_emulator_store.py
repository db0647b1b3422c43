"""The store and encoded-query parser without HTTP, and the speed of indexed IN queries."""

from __future__ import annotations

import random
import time

import pytest

from ticketsync_dev.emulator import Store
from ticketsync_dev.emulator.query import parse_query

LOAN = "sn_bom_loan_service"
POSITIONS = {"sys_id": 0, "state": 1, "priority": 2, "correlation_id": 3}


def test_parse_query_groups_or_terms_under_and_and_splits_nq() -> None:
    query = parse_query("state=1^ORstate=2^priority!=4^NQcorrelation_idINa,b^ORDERBYDESCpriority", POSITIONS)

    first, second = query.parts
    assert [[(c.name, c.operator, c.value) for c in group] for group in first] == [
        [("state", "=", "1"), ("state", "=", "2")],
        [("priority", "!=", "4")],
    ]
    assert second[0][0].values == frozenset({"a", "b"})
    assert query.order == ((2, True),)


@pytest.mark.parametrize(
    "encoded",
    ["", "nosuchfield=1", "state", "state~1", "stateISEMPTYx", "consumer.name=Ann", "ORDERBYnosuchfield", "^^^"],
)
def test_unusable_terms_are_dropped_and_leave_a_match_all_query(encoded: str) -> None:
    query = parse_query(encoded, POSITIONS)

    assert query.matches_all
    assert query.matches(["x", "1", "4", "c"])


def test_escaped_caret_stays_in_the_value() -> None:
    query = parse_query("correlation_id=a^^b", POSITIONS)

    assert query.parts[0][0][0].value == "a^b"


def test_numbers_compare_as_numbers() -> None:
    query = parse_query("priority<10", POSITIONS)

    assert query.matches(["x", "1", "9", "c"])
    assert not query.matches(["x", "1", "11", "c"])


def test_updates_and_deletes_keep_the_indexes_right() -> None:
    store = Store()
    first = store.create(LOAN, {"correlation_id": "A", "state": "1"}, "admin")
    store.create(LOAN, {"correlation_id": "B", "state": "1"}, "admin")
    assert store.query(LOAN, "state=1")[1] == 2  # builds the state index

    store.update(LOAN, first["sys_id"], {"state": "3"}, "admin")
    store.create(LOAN, {"correlation_id": "C", "state": "3"}, "admin")
    store.delete(LOAN, first["sys_id"])

    assert [r["correlation_id"] for r in store.query(LOAN, "state=1")[0]] == ["B"]
    assert [r["correlation_id"] for r in store.query(LOAN, "state=3^ORstate=1")[0]] == ["B", "C"]
    assert store.query(LOAN, f"sys_id={first['sys_id']}") == ([], 0)


def test_an_update_without_changes_does_not_bump_the_record() -> None:
    store = Store()
    record = store.create(LOAN, {"state": "1"}, "admin")

    assert store.update(LOAN, record["sys_id"], {"state": "1"}, "admin") == record


def test_one_thousand_in_queries_over_twenty_thousand_records_are_fast() -> None:
    store = Store()
    for index in range(20_000):
        store.create(LOAN, {"correlation_id": f"REQ-{index:06d}", "short_description": "bulk"}, "admin")
    rng = random.Random(7)
    queries = [
        "correlation_idIN" + ",".join(f"REQ-{n:06d}" for n in rng.sample(range(20_000), 100)) for _ in range(1_000)
    ]

    started = time.perf_counter()
    found = [store.query(LOAN, encoded, fields=("sys_id", "correlation_id"))[1] for encoded in queries]
    elapsed = time.perf_counter() - started

    assert found == [100] * 1_000
    assert elapsed < 5, f"1,000 IN queries took {elapsed:.2f} s"


def test_indexed_and_scanned_queries_both_ignore_case() -> None:
    store = Store()
    for correlation in ("AbC-1", "abc-2", "XYZ-3"):
        store.create(LOAN, {"correlation_id": correlation, "state": "1"}, "admin")
    indexed = store.query(LOAN, "correlation_idINabc-1,ABC-2", fields=("correlation_id",))[0]
    assert [r["correlation_id"] for r in indexed] == ["AbC-1", "abc-2"]
    scanned = store.query(LOAN, "correlation_idLIKEabc^ORcorrelation_id=xyz-3", fields=("correlation_id",))[0]
    assert [r["correlation_id"] for r in scanned] == ["AbC-1", "abc-2", "XYZ-3"]
    assert parse_query("correlation_idINAbC", POSITIONS).matches(["x", "1", "4", "abc"])
