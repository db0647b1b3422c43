"""The source database drops the loader's connection mid-load (real PostgreSQL with ``pg_terminate_backend``, real
MariaDB with ``KILL``, from another connection): the load reconnects and goes on, or, if the database stays away,
fails with the original error (the clean-up's own errors are logged, not raised over it); either way the next attempt
ends with every row created exactly once."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pymysql
import pytest

from tests.conftest import (
    PG_ADMIN_DSN,
    fresh_mariadb_database,
    mariadb_admin,
    mariadb_conn_json,
    mariadb_connector,
)
from tests.faults.conftest import conn_json
from tests.support.faults import TABLE, Backlog, save_result, verdict
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import Dialect, SourceTable, is_connection_error
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


class Server(Protocol):
    """One source database under test and the admin's levers on it."""

    seed: SourceTable  # the producer's handle (never terminated by ``terminate(loader_only=True)``)
    refused: str  # what the driver's error says when the database refuses new connections
    driver_error: type[Exception]

    def loader_source(self) -> SourceTable: ...
    def airflow_conn(self) -> str: ...
    def created(self) -> int: ...
    def terminate(self, *, loader_only: bool) -> int: ...
    def refuse_connections(self) -> None: ...
    def allow_connections(self) -> None: ...


class Postgres:
    refused = "not currently accepting connections"
    driver_error = psycopg.Error

    def __init__(self, seed: SourceTable, params: dict[str, Any], admin: psycopg.Connection[Any]) -> None:
        self.seed, self.params, self.admin, self.dbname = seed, params, admin, params["dbname"]

    def loader_source(self) -> SourceTable:
        """The loader's own source table, on a connection we can find in pg_stat_activity by its application_name."""
        return SourceTable(lambda: psycopg.connect(**self.params, application_name=APP), Dialect.POSTGRES)

    def airflow_conn(self) -> str:
        return conn_json(self.params)

    def created(self) -> int:
        with psycopg.connect(PG_ADMIN_DSN.replace("dbname=postgres", f"dbname={self.dbname}"),
                             autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM ticket_requests WHERE status = 'created'").fetchone()
        return int(row[0]) if row else 0

    def terminate(self, *, loader_only: bool) -> int:
        """Terminate the backends of the database (only the loader's, when ``loader_only``); returns how many."""
        query = ("SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                 "WHERE datname = %s AND pid <> pg_backend_pid()")
        args: list[Any] = [self.dbname]
        if loader_only:
            query += " AND application_name = %s"
            args.append(APP)
        row = self.admin.execute(query, args).fetchone()
        return int(row[0]) if row else 0

    def refuse_connections(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS false')

    def allow_connections(self) -> None:
        self.admin.execute(f'ALTER DATABASE "{self.dbname}" ALLOW_CONNECTIONS true')


class MariaDB:
    """The loader (and the DAG) connect as their own user, so ``KILL`` finds exactly their connections and
    ``ACCOUNT LOCK`` refuses their new ones; the seed connects as root."""

    refused = "locked"
    driver_error = pymysql.Error

    def __init__(self, seed: SourceTable, params: dict[str, Any], user: str,
                 admin: pymysql.connections.Connection[Any]) -> None:
        self.seed, self.user, self.admin = seed, user, admin
        self.params = {**params, "user": user, "password": "loader-pw"}
        self.database = params["database"]

    def loader_source(self) -> SourceTable:
        return SourceTable(mariadb_connector(self.params), Dialect.MYSQL)

    def airflow_conn(self) -> str:
        return mariadb_conn_json(self.params)

    def _admin(self, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """On one autocommit connection, as the PostgreSQL admin: the killer must act within milliseconds."""
        with self.admin.cursor() as cursor:
            cursor.execute(statement, args or None)
            return list(cursor.fetchall())

    def created(self) -> int:
        rows = self._admin(f"SELECT count(*) FROM `{self.database}`.ticket_requests WHERE status = 'created'")
        return int(rows[0][0])

    def terminate(self, *, loader_only: bool) -> int:
        """``KILL`` every connection of the loader's user (the seed's root connection is never the loader's)."""
        ids = [int(row[0]) for row in self._admin("SELECT id FROM information_schema.processlist WHERE user = %s",
                                                  (self.user,))]
        killed = 0
        for thread_id in ids:
            try:
                self._admin(f"KILL CONNECTION {thread_id}")
                killed += 1
            except pymysql.err.OperationalError:  # it ended by itself meanwhile (1094: unknown thread id)
                pass
        return killed

    def refuse_connections(self) -> None:
        self._admin(f"ALTER USER '{self.user}'@'%' ACCOUNT LOCK")

    def allow_connections(self) -> None:
        self._admin(f"ALTER USER '{self.user}'@'%' ACCOUNT UNLOCK")


@pytest.fixture(params=["postgres", "mariadb"])
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    """A fresh source database holding ``ticket_requests`` on each server dialect, with its admin levers."""
    if request.param == "postgres":
        seed, params = request.getfixturevalue("pg_source")
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as admin:
            yield Postgres(seed, params, admin)
        return
    mariadb_database = request.getfixturevalue("mariadb_database")
    user = f"ts_loader_{uuid.uuid4().hex[:8]}"
    with fresh_mariadb_database(mariadb_database, "faults") as (seed, params):
        admin = mariadb_admin()
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE USER '{user}'@'%' IDENTIFIED BY 'loader-pw'")
            cursor.execute(f"GRANT ALL ON `{params['database']}`.* TO '{user}'@'%'")
        try:
            yield MariaDB(seed, params, user, admin)
        finally:
            with admin.cursor() as cursor:
                cursor.execute(f"DROP USER IF EXISTS '{user}'@'%'")
            admin.close()


class Killer(threading.Thread):
    """Terminates the loader's connections each time the created count passes one of ``marks``."""

    def __init__(self, server: Server, marks: list[int], before: Callable[[], None] = lambda: None,
                 loader_only: bool = True) -> None:
        super().__init__(daemon=True)
        self.server, self.marks, self.before, self.loader_only = server, marks, before, loader_only
        self.terminated: list[tuple[int, int]] = []  # (created at the time, backends terminated)
        self.at: list[float] = []  # time.monotonic() of each termination
        self.stop = threading.Event()

    def run(self) -> None:
        marks = list(self.marks)
        while marks and not self.stop.wait(0.02):
            now = self.server.created()
            if now >= marks[0]:
                marks.pop(0)
                self.before()
                killed = self.server.terminate(loader_only=self.loader_only)
                self.terminated.append((now, killed))
                self.at.append(time.monotonic())


def test_the_load_reconnects_when_its_backend_is_terminated_and_creates_each_row_once(
    server: Server, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture,
) -> None:
    seed = server.seed
    backlog = Backlog(300, invalid_every=15)
    seed.insert_requests(backlog.requests())
    killer = Killer(server, [40, 120, 200])
    hook = ServiceNowHook("servicenow_loss", pool_size=SETTINGS.max_in_flight)
    caplog.set_level(logging.WARNING, logger="ticketsync")
    attempts = 0
    with server.loader_source() as source:
        source.claim(TOKEN, limit=10_000, chunk_size=500, lease_seconds=600)
        killer.start()
        while attempts < 3:  # as Airflow's task retries would
            attempts += 1
            try:
                if CaseLoader(hook, source, TOKEN, SETTINGS).run().still_pending == 0:
                    break
            except server.driver_error:
                continue
    killer.stop.set()
    killer.join()
    hook.close()
    result = verdict(seed, emulator.store.records(TABLE), backlog)
    save_result("connection-loss", f"{source.dialect}: loader, 3 backend terminations", {
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
    server: Server, emulator: RunningEmulator, caplog: pytest.LogCaptureFixture,
) -> None:
    """The database refuses new connections after the kill, so reconnecting fails: the load raises the connection
    error (not a secondary error from its clean-up, which is logged); the next attempt finds every row."""
    seed = server.seed
    # 570 valid rows, the kill at 60 created: the load must notice that the database is gone and stop sending well
    # before the end. The runway is wide (about 2.5 s of POSTs here) because a loaded box can take half a second to
    # lock the account and kill the connections; with 200 rows a CI run once sent 167 of 190 before it stopped.
    backlog = Backlog(600, invalid_every=20)
    seed.insert_requests(backlog.requests())
    seed.close()
    killer = Killer(server, [60], before=server.refuse_connections)
    hook = ServiceNowHook("servicenow_loss", pool_size=SETTINGS.max_in_flight)
    caplog.set_level(logging.WARNING, logger="ticketsync")
    with server.loader_source() as source:
        source.claim(TOKEN, limit=10_000, chunk_size=500, lease_seconds=600)
        killer.start()
        with pytest.raises(server.driver_error, match=server.refused):
            CaseLoader(hook, source, TOKEN, SETTINGS).run()
        killer.join()
        cleanup_errors = [r for r in caplog.records if "clean-up after" in r.message]
        server.allow_connections()
        at_failure = len(emulator.store.records(TABLE))
        written_back = server.created()
        counts = CaseLoader(hook, source, TOKEN, SETTINGS).run()  # the task retry
    hook.close()
    result = verdict(seed, emulator.store.records(TABLE), backlog)
    save_result("connection-loss", f"{source.dialect}: loader, database refusing connections until the retry", {
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


_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT")


def task_failures(log: str) -> list[str]:
    """Each "Task failed with exception" of a ``dags test`` log with its traceback (to the next log record)."""
    failures: list[str] = []
    lines = log.splitlines()
    for index, line in enumerate(lines):
        if "Task failed with exception" not in line:
            continue
        end = next((i for i in range(index + 1, len(lines)) if _TIMESTAMP.match(lines[i])), len(lines))
        failures.append("\n".join(lines[index:end]))
    return failures


def _clip(failure: str, keep: int = 2500) -> str:
    """A failure's first line (when the task failed) and the end of its traceback (the exceptions)."""
    if len(failure) <= keep:
        return failure
    return failure.split("\n", 1)[0] + "\n…\n" + failure[-keep:]


def runs_story(codes: list[int], spans: list[tuple[float, float]], killer: Killer, logs: list[str]) -> str:
    """What happened, for an assertion message: each run's exit code and the terminations that fell in it, and
    every task failure of a failed run (or the end of its log when no task failed: ``dags test`` itself did)."""
    parts = []
    for run, (code, (start, end), log) in enumerate(zip(codes, spans, logs, strict=True), start=1):
        kills = [killer.terminated[i] for i, at in enumerate(killer.at) if start <= at <= end]
        parts.append(f"run {run}: exit {code}, terminations (created, killed) {kills}, "
                     f"{log.count('connection was lost')} 'connection was lost' lines")
        if code:
            failures = task_failures(log)
            parts += [_clip(failure) for failure in failures] or [f"(no task failed; end of log)\n{log[-3000:]}"]
    between = [killer.terminated[i] for i, at in enumerate(killer.at)
               if not any(start <= at <= end for start, end in spans)]
    if between:
        parts.append(f"terminations between runs (created, killed): {between}")
    return "\n".join(parts)


@pytest.mark.slow
def test_the_dag_survives_its_source_backends_being_terminated_mid_load(
    airflow_home: Path, server: Server, tmp_path: Path,
) -> None:
    """Every connection of the DAG to the source database is terminated three times while the real DAG loads.

    A run may fail for a reason that is not the source database (a loaded box can make a task fail three tries on
    ServiceNow timeouts, say): the next run finishes the load, as the next scheduled run would. A run never fails
    on a source database error, and the terminations are survived by reconnecting, in whichever run they fell."""
    source = server.seed
    backlog = Backlog(400, invalid_every=20)
    source.insert_requests(backlog.requests())
    source.close()
    with EmulatorProcess(tmp_path / "emulator", "--latency-ms", "30") as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": server.airflow_conn(), "servicenow_default": emulator.connection(),
        })
        killer = Killer(server, [50, 150, 250], loader_only=False)
        killer.start()
        codes: list[int] = []
        spans: list[tuple[float, float]] = []
        for run in range(1, 4):
            started = time.monotonic()
            codes.append(airflow.run_dag(tmp_path / f"run{run}.log", conf={"max_in_flight": 4}))
            spans.append((started, time.monotonic()))
            if codes[-1] == 0:
                break
        killer.stop.set()
        killer.join()
        result = verdict(source, emulator.records(TABLE), backlog)
        requests = emulator.stats()["requests_total"]
    logs = [(tmp_path / f"run{run}.log").read_text(errors="replace") for run in range(1, len(codes) + 1)]
    story = runs_story(codes, spans, killer, logs)
    save_result("connection-loss", f"{source.dialect}: DAG run, all source backends terminated 3 times", {
        **result.as_dict(), "attempts": len(codes), "terminations": len(killer.terminated), "requests": requests,
    })
    assert len(killer.terminated) == 3, story
    assert codes[-1] == 0, story + "\n" + logs[-1][-5000:]
    # the runs that failed did not fail on the source database (its errors are the pymysql.err… / psycopg… classes)
    source_failures = [failure for log, code in zip(logs, codes, strict=True) if code for failure in task_failures(log)
                       if re.search(r"\b(pymysql|psycopg2?)\.", failure)]
    assert not source_failures, story
    assert any("connection was lost" in log for log in logs), story
    assert not result.problems, (result.problems, story)
    assert (result.pending, result.duplicates, result.failed) == (0, 0, 0), story
    assert result.created + result.adopted == len(backlog.valid_ids), story


def test_mariadb_errors_that_mean_a_lost_connection_are_told_from_those_that_do_not(
    mariadb_database: dict[str, Any],
) -> None:
    """``KILL`` of a connection makes its next statement fail with a lost-connection error (and leaves it closed);
    a lock wait timeout is an ``OperationalError`` too, but the connection is fine and must not be dropped."""
    victim = mariadb_connector(mariadb_database)()
    with victim.cursor() as cursor:
        cursor.execute("SELECT CONNECTION_ID()")
        thread_id = int(cursor.fetchone()[0])
    admin = mariadb_admin()
    with admin.cursor() as cursor:
        cursor.execute(f"KILL CONNECTION {thread_id}")
    with pytest.raises(pymysql.Error) as lost, victim.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert is_connection_error(lost.value), lost.value
    victim.close()

    table = f"lock_{uuid.uuid4().hex[:8]}"
    holder, waiter = (mariadb_connector(mariadb_database)() for _ in range(2))
    try:
        with holder.cursor() as cursor:
            cursor.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY)")
            cursor.execute(f"INSERT INTO {table} VALUES (1)")
            holder.commit()
            cursor.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
        with waiter.cursor() as cursor:
            cursor.execute("SET SESSION innodb_lock_wait_timeout = 1")
            with pytest.raises(pymysql.err.OperationalError) as timeout:
                cursor.execute(f"SELECT id FROM {table} WHERE id = 1 FOR UPDATE")
            assert timeout.value.args[0] == 1205
            assert not is_connection_error(timeout.value)
            cursor.execute("SELECT 1")  # the connection is still good
    finally:
        holder.rollback()
        waiter.rollback()
        with holder.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {table}")
        holder.close()
        waiter.close()
        admin.close()
