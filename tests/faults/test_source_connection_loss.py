"""The source database drops the loader's connection mid-load (real PostgreSQL, ``pg_terminate_backend`` from
another connection): the load reconnects and goes on, or, if the database stays away, fails with the original error
(the clean-up's own errors are logged, not raised over it); either way the next attempt ends with every row created
exactly once."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_ADMIN_DSN
from tests.faults.conftest import conn_json
from tests.support.faults import TABLE, Backlog, save_result, verdict
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.local import EmulatorProcess, LocalAirflow

pytestmark = pytest.mark.integration

TOKEN = "servicenow_ticket_sync:connection-loss"
APP = "ticketsync-loader-under-test"
SETTINGS = LoadSettings(chunk_size=25, max_in_flight=4, backoff_base=0.02, backoff_cap=0.1, flush_interval=0.1)


@pytest.fixture
def emulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(user="admin", password="pw-loss")) as running:
        running.set_faults(latency_ms=15)
        monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_LOSS", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": running.port, "schema": "http",
            "login": "admin", "password": "pw-loss", "extra": {"timeout": 5},
        }))
        yield running


def loader_source(params: dict[str, Any]) -> SourceTable:
    """The loader's own source table, on a connection we can find in pg_stat_activity by its application_name."""
    return SourceTable(lambda: psycopg.connect(**params, application_name=APP), Dialect.POSTGRES)


def created(admin: psycopg.Connection[Any], dbname: str) -> int:
    with psycopg.connect(PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={dbname}"), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM ticket_requests WHERE status = 'created'").fetchone()
    return int(row[0]) if row else 0


def terminate(admin: psycopg.Connection[Any], dbname: str, application: str | None = APP) -> int:
    """Terminate the backends of ``dbname`` (only the loader's, when ``application`` is given); returns how many."""
    query = ("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
             "WHERE datname = %s AND pid <> pg_backend_pid()")
    args: list[Any] = [dbname]
    if application:
        query += " AND application_name = %s"
        args.append(application)
    row = admin.execute(query, args).fetchone()
    return int(row[0]) if row else 0


class Killer(threading.Thread):
    """Terminates the loader's backend each time the created count passes one of ``marks``."""

    def __init__(self, admin: psycopg.Connection[Any], dbname: str, marks: list[int],
                 before: Callable[[], None] = lambda: None, application: str | None = APP) -> None:
        super().__init__(daemon=True)
        self.admin, self.dbname, self.marks, self.before, self.application = admin, dbname, marks, before, application
        self.terminated: list[tuple[int, int]] = []  # (created at the time, backends terminated)
        self.stop = threading.Event()

    def run(self) -> None:
        marks = list(self.marks)
        while marks and not self.stop.wait(0.02):
            now = created(self.admin, self.dbname)
            if now >= marks[0]:
                marks.pop(0)
                self.before()
                killed = terminate(self.admin, self.dbname, self.application)
                self.terminated.append((now, killed))


@pytest.fixture
def admin() -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        yield conn


def test_the_load_reconnects_when_its_backend_is_terminated_and_creates_each_row_once(
    pg_source: tuple[SourceTable, dict[str, Any]], emulator: RunningEmulator, admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    seed, params = pg_source
    backlog = Backlog(300, invalid_every=15)
    seed.insert_requests(backlog.requests())
    killer = Killer(admin, params["dbname"], [40, 120, 200])
    hook = ServiceNowHook("servicenow_loss", pool_size=SETTINGS.max_in_flight)
    caplog.set_level(logging.WARNING, logger="ticketsync")
    attempts = 0
    with loader_source(params) as source:
        source.claim(TOKEN, limit=10_000, chunk_size=500, lease_seconds=600)
        killer.start()
        while attempts < 3:  # as Airflow's task retries would
            attempts += 1
            try:
                if CaseLoader(hook, source, TOKEN, SETTINGS).run().still_pending == 0:
                    break
            except psycopg.Error:
                continue
    killer.stop.set()
    killer.join()
    hook.close()
    result = verdict(seed, emulator.store.records(TABLE), backlog)
    save_result("connection-loss", "loader, 3 backend terminations", {
        **result.as_dict(), "attempts": attempts, "terminations": len(killer.terminated),
        "requests": emulator.stats()["requests_total"],
    })
    # The loader's backends (its reader and its write-back thread's connection) were terminated three times.
    assert len(killer.terminated) == 3
    assert all(killed >= 1 for _, killed in killer.terminated), killer.terminated
    assert not result.problems, result.problems
    assert (result.pending, result.duplicates) == (0, 0)
    assert result.created + result.adopted == len(backlog.valid_ids)
    assert attempts == 1, "the load should have reconnected, not failed"
    assert sum("connection was lost" in record.message for record in caplog.records) >= 3


def test_a_database_that_stays_away_fails_the_load_with_the_original_error_and_the_retry_finishes(
    pg_source: tuple[SourceTable, dict[str, Any]], emulator: RunningEmulator, admin: psycopg.Connection[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refuses new connections after the kill, so reconnecting fails: the load raises the connection
    error (not a secondary error from its clean-up, which is logged); the next attempt finds every row."""
    seed, params = pg_source
    dbname = params["dbname"]
    backlog = Backlog(200, invalid_every=20)
    seed.insert_requests(backlog.requests())
    seed.close()

    def refuse_connections() -> None:
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS false')

    killer = Killer(admin, dbname, [60], before=refuse_connections)
    hook = ServiceNowHook("servicenow_loss", pool_size=SETTINGS.max_in_flight)
    caplog.set_level(logging.WARNING, logger="ticketsync")
    with loader_source(params) as source:
        source.claim(TOKEN, limit=10_000, chunk_size=500, lease_seconds=600)
        killer.start()
        with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
            CaseLoader(hook, source, TOKEN, SETTINGS).run()
        killer.join()
        cleanup_errors = [r for r in caplog.records if "clean-up after" in r.message]
        admin.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS true')
        at_failure = len(emulator.store.records(TABLE))
        written_back = created(admin, dbname)
        counts = CaseLoader(hook, source, TOKEN, SETTINGS).run()  # the task retry
    hook.close()
    result = verdict(seed, emulator.store.records(TABLE), backlog)
    save_result("connection-loss", "loader, database refusing connections until the retry", {
        **result.as_dict(), "attempts": 2, "written_back_at_failure": written_back,
        "records_at_failure": at_failure, "adopted_by_retry": counts.adopted,
        "requests": emulator.stats()["requests_total"],
    })
    assert killer.terminated
    assert killer.terminated[0][1] >= 1
    assert cleanup_errors, "the clean-up's own failure should have been logged"
    assert not result.problems, result.problems
    assert (result.pending, result.duplicates) == (0, 0)
    assert result.created + result.adopted == len(backlog.valid_ids)
    # The POSTs answered after the last write-back were created but not recorded: the retry adopted every one of
    # them and created only the rest. The failing load stopped sending (queued POSTs cancelled) well before the end.
    assert counts.adopted == at_failure - written_back
    assert counts.created == len(backlog.valid_ids) - at_failure
    assert at_failure < len(backlog.valid_ids) - SETTINGS.chunk_size


@pytest.mark.slow
def test_the_dag_survives_its_source_backends_being_terminated_mid_load(
    airflow_home: Path, pg_source: tuple[SourceTable, dict[str, Any]], admin: psycopg.Connection[Any],
    tmp_path: Path,
) -> None:
    """Every backend of the source database is terminated three times while the real DAG loads."""
    source, params = pg_source
    backlog = Backlog(400, invalid_every=20)
    source.insert_requests(backlog.requests())
    source.close()
    with EmulatorProcess(tmp_path / "emulator", "--latency-ms", "30") as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn_json(params), "servicenow_default": emulator.connection(),
        })
        killer = Killer(admin, params["dbname"], [50, 150, 250], application=None)
        killer.start()
        codes = []
        for run in range(1, 4):
            codes.append(airflow.run_dag(tmp_path / f"run{run}.log", conf={"max_in_flight": 4}))
            if codes[-1] == 0:
                break
        killer.stop.set()
        killer.join()
        result = verdict(source, emulator.records(TABLE), backlog)
        requests = emulator.stats()["requests_total"]
    log = (tmp_path / "run1.log").read_text()
    save_result("connection-loss", "DAG run, all source backends terminated 3 times", {
        **result.as_dict(), "attempts": len(codes), "terminations": len(killer.terminated), "requests": requests,
    })
    assert len(killer.terminated) == 3, killer.terminated
    assert codes[-1] == 0, (tmp_path / f"run{len(codes)}.log").read_text()[-5000:]
    assert "connection was lost" in log
    assert not result.problems, result.problems
    assert (result.pending, result.duplicates, result.failed) == (0, 0, 0)
    assert result.created + result.adopted == len(backlog.valid_ids)
