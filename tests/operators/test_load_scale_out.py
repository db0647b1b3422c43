"""Several loaders at once, each its own OS process with its own hook and source connection, against one
PostgreSQL backlog and the emulator as its own process: every valid row becomes exactly one record.

Two ways of sharing a backlog: separate runs (claim tokens) competing through the claim, and the N shards of one
run's claim (the mapped ``load``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from ticketsync.source import SourceTable
from ticketsync_dev.local import REPO, EmulatorProcess
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
ROWS, INVALID_EVERY = 1200, 20
# Latency so that the loaders overlap; faults so that adoption after a lost answer happens across processes too.
EMULATOR = ("--latency-ms", "10", "--cut-after-commit", "0.02", "--error-503", "0.02", "--seed", "31")


@pytest.fixture
def backlog(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    """A fresh database holding ``ticket_requests`` with the sample backlog, and its connection JSON."""
    with fresh_source_database(pg_database, "scale") as (source, params):
        source.insert_requests(sample_requests(ROWS, invalid_every=INVALID_EVERY))
        yield source, airflow_conn_json(params)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    with EmulatorProcess(tmp_path / "emulator", *EMULATOR) as running:
        yield running


def run_loaders(tmp_path: Path, conn: str, emulator: EmulatorProcess, argv: list[list[str]]) -> list[dict[str, Any]]:
    """Start one process per argument list, release them together once all are ready, and collect their JSON."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")}
    env.update({
        "AIRFLOW_CONN_TICKET_SOURCE": conn,
        "AIRFLOW_CONN_SERVICENOW_DEFAULT": emulator.connection(timeout=3),
        "AIRFLOW_HOME": str(tmp_path / "airflow"),
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(REPO)]),
    })
    go = tmp_path / "go"
    outs = [tmp_path / f"loader-{number}.json" for number in range(len(argv))]
    processes = []
    for out, args in zip(outs, argv, strict=True):
        log = (tmp_path / f"{out.stem}.log").open("wb")
        command = [sys.executable, "-m", "tests.support.loader_process", *args, "--go", str(go), "--out", str(out)]
        processes.append(subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT))
    try:
        deadline = time.monotonic() + 180
        while not all(out.with_suffix(".ready").exists() for out in outs):
            failed = [p.args for p in processes if p.poll() is not None]
            assert not failed, f"a loader exited before starting: {failed}"
            assert time.monotonic() < deadline, "the loaders did not start in time"
            time.sleep(0.05)
        go.touch()
        for process, out in zip(processes, outs, strict=True):
            code = process.wait(timeout=300)
            assert code == 0, (tmp_path / f"{out.stem}.log").read_text()[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [json.loads(out.read_text()) for out in outs]


def assert_ran_at_the_same_time(results: list[dict[str, Any]]) -> None:
    assert max(r["started"] for r in results) < min(r["finished"] for r in results), "the loaders did not overlap"


def assert_exactly_once(source: SourceTable, emulator: EmulatorProcess) -> dict[str, int]:
    """One record per valid row's correlation id, its sys_id written back; invalid rows rejected, never sent."""
    records = emulator.records(TABLE)
    per_correlation = Counter(record["correlation_id"] for record in records)
    assert [key for key, n in per_correlation.items() if n > 1] == [], "duplicate records"
    by_sys_id = {record["sys_id"]: record for record in records}
    with source._transaction() as cursor:
        cursor.execute("SELECT id, request_id, status, sys_id, number, sync_action FROM ticket_requests")
        rows = cursor.fetchall()
    assert len(rows) == ROWS
    for row_id, request_id, status, sys_id, number, _ in rows:
        if row_id % INVALID_EVERY == 0:
            assert status == "rejected", request_id
            assert request_id not in per_correlation, f"rejected row {request_id} was sent"
        else:
            assert status == "created", (request_id, status)
            assert (by_sys_id[sys_id]["correlation_id"], by_sys_id[sys_id]["number"]) == (request_id, number)
    assert len(records) == ROWS - ROWS // INVALID_EVERY
    return dict(Counter(f"{status}_{action}" if action else status for *_, status, _, _, action in rows))


def test_separate_runs_competing_for_one_backlog_create_each_row_once(
    backlog: tuple[SourceTable, str], emulator: EmulatorProcess, tmp_path: Path
) -> None:
    source, conn = backlog
    results = run_loaders(tmp_path, conn, emulator, [["runs", "--run-id", f"p{n}", "--limit", "100"] for n in range(3)])
    assert_ran_at_the_same_time(results)
    runs = [run for result in results for run in result["runs"]]
    assert all(result["runs"] for result in results), "every process won some of the backlog"
    # A row left pending by a transient error is released at once, so another run may claim it again (and look it
    # up first): claims may add up to more than the backlog, but each row ends in exactly one run's final outcome.
    assert sum(run["claimed"] for run in runs) >= ROWS
    finals = sum(run["counts"][key] for run in runs for key in ("created", "adopted", "rejected", "failed"))
    assert finals == ROWS
    outcome = assert_exactly_once(source, emulator)
    print(f"\ncompeting runs: {[len(r['runs']) for r in results]} runs per process, "
          f"{sum(run['claimed'] for run in runs)} claims, outcome {outcome}, "
          f"faults {emulator.stats()['faults']}")


def test_the_shards_of_one_run_running_at_once_create_each_row_once(
    backlog: tuple[SourceTable, str], emulator: EmulatorProcess, tmp_path: Path
) -> None:
    source, conn = backlog
    shards, token_run = 4, "sharded-run"
    assert source.claim(f"servicenow_ticket_sync:{token_run}", limit=ROWS, chunk_size=500, lease_seconds=300) == ROWS
    argv = [["shard", "--run-id", token_run, "--index", str(i), "--count", str(shards)] for i in range(shards)]
    results = run_loaders(tmp_path, conn, emulator, argv)
    assert_ran_at_the_same_time(results)
    for index, result in enumerate(results):
        # Loader i took exactly the rows with id % 4 = i (ids run 1..ROWS), no more, no fewer.
        assert result["counts"]["taken"] == sum(1 for row_id in range(1, ROWS + 1) if row_id % shards == index)
        assert result["counts"]["still_pending"] == 0
    outcome = assert_exactly_once(source, emulator)
    print(f"\n{shards} shards: taken {[r['counts']['taken'] for r in results]}, "
          f"posts {[r['counts']['posts'] for r in results]}, outcome {outcome}, faults {emulator.stats()['faults']}")
