"""End to end: a rate-limit window used up in the middle of the load makes the real DAG's load task defer (the task
frees its worker, keeps its claim) and resume once the window reset, finishing every row exactly once. The
emulator's hourly window is shortened to seconds, and the DAG's ``defer_after_seconds`` with it."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.e2e.test_dag_run import check_exactly_once
from ticketsync.source import SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS, INVALID_EVERY = 30, 15
WINDOW_REQUESTS, WINDOW_SECONDS = 20, 10  # the first window takes the look-up and 19 POSTs of the 28 valid rows
DEFERRED = re.compile(r"deferring the load of \S+ until (?P<moment>\S+) \(in [^;]+; leg 1\): (?P<held>\d+) rows keep")


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str]]:
    with fresh_source_database(pg_database, "defer") as (source, params):
        yield source, airflow_conn_json(params)


def load_xcom(airflow_home: Path, run_id: str) -> dict[str, int]:
    with sqlite3.connect(airflow_home / "airflow.db") as db:
        [(value,)] = db.execute(
            "SELECT value FROM xcom WHERE dag_id = 'servicenow_ticket_sync' AND task_id = 'load' "
            "AND key = 'return_value' AND run_id = ?", (run_id,),
        ).fetchall()
    loaded = json.loads(value)
    return dict(json.loads(loaded) if isinstance(loaded, str) else loaded)


def test_a_used_up_rate_limit_window_defers_the_load_which_resumes_and_finishes_exactly_once(
    fresh_airflow_home: Path, pg_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = pg_source
    requests = list(sample_requests(ROWS, invalid_every=INVALID_EVERY))
    source.insert_requests(requests)
    invalid_ids = {r["request_id"] for i, r in enumerate(requests, start=1) if i % INVALID_EVERY == 0}
    window = ("--rate-limit-window-requests", str(WINDOW_REQUESTS), "--rate-limit-window", str(WINDOW_SECONDS),
              "--latency-ms", "50")
    with EmulatorProcess(tmp_path / "emulator", *window) as emulator:
        airflow = LocalAirflow(home=fresh_airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(timeout=10),
        })
        log_file = tmp_path / "run.log"
        code = airflow.run_dag(log_file, conf={"defer_after_seconds": 3}, timeout=300)
        log = log_file.read_text()
        assert code == 0, log[-5000:]

        # Every valid row is exactly one case, written back; the invalid ones were rejected and never sent.
        outcome = check_exactly_once(source, emulator, requests, invalid_ids)
        assert outcome == {"created_created": ROWS - len(invalid_ids), "rejected": len(invalid_ids)}

        # The load deferred once (the task went to the deferred state and its trigger ran), then resumed.
        deferred = [DEFERRED.search(line) for line in log.splitlines() if "deferring the load of" in line]
        assert len(deferred) == 1, log[-5000:]
        match = deferred[0]
        assert match is not None
        assert int(match["held"]) > 0
        assert "[DAG TEST] running trigger in line" in log
        assert "resuming the load (leg 2)" in log
        with sqlite3.connect(fresh_airflow_home / "airflow.db") as db:
            triggers = db.execute("SELECT classpath FROM trigger").fetchall()
        assert ("ticketsync.triggers.resume.ResumeLoadTrigger",) in triggers

        # Nothing was sent while the load was deferred: no request between the window's first 429 (and the
        # answers already on their way) and the moment it resumed, and the next leg's requests came after it.
        moment = datetime.fromisoformat(match["moment"]).timestamp()
        answered = emulator.requests()
        first_429 = min(entry["at"] for entry in answered if entry["status"] == 429)
        assert [entry for entry in answered if first_429 + 1 < entry["at"] < moment] == []
        assert any(entry["at"] >= moment and entry["method"] == "POST" for entry in answered)
        stats = emulator.stats()
        assert stats["by_status"]["201"] == ROWS - len(invalid_ids)
        assert stats["faults"]["rate_limit"] >= 1

        # XCom carries the counts of both legs together (the invalid rows were rejected by transform, before).
        run_id = re.search(r"run_id=(\S+?)[,\s]", log)
        counts = load_xcom(fresh_airflow_home, run_id[1] if run_id else "")
        assert (counts["created"], counts["taken"], counts["failed"], counts["still_pending"]) == (
            ROWS - len(invalid_ids), ROWS - len(invalid_ids), 0, 0,
        )
        assert counts["rate_limited"] >= 1
