"""Shared fixtures: throw-away PostgreSQL and MariaDB databases, source tables on every dialect, and the emulator."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pymysql
import pytest
from pymysql.constants import CLIENT

from tests.support.faults import clear_results, print_results
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.local import LocalAirflow

PG_ADMIN_DSN = os.environ.get("TICKETSYNC_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REQUIRE_POSTGRES = os.environ.get("TICKETSYNC_REQUIRE_POSTGRES") == "1" or os.environ.get("CI") == "true"
MARIADB_ADMIN = {
    "host": os.environ.get("TICKETSYNC_TEST_MARIADB_HOST", "127.0.0.1"),
    "port": int(os.environ.get("TICKETSYNC_TEST_MARIADB_PORT", "3306")),
    "user": os.environ.get("TICKETSYNC_TEST_MARIADB_USER", "root"),
    "password": os.environ.get("TICKETSYNC_TEST_MARIADB_PASSWORD", ""),
}
REQUIRE_MARIADB = os.environ.get("TICKETSYNC_REQUIRE_MARIADB") == "1" or os.environ.get("CI") == "true"


def pytest_configure(config: pytest.Config) -> None:
    """The DAG runs of the tests wait less between tries: the load backs off from 0.1 s instead of 1 s after a
    transient failure (doubling, full jitter, as in production) and task retries come 1 s apart, then 2 s, instead of
    the 2 s, then 4 s of ``LocalAirflow`` (docs/configuration.md, Environment). The faults they inject are the same.

    And their ``airflow dags test`` runs are forked from one warm Airflow process per test process
    (``ticketsync_dev.warm_airflow``): the same CLI without its 15 s start-up; ``TICKETSYNC_WARM_AIRFLOW=0`` runs
    each one cold."""
    os.environ.setdefault("TICKETSYNC_BACKOFF_BASE_SECONDS", "0.1")
    os.environ.setdefault("TICKETSYNC_RETRY_DELAY_SECONDS", "1")
    os.environ.setdefault("TICKETSYNC_WARM_AIRFLOW", "1")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Once per test session: in the pytest-xdist controller (``-n``), or in the one process of a plain run."""
    if not hasattr(session.config, "workerinput"):
        clear_results()


# The slowest test files, longest first (from `--durations` of CI runs and of single-file runs, 2026-12-01): they start
# first, so that with pytest-xdist (`make test`, --dist loadfile) the two workers end close together instead of one
# starting a long file last. Every file that runs the DAG through Airflow belongs here (each run starts Airflow, 15 s
# or more).
SLOWEST_FIRST = (  # by each file's total time in a full run (--durations=0, three workers, 2026-12-01)
    "tests/faults/test_fault_matrix.py",
    "tests/ui/test_browser.py",
    "tests/e2e/test_upgrade.py",
    "tests/faults/test_soak.py",
    "tests/faults/test_poison_rows.py",
    "tests/faults/test_kill_loop.py",
    "tests/e2e/test_case_status_run.py",
    "tests/e2e/test_scaleout.py",
    "tests/e2e/test_operations.py",
    "tests/e2e/test_dag_run.py",
    "tests/test_warm_airflow.py",
    "tests/test_loader_defer.py",
    "tests/e2e/test_secrets.py",
    "tests/operators/test_load_scale_out.py",
    "tests/faults/test_source_connection_loss.py",
    "tests/e2e/test_mapped_load.py",
    "tests/e2e/test_credit_card_sync.py",
    "tests/e2e/test_deferred_load.py",
    "tests/e2e/test_business_keys.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the files as SLOWEST_FIRST says, then the rest as collected; tests keep their order within a file."""
    rank = {path: index for index, path in enumerate(SLOWEST_FIRST)}
    root = f"{Path(__file__).resolve().parent.parent}/"
    items.sort(key=lambda item: rank.get(str(item.path).removeprefix(root), len(rank)))


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The figures the fault tests saved (``.artifacts/faults/*.json``)."""
    print_results(terminalreporter)


@pytest.fixture(scope="session")
def pg_database() -> Iterator[dict[str, Any]]:
    """A fresh PostgreSQL database for this test session, dropped at the end. In CI it must exist: no skip."""
    try:
        admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required here but unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"ticketsync_test_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    params["dbname"] = name
    try:
        yield params
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def pg_connector(params: dict[str, Any]) -> Callable[[], psycopg.Connection[Any]]:
    return lambda: psycopg.connect(**params)


def mariadb_admin() -> pymysql.connections.Connection[Any]:
    return pymysql.connect(**MARIADB_ADMIN, autocommit=True, connect_timeout=5)


@pytest.fixture(scope="session")
def mariadb_database() -> Iterator[dict[str, Any]]:
    """A fresh MariaDB database for this test session, dropped at the end. In CI it must exist: no skip."""
    try:
        admin = mariadb_admin()
    except pymysql.err.OperationalError as exc:
        if REQUIRE_MARIADB:
            pytest.fail(f"MariaDB is required here but unreachable: {exc}")
        pytest.skip(f"MariaDB unreachable: {exc}")
    name = f"ticketsync_test_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    try:
        yield {**MARIADB_ADMIN, "database": name}
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


def mariadb_connector(params: dict[str, Any]) -> Callable[[], pymysql.connections.Connection[Any]]:
    """What ``SourceTable.from_conn_id`` opens for a ``mysql`` connection (utf8mb4, UPDATE counts matched rows)."""
    return lambda: pymysql.connect(**params, charset="utf8mb4", client_flag=CLIENT.FOUND_ROWS, connect_timeout=10)


def mariadb_conn_json(params: dict[str, Any]) -> str:
    """A ``mysql`` Airflow connection to the given MariaDB database, as ``AIRFLOW_CONN_*`` reads it."""
    import json

    return json.dumps({
        "conn_type": "mysql", "host": params["host"], "port": params["port"], "login": params["user"],
        "password": params["password"], "schema": params["database"],
    })


def airflow_conn_json(params: dict[str, Any]) -> str:
    """The ``ticket_source`` connection as Airflow reads it from ``AIRFLOW_CONN_TICKET_SOURCE``."""
    import json

    return json.dumps({
        "conn_type": "postgres",
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", 5432)),
        "login": params.get("user", "postgres"),
        "schema": params["dbname"],
    })


@contextmanager
def fresh_source_database(pg_database: dict[str, Any], prefix: str) -> Iterator[tuple[SourceTable, dict[str, Any]]]:
    """A new database beside the session's, holding the default ``ticket_requests`` table (what the DAG reads);
    yields the table and the connection parameters, and drops the database afterwards."""
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"ticketsync_{prefix}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params = {**pg_database, "dbname": name}
    source = SourceTable(pg_connector(params), Dialect.POSTGRES)
    source.ensure_schema()
    try:
        yield source, params
    finally:
        source.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@contextmanager
def fresh_mariadb_database(
    mariadb_database: dict[str, Any], prefix: str
) -> Iterator[tuple[SourceTable, dict[str, Any]]]:
    """Like :func:`fresh_source_database`, on MariaDB: a new database holding ``ticket_requests``, dropped after."""
    name = f"ticketsync_{prefix}_{uuid.uuid4().hex[:8]}"
    admin = mariadb_admin()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    params = {**mariadb_database, "database": name}
    source = SourceTable(mariadb_connector(params), Dialect.MYSQL)
    source.ensure_schema()
    try:
        yield source, params
    finally:
        source.close()
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@pytest.fixture(scope="session")
def airflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one ``airflow db migrate`` of the session (per pytest-xdist worker): a home nothing runs in, cloned."""
    home = tmp_path_factory.mktemp("airflow-template")
    LocalAirflow(home=home).migrate()
    return home


@pytest.fixture(scope="session")
def airflow_home(airflow_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One Airflow home (SQLite metadata database) for every test that runs the DAG with ``dags test``."""
    home = tmp_path_factory.mktemp("airflow")
    LocalAirflow(home=home).clone_from(airflow_template)
    return home


@pytest.fixture
def fresh_airflow_home(airflow_template: Path, tmp_path: Path) -> Path:
    """An Airflow home of the test's own, with an empty metadata database (for tests that search all of it)."""
    home = tmp_path / "airflow"
    LocalAirflow(home=home).clone_from(airflow_template)
    return home


def new_source(request: pytest.FixtureRequest, dialect: Dialect, tmp_path: Path) -> SourceTable:
    """A fresh, empty ``ticket_requests`` table on ``dialect`` (its own table name in the session's database on
    PostgreSQL and MariaDB, its own file on SQLite)."""
    if dialect is Dialect.SQLITE:
        path = tmp_path / "source.db"
        table = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    elif dialect is Dialect.MYSQL:
        params = request.getfixturevalue("mariadb_database")
        table = SourceTable(mariadb_connector(params), Dialect.MYSQL, table=f"tr_{uuid.uuid4().hex[:8]}")
    else:
        params = request.getfixturevalue("pg_database")
        table = SourceTable(pg_connector(params), Dialect.POSTGRES, table=f"tr_{uuid.uuid4().hex[:8]}")
    table.ensure_schema()
    return table


@pytest.fixture(params=[Dialect.SQLITE, Dialect.POSTGRES, Dialect.MYSQL], ids=["sqlite", "postgres", "mariadb"])
def source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceTable]:
    """A fresh, empty ``ticket_requests`` table on each dialect."""
    table = new_source(request, request.param, tmp_path)
    yield table
    table.close()


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(user="admin", password="s3cret-emulator")) as running:
        yield running
