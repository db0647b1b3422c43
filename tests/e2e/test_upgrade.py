"""Upgrade in place (issue 14): a table built with the version-1 schema as shipped, holding rows in every state, is
migrated by a real DAG run (`airflow dags test`) against the emulator as its own process; every row keeps its state
and history, and every pending row becomes exactly one case. With automatic migration off: the clear failure, the
command, then a successful run."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests

from tests.conftest import (
    PG_ADMIN_DSN,
    airflow_conn_json,
    mariadb_admin,
    mariadb_conn_json,
    mariadb_connector,
    pg_connector,
)
from tests.test_migrations import VERSIONS, dump, execute, old_ensure_schema, version_rows
from ticketsync.models import KEY_COLUMNS, SourceRow
from ticketsync.source import ROW_COLUMNS, Dialect, SourceTable
from ticketsync.source.dialects import lease_param
from ticketsync.source.migrator import Migrator
from ticketsync.transform import prepare
from ticketsync_dev.local import REPO, EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
IN_FLIGHT = "servicenow_ticket_sync:run_in_flight_during_the_upgrade"
# ids of the rows in each state (see fill_every_state)
CREATED, IN_FLIGHT_POSTED, IN_FLIGHT_NOT_POSTED = (1, 2, 3, 4, 5), 6, 7
REJECTED, FAILED, REPLAYED = 8, 9, 10
FIRST_PENDING, LAST_PENDING = 11, 40
SETTLED = (*CREATED, IN_FLIGHT_POSTED, IN_FLIGHT_NOT_POSTED, REJECTED, FAILED, REPLAYED)


DIALECTS = pytest.mark.parametrize(
    "dialect", [Dialect.SQLITE, Dialect.POSTGRES, Dialect.MYSQL], ids=["sqlite", "postgres", "mariadb"])


def with_extra(conn: str, extra: dict[str, Any] | None) -> str:
    return json.dumps({**json.loads(conn), **({"extra": extra} if extra else {})})


@contextmanager
def v1_mariadb(server: dict[str, Any], extra: dict[str, Any] | None) -> Iterator[tuple[SourceTable, str]]:
    name = f"ticketsync_upgrade_{uuid.uuid4().hex[:8]}"
    admin = mariadb_admin()
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE `{name}`")
    params = {**server, "database": name}
    source = SourceTable(mariadb_connector(params), Dialect.MYSQL)
    old_ensure_schema(source)
    try:
        yield source, with_extra(mariadb_conn_json(params), extra)
    finally:
        source.close()
        with admin.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS `{name}`")
        admin.close()


@contextmanager
def v1_database(dialect: Dialect, tmp_path: Path, request: pytest.FixtureRequest,
                extra: dict[str, Any] | None = None) -> Iterator[tuple[SourceTable, str]]:
    """The default ``ticket_requests`` table built with the version-1 schema as shipped, and its connection JSON."""
    if dialect is Dialect.MYSQL:
        with v1_mariadb(request.getfixturevalue("mariadb_database"), extra) as made:
            yield made
        return
    if dialect is Dialect.SQLITE:
        path = tmp_path / "source.db"
        source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
        conn: dict[str, Any] = {"conn_type": "sqlite", "host": str(path)}
        old_ensure_schema(source)
        try:
            yield source, json.dumps({**conn, **({"extra": extra} if extra else {})})
        finally:
            source.close()
        return
    pg_database = request.getfixturevalue("pg_database")
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"ticketsync_upgrade_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params = {**pg_database, "dbname": name}
    source = SourceTable(pg_connector(params), Dialect.POSTGRES)
    old_ensure_schema(source)
    try:
        yield source, with_extra(airflow_conn_json(params), extra)
    finally:
        source.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def post_case(emulator: EmulatorProcess, source: SourceTable, token: str, row_id: int) -> dict[str, Any]:
    """What an earlier run did for the row: the body the transform builds, POSTed to the instance."""
    # read as the earlier release did: the version-1 columns (the business-key columns came with migration 4)
    columns = [c for c in ROW_COLUMNS if c not in KEY_COLUMNS]
    [values] = execute(source, f"SELECT {', '.join(columns)} FROM {source.table} WHERE id = ? AND claim_token = ?",
                       (row_id, token))
    case = prepare(SourceRow.model_validate(dict(zip(columns, values, strict=True))))
    body = case.body.model_dump(exclude_none=True)  # type: ignore[union-attr]
    response = requests.post(f"{emulator.url}/api/now/table/{TABLE}", json=body, auth=("admin", emulator.password),
                             params={"sysparm_exclude_reference_link": "true"}, timeout=30)
    assert response.status_code == 201, response.text
    return dict(response.json()["result"])


def fill_every_state(source: SourceTable, emulator: EmulatorProcess) -> None:
    """Rows 1-5 created (their cases on the instance); 6-7 pending under the live claim of a run in flight while the
    upgrade is deployed (6's POST landed, not yet written back); 8 rejected, 9 failed, 10 created by a replay (two
    audit rows); 11-40 pending."""
    t, now = source.table, source._sql.now
    source.insert_requests(sample_requests(10, prefix="OLD"))
    source.claim("servicenow_ticket_sync:earlier_run", limit=5, chunk_size=5, lease_seconds=600)
    for row_id in CREATED:
        record = post_case(emulator, source, "servicenow_ticket_sync:earlier_run", row_id)
        execute(source, f"UPDATE {t} SET status = 'created', sys_id = ?, number = ?, sync_action = 'created', "
                        f"attempts = 1, synced_at = {now}, last_http_status = 201, lease_expires_at = {now} "
                        "WHERE id = ?", (record["sys_id"], record["number"], row_id))
    an_hour = lease_param(3600, source.dialect)
    execute(source, f"UPDATE {t} SET claim_token = ?, lease_expires_at = {source._sql.lease_until} "
                    "WHERE id IN (?, ?)", (IN_FLIGHT, an_hour, IN_FLIGHT_POSTED, IN_FLIGHT_NOT_POSTED))
    post_case(emulator, source, IN_FLIGHT, IN_FLIGHT_POSTED)
    execute(source, f"UPDATE {t} SET status = 'rejected', error = 'consumer: not a sys_id; fix consumer, then "
                    "replay', claim_token = 'servicenow_ticket_sync:earlier_run' WHERE id = ?", (REJECTED,))
    execute(source, f"UPDATE {t} SET status = 'failed', error = 'HTTP 500 on 3 attempts', attempts = 3, "
                    "last_http_status = 500, claim_token = 'servicenow_ticket_sync:earlier_run' WHERE id = ?",
            (FAILED,))
    execute(source, f"UPDATE {t} SET status = 'created', sys_id = ?, number = ?, sync_action = 'adopted', "
                    "attempts = 1, claim_token = 'servicenow_ticket_sync:replay' WHERE id = ?",
            ("a" * 32, "LSC0099999", REPLAYED))
    for previous in ("rejected", "failed"):
        execute(source, f"INSERT INTO {t}_replays (request_id, claim_token, previous_status, previous_error, "
                        "previous_attempts) SELECT request_id, 'servicenow_ticket_sync:replay', ?, ?, 1 "
                        f"FROM {t} WHERE id = ?", (previous, f"was {previous}", REPLAYED))
    source.insert_requests(sample_requests(LAST_PENDING - FIRST_PENDING + 1, prefix="NEW"))


def settled_rows(source: SourceTable) -> list[tuple[Any, ...]]:
    return [row for row in dump(source)[source.table] if row[0] in SETTLED]


def states(source: SourceTable) -> dict[int, tuple[Any, ...]]:
    return {row[0]: row[1:] for row in execute(
        source, f"SELECT id, request_id, status, sync_action, sys_id, number, claim_token FROM {source.table}")}


def check_exactly_once(source: SourceTable, emulator: EmulatorProcess, expect_created: range | tuple[int, ...]) -> None:
    """Every row in ``expect_created`` is created, with the one record on the instance that carries its request_id."""
    records = emulator.records(TABLE)
    per_correlation = Counter(record["correlation_id"] for record in records)
    assert not [key for key, n in per_correlation.items() if n > 1], "two records share a correlation_id"
    by_sys_id = {record["sys_id"]: record for record in records}
    rows = states(source)
    for row_id in expect_created:
        request_id, status, _, sys_id, number, _ = rows[row_id]
        assert status == "created", rows[row_id]
        assert (by_sys_id[sys_id]["correlation_id"], by_sys_id[sys_id]["number"]) == (request_id, number)


def run(airflow: LocalAirflow, log: Path) -> int:
    return airflow.run_dag(log)


@DIALECTS
def test_the_dag_upgrades_a_version_1_table_with_rows_in_every_state(
    dialect: Dialect, airflow_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with v1_database(dialect, tmp_path, request) as (source, conn), EmulatorProcess(tmp_path / "emulator") as emulator:
        fill_every_state(source, emulator)
        before, replays = settled_rows(source), dump(source)[f"{source.table}_replays"]
        assert Migrator(source).found_version() == 1
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        })

        code = run(airflow, tmp_path / "upgrade.log")
        assert code == 0, (tmp_path / "upgrade.log").read_text()[-5000:]
        assert "applied schema migrations [1, 2, 3, 4]" in (tmp_path / "upgrade.log").read_text()
        assert version_rows(source) == VERSIONS
        # Every settled row, and the two rows of the run still in flight, kept every column; the audit too.
        assert settled_rows(source) == before
        assert dump(source)[f"{source.table}_replays"] == replays
        check_exactly_once(source, emulator, (*CREATED, *range(FIRST_PENDING, LAST_PENDING + 1)))
        assert len(emulator.records(TABLE)) == len(CREATED) + 1 + (LAST_PENDING - FIRST_PENDING + 1)

        # The run in flight died; its lease runs out (made to, rather than waiting an hour); the next run takes its
        # rows: the one whose POST landed is adopted, the other created. Nothing else is touched.
        execute(source, f"UPDATE {source.table} SET lease_expires_at = {source._sql.now} WHERE claim_token = ?",
                (IN_FLIGHT,))
        code = run(airflow, tmp_path / "after.log")
        assert code == 0, (tmp_path / "after.log").read_text()[-5000:]
        rows = states(source)
        assert rows[IN_FLIGHT_POSTED][1:3] == ("created", "adopted")
        assert rows[IN_FLIGHT_NOT_POSTED][1:3] == ("created", "created")
        check_exactly_once(source, emulator, (*CREATED, IN_FLIGHT_POSTED, IN_FLIGHT_NOT_POSTED,
                                              *range(FIRST_PENDING, LAST_PENDING + 1)))
        assert len(emulator.records(TABLE)) == LAST_PENDING - 3  # every row but rejected, failed, replayed
        unchanged = (*CREATED, REJECTED, FAILED, REPLAYED)
        assert [r for r in settled_rows(source) if r[0] in unchanged] == [r for r in before if r[0] in unchanged]

        # The new state works, and the old ones are still enforced.
        execute(source, f"UPDATE {source.table} SET status = 'update_pending' WHERE id = 1")
        with pytest.raises(Exception, match=r"(?i)check|constraint"):
            execute(source, f"UPDATE {source.table} SET status = 'bogus' WHERE id = 2")
        assert source.backlog().get("update_pending") == 1


@DIALECTS
def test_with_auto_migrate_off_the_dag_fails_at_once_then_the_command_then_a_good_run(
    dialect: Dialect, airflow_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    off = {"ticketsync_auto_migrate": False}
    with v1_database(dialect, tmp_path, request, extra=off) as (source, conn), \
            EmulatorProcess(tmp_path / "emulator") as emulator:
        fill_every_state(source, emulator)
        before = dump(source)
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        })

        code = run(airflow, tmp_path / "refused.log")
        log = (tmp_path / "refused.log").read_text()
        assert code != 0
        expected = ("the source table 'ticket_requests' is at schema version 1; this ticketsync needs version 4, "
                    "and automatic migration is off (ticketsync_auto_migrate = false). Apply the pending migrations "
                    "with: python -m ticketsync.source.migrate --conn-id ticket_source --table ticket_requests")
        assert expected in " ".join(log.split()), log[-5000:]
        assert "up_for_retry" not in log.lower(), "a refused schema is not retried"
        assert dump(source) == before, "the refused run changed rows"
        assert Migrator(source).found_version() == 1
        assert Migrator(source).pending()[0].version == 1, "the refused run recorded a version"
        assert emulator.stats()["by_method"].get("POST", 0) == len(CREATED) + 1, "the refused run sent a POST"

        env = dict(os.environ, AIRFLOW_CONN_TICKET_SOURCE=conn, PYTHONPATH=str(REPO / "plugins"))
        command = [sys.executable, "-m", "ticketsync.source.migrate", "--conn-id", "ticket_source"]
        review = subprocess.run([*command, "--sql"], env=env, capture_output=True, text=True, timeout=120,
                                check=True)
        assert "-- migration 2: status_update_pending" in review.stdout
        assert Migrator(source).found_version() == 1, "--sql changed the schema"
        applied = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120, check=True)
        assert "applied [1, 2, 3, 4]; ticket_requests is at schema version 4" in applied.stdout

        code = run(airflow, tmp_path / "good.log")
        assert code == 0, (tmp_path / "good.log").read_text()[-5000:]
        assert "applied schema migrations" not in (tmp_path / "good.log").read_text()
        assert [r for r in dump(source)[source.table] if r[0] in (*CREATED, REJECTED, FAILED, REPLAYED)] == [
            r for r in before[source.table] if r[0] in (*CREATED, REJECTED, FAILED, REPLAYED)]
        check_exactly_once(source, emulator, (*CREATED, *range(FIRST_PENDING, LAST_PENDING + 1)))


# The last main without migrations (the source package split in, the runner not yet): what banks run today.
PREVIOUS_RELEASE = "14fd9b3"


def previous_release(tmp_path: Path) -> Path:
    """The previous release's ``dags/`` and ``plugins/``, exported from git into ``tmp_path``."""
    if subprocess.run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS_RELEASE}^{{commit}}"],
                      capture_output=True, check=False).returncode:
        pytest.skip(f"the previous release {PREVIOUS_RELEASE} is not in this clone (shallow?)")
    target = tmp_path / "previous"
    target.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", PREVIOUS_RELEASE, "dags", "plugins"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    assert not (target / "plugins" / "ticketsync" / "source" / "migrations").exists()
    return target


@pytest.mark.parametrize("dialect", [Dialect.SQLITE, Dialect.POSTGRES], ids=["sqlite", "postgres"])
def test_the_previous_release_runs_on_a_migrated_table_and_corrupts_nothing(
    dialect: Dialect, airflow_home: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Rolled back after the upgrade: the previous release's DAG (from git) runs on the version-2 table, creates the
    pending rows exactly once, and leaves every other row, the newer state and the version as they were."""
    previous = previous_release(tmp_path)
    with v1_database(dialect, tmp_path, request) as (source, conn), EmulatorProcess(tmp_path / "emulator") as emulator:
        fill_every_state(source, emulator)
        assert source.ensure_schema() == [version for version, _ in VERSIONS]
        execute(source, f"UPDATE {source.table} SET status = 'update_pending' WHERE id = 1")  # a newer state
        before = settled_rows(source)
        airflow = LocalAirflow(
            home=airflow_home,
            connections={"ticket_source": conn, "servicenow_default": emulator.connection()},
            extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(previous / "dags"),
                       "AIRFLOW__CORE__PLUGINS_FOLDER": str(previous / "plugins"),
                       "PYTHONPATH": str(previous / "plugins")},
        )
        code = run(airflow, tmp_path / "previous.log")
        log = (tmp_path / "previous.log").read_text()
        assert code == 0, log[-5000:]
        assert str(previous / "dags") in log, "the previous release was not the one run"
        assert settled_rows(source) == before
        assert version_rows(source) == VERSIONS
        check_exactly_once(source, emulator, range(FIRST_PENDING, LAST_PENDING + 1))
        assert states(source)[1][1] == "update_pending"
