"""Several OS processes, each with its own connection, claim one backlog at once (as loaders on several workers
would), then send and write back what they hold: on every dialect each row is claimed by exactly one of them, and
written back once, by its holder."""

from __future__ import annotations

import multiprocessing
import sqlite3
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import mariadb_connector
from ticketsync.models import SyncStatus
from ticketsync.source import Dialect, Outcome, SourceTable
from ticketsync_dev.samples import sample_requests

pytestmark = pytest.mark.integration

ROWS = 2_000
PROCESSES = 6
CHUNK = 20


def _connector(dialect: Dialect, where: Any) -> Callable[[], Any]:
    if dialect is Dialect.SQLITE:
        return lambda: sqlite3.connect(where, timeout=30)
    if dialect is Dialect.MYSQL:
        return mariadb_connector(where)
    return lambda: psycopg.connect(**where)


def claimer(dialect: Dialect, where: Any, table: str, token: str, start: Any) -> tuple[str, list[int], int]:
    """One loader process: claim what it can, then take its chunks and write each row back as created."""
    start.wait(120)  # a barrier: every process has started and connects at the same moment
    with SourceTable(_connector(dialect, where), dialect, table) as source:
        source.claim(token, limit=ROWS, chunk_size=CHUNK, lease_seconds=600)
        taken: list[int] = []
        after = 0
        while rows := source.take_chunk(token, after=after, size=CHUNK, lease_seconds=600):
            taken += [row.id for row in rows]
            after = rows[-1].id
        outcomes = [Outcome(row_id, SyncStatus.CREATED, sys_id=f"{row_id:032x}", action="created", attempts_made=1)
                    for row_id in taken]
        written = source.write_outcomes(token, outcomes)
    return token, taken, written


@pytest.fixture(params=[Dialect.SQLITE, Dialect.POSTGRES, Dialect.MYSQL], ids=["sqlite", "postgres", "mariadb"])
def shared(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[SourceTable, Any]]:
    """A fresh table on each dialect, and what a process needs to open its own connection to it."""
    dialect: Dialect = request.param
    where: Any = {
        Dialect.SQLITE: lambda: tmp_path / "source.db",
        Dialect.POSTGRES: lambda: request.getfixturevalue("pg_database"),
        Dialect.MYSQL: lambda: request.getfixturevalue("mariadb_database"),
    }[dialect]()
    source = SourceTable(_connector(dialect, where), dialect, table=f"cc_{uuid.uuid4().hex[:8]}")
    source.ensure_schema()
    yield source, where
    source.close()


def test_concurrent_loader_processes_claim_each_row_exactly_once(shared: tuple[SourceTable, Any]) -> None:
    source, where = shared
    source.insert_requests(sample_requests(ROWS))
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(PROCESSES) as pool:
        start = manager.Barrier(PROCESSES)
        pending = [pool.apply_async(claimer, (source.dialect, where, source.table, f"loader-{i}", start))
                   for i in range(PROCESSES)]
        results = [job.get(timeout=300) for job in pending]

    taken = {token: ids for token, ids, _ in results}
    every_id = [row_id for ids in taken.values() for row_id in ids]
    assert len(every_id) == ROWS, "a row was taken by two loaders, or by none"
    assert len(set(every_id)) == ROWS
    assert all(written == len(taken[token]) for token, _, written in results)
    per_loader = Counter({token: len(ids) for token, ids in taken.items()})
    if source.dialect is not Dialect.SQLITE:
        # The servers claim side by side (SKIP LOCKED); SQLite serialises writers, and on a busy machine one process
        # may drain the whole backlog before the others start: exactly once is what holds there.
        assert sum(1 for ids in taken.values() if ids) >= 2, f"the loaders did not run at once: {per_loader}"
    with source._transaction() as cursor:
        cursor.execute(f"SELECT id, status, claim_token, attempts FROM {source.table}")
        state = {int(row[0]): (row[1], row[2], int(row[3])) for row in cursor.fetchall()}
    holder = {row_id: token for token, ids in taken.items() for row_id in ids}
    assert {row_id: (status, token, attempts) for row_id, (status, token, attempts) in state.items()} == {
        row_id: ("created", holder[row_id], 1) for row_id in state
    }
    print(f"\n{source.dialect}: {ROWS} rows, {PROCESSES} processes, rows per loader "
          f"{sorted(per_loader.values())}, each claimed and written back exactly once")
