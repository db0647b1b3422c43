"""The source table's operations support on SQLite and PostgreSQL: read-only selection (dry runs), replays with
their audit trail, the oldest pending row's age, and the ids behind the records link."""

from __future__ import annotations

import pytest

from ticketsync.models import SyncStatus
from ticketsync.source import Outcome, SourceTable
from ticketsync_dev.samples import sample_requests


def snapshot(source: SourceTable) -> list[tuple[object, ...]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT * FROM {source.table} ORDER BY id")
        return [tuple(row) for row in cursor.fetchall()]


def status_of(source: SourceTable, request_id: str) -> tuple[object, ...]:
    with source._transaction() as cursor:
        cursor.execute(source._q(f"SELECT status, claim_token, attempts, sys_id, error FROM {source.table} "
                                 "WHERE request_id = ?"), (request_id,))
        return tuple(cursor.fetchone())


def finish(source: SourceTable, token: str, request_id: str, status: SyncStatus, **fields: object) -> None:
    [row] = [r for r in source.find_requests([request_id])]
    source.write_outcomes(token, [Outcome(row.id, status, attempts_made=3, **fields)])  # type: ignore[arg-type]


def test_select_claimable_reads_what_a_claim_would_take_and_writes_nothing(source: SourceTable) -> None:
    source.insert_requests(sample_requests(10))
    source.claim("other-run", limit=3, chunk_size=3, lease_seconds=600)  # rows 1-3 held under a live lease
    before = snapshot(source)
    rows = source.select_claimable(after=0, size=5)
    assert [row.request_id for row in rows] == [f"REQ-{i:07d}" for i in range(4, 9)]
    assert [row.request_id for row in source.select_claimable(after=rows[-1].id, size=5)] == [
        "REQ-0000009", "REQ-0000010"]
    assert snapshot(source) == before


def test_replay_resets_final_rows_claims_them_and_keeps_their_previous_state(source: SourceTable) -> None:
    source.insert_requests(sample_requests(4))
    source.claim("run-1", limit=4, chunk_size=4, lease_seconds=60)
    finish(source, "run-1", "REQ-0000001", SyncStatus.REJECTED, error="consumer: is required")
    finish(source, "run-1", "REQ-0000002", SyncStatus.FAILED, error="403 Operation Failed")
    finish(source, "run-1", "REQ-0000003", SyncStatus.CREATED, sys_id="a" * 32, number="LSC0001", action="created")

    result = source.replay("run-2", ["REQ-0000001", "REQ-0000002", "REQ-0000003"], lease_seconds=60)
    assert sorted(row.request_id for row in result.reset) == ["REQ-0000001", "REQ-0000002", "REQ-0000003"]
    assert result.claimed == 3
    for request_id in ("REQ-0000001", "REQ-0000002", "REQ-0000003"):
        assert status_of(source, request_id) == ("pending", "run-2", 0, None, None)
    # The next steps of run-2 see exactly these rows as its own.
    assert [row.request_id for rows in source.iter_claimed("run-2", chunk_size=10) for row in rows] == [
        "REQ-0000001", "REQ-0000002", "REQ-0000003"]
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, claim_token, previous_status, previous_error, previous_sys_id, "
                       f"previous_number, previous_sync_action, previous_attempts FROM {source.replays_table} "
                       "ORDER BY request_id")
        audit = [tuple(row) for row in cursor.fetchall()]
    assert audit == [
        ("REQ-0000001", "run-2", "rejected", "consumer: is required", None, None, None, 3),
        ("REQ-0000002", "run-2", "failed", "403 Operation Failed", None, None, None, 3),
        ("REQ-0000003", "run-2", "created", None, "a" * 32, "LSC0001", "created", 3),
    ]


def test_a_retried_replay_keeps_its_rows_and_skips_rows_another_run_holds(source: SourceTable) -> None:
    source.insert_requests(sample_requests(3))
    source.claim("busy-run", limit=1, chunk_size=1, lease_seconds=600)  # REQ-1 in flight elsewhere
    first = source.replay("run-2", ["REQ-0000001", "REQ-0000002"], lease_seconds=60)
    assert (first.busy, [r.request_id for r in first.reset]) == (["REQ-0000001"], ["REQ-0000002"])
    assert status_of(source, "REQ-0000001")[1] == "busy-run"
    again = source.replay("run-2", ["REQ-0000002"], lease_seconds=60)
    assert (again.held, again.reset) == (["REQ-0000002"], [])
    with source._transaction() as cursor:
        cursor.execute(f"SELECT COUNT(*) FROM {source.replays_table}")
        assert cursor.fetchone()[0] == 1


def test_replay_of_an_unknown_request_id_changes_nothing(source: SourceTable) -> None:
    source.insert_requests(sample_requests(2))
    source.claim("run-1", limit=2, chunk_size=2, lease_seconds=60)
    finish(source, "run-1", "REQ-0000001", SyncStatus.REJECTED, error="bad")
    before = snapshot(source)
    with pytest.raises(ValueError, match=r"request_ids not found in \S+: NOPE-1"):
        source.replay("run-2", ["REQ-0000001", "NOPE-1"], lease_seconds=60)
    assert snapshot(source) == before


def test_oldest_pending_age(source: SourceTable) -> None:
    assert source.oldest_pending_age() is None
    source.insert_requests(sample_requests(2))
    assert 0 <= (source.oldest_pending_age() or 0) < 60
    if source.dialect == "postgres":
        statement = (f"UPDATE {source.table} SET created_at = now() - interval '3 hours' "
                     "WHERE request_id = 'REQ-0000001'")
    elif source.dialect == "mysql":
        statement = (f"UPDATE {source.table} SET created_at = UTC_TIMESTAMP(6) - INTERVAL 3 HOUR "
                     "WHERE request_id = 'REQ-0000001'")
    else:
        statement = (f"UPDATE {source.table} SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-3 hours') "
                     "WHERE request_id = 'REQ-0000001'")
    with source._transaction() as cursor:
        cursor.execute(statement)
    assert 3 * 3600 - 60 < (source.oldest_pending_age() or 0) < 3 * 3600 + 60


def test_created_request_ids_and_current_schema(source: SourceTable) -> None:
    source.insert_requests(sample_requests(3))
    source.claim("run-1", limit=3, chunk_size=3, lease_seconds=60)
    finish(source, "run-1", "REQ-0000002", SyncStatus.CREATED, sys_id="b" * 32, action="adopted")
    finish(source, "run-1", "REQ-0000003", SyncStatus.CREATED, sys_id="c" * 32, action="created")
    assert source.created_request_ids("run-1", 10) == ["REQ-0000002", "REQ-0000003"]
    assert source.created_request_ids("run-1", 1) == ["REQ-0000002"]
    assert source.current_schema() == ("public" if source.dialect == "postgres" else None)
