"""The source table on SQLite and on a real PostgreSQL and MariaDB: schema, claims, leases, write-back."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest

from tests.conftest import mariadb_conn_json
from ticketsync.models import SyncStatus
from ticketsync.source import Dialect, Outcome, Shard, SourceTable, validate_identifier
from ticketsync.source.mysql import connect_kwargs
from ticketsync_dev.samples import sample_requests


def ids_of(rows: list) -> list[int]:
    return [row.id for row in rows]


def test_ensure_schema_is_idempotent_and_keeps_rows(source: SourceTable) -> None:
    source.insert_requests(sample_requests(3))
    source.ensure_schema()
    source.ensure_schema()
    assert source.backlog() == {"pending": 3}


def test_request_id_is_unique(source: SourceTable) -> None:
    source.insert_requests(sample_requests(1))
    with pytest.raises(Exception, match=r"(?i)unique|duplicate"):
        source.insert_requests(sample_requests(1))


def test_claim_takes_pending_rows_up_to_the_limit_in_chunks(source: SourceTable) -> None:
    source.insert_requests(sample_requests(25))
    assert source.claim("run-a", limit=20, chunk_size=7, lease_seconds=60) == 20
    assert source.claim("run-b", limit=100, chunk_size=7, lease_seconds=60) == 5
    assert source.claim("run-c", limit=100, chunk_size=7, lease_seconds=60) == 0


def test_a_retried_claim_is_idempotent(source: SourceTable) -> None:
    source.insert_requests(sample_requests(10))
    assert source.claim("run-a", limit=10, chunk_size=3, lease_seconds=60) == 10
    assert source.claim("run-a", limit=10, chunk_size=3, lease_seconds=60) == 10
    assert sum(len(chunk) for chunk in source.iter_claimed("run-a", chunk_size=4)) == 10


def test_an_expired_lease_can_be_claimed_by_the_next_run_and_the_old_holder_loses_it(source: SourceTable) -> None:
    source.insert_requests(sample_requests(4))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=0.2)
    time.sleep(0.4)
    assert source.claim("run-b", limit=10, chunk_size=10, lease_seconds=60) == 4
    # run-a comes back (a stuck worker): it must not get the rows to send.
    assert source.take_chunk("run-a", after=0, size=10, lease_seconds=60) == []
    assert ids_of(source.take_chunk("run-b", after=0, size=10, lease_seconds=60)) == [1, 2, 3, 4]


def test_take_chunk_walks_the_claim_in_id_order(source: SourceTable) -> None:
    source.insert_requests(sample_requests(7))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=60)
    first = source.take_chunk("run-a", after=0, size=3, lease_seconds=60)
    second = source.take_chunk("run-a", after=first[-1].id, size=3, lease_seconds=60)
    third = source.take_chunk("run-a", after=second[-1].id, size=3, lease_seconds=60)
    assert [ids_of(first), ids_of(second), ids_of(third)] == [[1, 2, 3], [4, 5, 6], [7]]
    assert first[0].request_id == "REQ-0000001"
    assert first[0].consumer
    assert len(first[0].consumer) == 32


def test_write_back_ends_the_row_and_only_where_the_claim_is_held(source: SourceTable) -> None:
    source.insert_requests(sample_requests(3))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=60)
    written = source.write_outcomes("run-a", [
        Outcome(1, SyncStatus.CREATED, sys_id="a" * 32, number="LSC0001001", attempts_made=1, http_status=201,
                action="created"),
        Outcome(2, SyncStatus.REJECTED, error="consumer: must be a 32-character hexadecimal sys_id"),
        Outcome(3, SyncStatus.PENDING, error="attempt 1: 503 (will retry)", attempts_made=1, http_status=503),
    ])
    assert written == 3
    # Another token cannot overwrite: the row is not its to write.
    source.write_outcomes("run-x", [Outcome(3, SyncStatus.FAILED, error="not mine")])
    assert source.token_summary("run-a") == {"created_created": 1, "rejected": 1, "pending": 1}
    # A final row is never written again, even by its own token.
    source.write_outcomes("run-a", [Outcome(1, SyncStatus.FAILED, error="late")])
    assert source.token_summary("run-a")["created_created"] == 1
    pending = source.take_chunk("run-a", after=0, size=10, lease_seconds=60)
    assert [(r.id, r.attempts, r.error) for r in pending] == [(3, 1, "attempt 1: 503 (will retry)")]


def test_a_transient_outcome_releases_the_lease_for_the_next_run(source: SourceTable) -> None:
    source.insert_requests(sample_requests(1))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=3600)
    source.write_outcomes("run-a", [Outcome(1, SyncStatus.PENDING, error="timeout", attempts_made=1)])
    assert source.claim("run-b", limit=10, chunk_size=10, lease_seconds=60) == 1


def test_release_frees_what_a_failed_task_still_holds(source: SourceTable) -> None:
    source.insert_requests(sample_requests(2))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=3600)
    assert source.release("run-a") == 2
    assert source.claim("run-b", limit=10, chunk_size=10, lease_seconds=60) == 2


def test_concurrent_claimers_never_share_a_row(source: SourceTable) -> None:
    source.insert_requests(sample_requests(600))
    claimed: dict[str, int] = {}

    def claimer(token: str) -> None:
        # Each claimer has its own connection, as separate workers would.
        own = SourceTable(source._connect, source.dialect, source.table)
        try:
            claimed[token] = own.claim(token, limit=600, chunk_size=25, lease_seconds=60)
        finally:
            own.close()

    threads = [threading.Thread(target=claimer, args=(f"run-{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(claimed.values()) == 600
    seen: set[int] = set()
    for token, count in claimed.items():
        rows = [row.id for chunk in source.iter_claimed(token, chunk_size=100) for row in chunk]
        assert len(rows) == count
        assert not seen & set(rows)
        seen |= set(rows)
    assert len(seen) == 600


@pytest.mark.parametrize("name", ["ticket_requests; DROP TABLE x", "a-b", "1abc", "", "t" * 64])
def test_table_names_from_configuration_must_be_identifiers(name: str) -> None:
    with pytest.raises(ValueError, match="invalid table name"):
        validate_identifier(name)


def test_the_shards_of_one_claim_are_disjoint_and_cover_it(source: SourceTable) -> None:
    source.insert_requests(sample_requests(23))
    source.claim("run-a", limit=100, chunk_size=10, lease_seconds=60)
    taken: dict[int, list[int]] = {}
    for index in range(3):
        after, ids = 0, []
        while rows := source.take_chunk("run-a", after=after, size=4, lease_seconds=60, shard=Shard(index, 3)):
            ids += ids_of(rows)
            after = rows[-1].id
        taken[index] = ids
    assert taken == {i: [n for n in range(1, 24) if n % 3 == i] for i in range(3)}
    # One shard of one is the whole claim.
    assert ids_of(source.take_chunk("run-a", after=0, size=100, lease_seconds=60, shard=Shard(0, 1))) == list(
        range(1, 24)
    )


def test_a_retry_round_and_the_release_of_a_shard_touch_only_its_rows(source: SourceTable) -> None:
    source.insert_requests(sample_requests(6))
    source.claim("run-a", limit=10, chunk_size=10, lease_seconds=3600)
    assert ids_of(source.take_rows("run-a", [1, 2, 3, 4], lease_seconds=60, shard=Shard(1, 2))) == [1, 3]
    # Loader 1 of 2 finishes first: it must not free the rows loader 0 is still sending.
    assert source.release("run-a", shard=Shard(1, 2)) == 3
    assert source.claim("run-b", limit=10, chunk_size=10, lease_seconds=60) == 3
    assert ids_of(source.take_chunk("run-a", after=0, size=10, lease_seconds=60)) == [2, 4, 6]


@pytest.mark.parametrize(("index", "count"), [(3, 3), (-1, 2), (0, 0)])
def test_a_shard_index_must_lie_within_the_count(index: int, count: int) -> None:
    with pytest.raises(ValueError, match="invalid shard"):
        Shard(index, count)


def test_an_airflow_mysql_connection_opens_a_mariadb_source(
    mariadb_database: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """conn_type ``mysql`` (what the MySQL provider's form and ``mysql://`` URIs give) reaches MariaDB through
    PyMySQL; an UPDATE counts the rows it matched, as on PostgreSQL, so a second release still reports them."""
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE_MARIADB", mariadb_conn_json(mariadb_database))
    with SourceTable.from_conn_id("ticket_source_mariadb", table=f"tr_{uuid.uuid4().hex[:8]}") as source:
        assert source.dialect is Dialect.MYSQL
        source.ensure_schema()
        source.insert_requests(sample_requests(2))
        source.claim("run-a", limit=10, chunk_size=10, lease_seconds=3600)
        assert source.release("run-a") == 2
        assert source.release("run-a") == 2


def test_mysql_connection_extras_are_read_by_name() -> None:
    from airflow.sdk import Connection

    connection = Connection(conn_id="s", conn_type="mysql", host="db.bank.internal", login="sync", password="pw",
                            schema="requests",
                            extra=json.dumps({"ssl": json.dumps({"ca": "/etc/ssl/bank-ca.pem"}), "connect_timeout": 3,
                                              "unrelated": "ignored"}))
    kwargs = connect_kwargs(connection)
    assert (kwargs["host"], kwargs["port"], kwargs["user"], kwargs["database"]) == (
        "db.bank.internal", 3306, "sync", "requests")
    assert kwargs["ssl"] == {"ca": "/etc/ssl/bank-ca.pem"}
    assert kwargs["connect_timeout"] == 3.0
    assert "unrelated" not in kwargs
