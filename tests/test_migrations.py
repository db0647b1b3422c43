"""Schema migrations on SQLite, a real PostgreSQL and a real MariaDB: from the version-1 schema as shipped, with rows
in every state."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import mariadb_conn_json, mariadb_connector, pg_connector
from ticketsync.source import Dialect, SourceTable
from ticketsync.source.dialects import lease_param
from ticketsync.source.migrator import (
    DIALECTS,
    Migration,
    Migrator,
    SchemaVersionError,
    auto_migrate_enabled,
    load_migrations,
    split_statements,
)
from ticketsync_dev.samples import sample_requests

REPO = Path(__file__).resolve().parents[1]
MIGRATIONS = REPO / "plugins" / "ticketsync" / "source" / "migrations"
SCHEMA_V1 = REPO / "tests" / "support" / "schema_v1"
V1_FILE = {Dialect.SQLITE: "ticket_requests.sqlite.sql", Dialect.POSTGRES: "ticket_requests.postgresql.sql",
           Dialect.MYSQL: "ticket_requests.mysql.sql"}


def v1_script(dialect: Dialect, table: str) -> str:
    """The schema exactly as shipped before migrations, for ``table``."""
    return (SCHEMA_V1 / V1_FILE[dialect]).read_text(encoding="utf-8").replace("ticket_requests", table)


def run_script(source: SourceTable, script: str) -> None:
    """Run a script the way a DBA's client (psql, sqlite3) would: as it is, statements and transactions included."""
    conn = source._connect()
    try:
        if isinstance(conn, sqlite3.Connection):
            conn.isolation_level = None
            conn.executescript(script)
        elif source.dialect is Dialect.MYSQL:  # the mariadb client sends one statement at a time
            conn.autocommit(True)
            with conn.cursor() as cursor:
                for statement in split_statements(script):
                    cursor.execute(statement)
        else:
            conn.autocommit = True
            conn.execute(script)
    finally:
        conn.close()


@pytest.fixture(params=[Dialect.SQLITE, Dialect.POSTGRES, Dialect.MYSQL], ids=["sqlite", "postgres", "mariadb"])
def v1_source(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SourceTable]:
    """A table built from the version-1 schema as shipped (no version table), not migrated."""
    if request.param is Dialect.SQLITE:
        path = tmp_path / "source.db"
        source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    elif request.param is Dialect.MYSQL:
        source = SourceTable(mariadb_connector(request.getfixturevalue("mariadb_database")), Dialect.MYSQL,
                             table=f"tr_{uuid.uuid4().hex[:8]}")
    else:
        source = SourceTable(pg_connector(request.getfixturevalue("pg_database")), Dialect.POSTGRES,
                             table=f"tr_{uuid.uuid4().hex[:8]}")
    old_ensure_schema(source)
    yield source
    source.close()


def old_ensure_schema(source: SourceTable) -> None:
    """What ``ensure_schema`` did before migrations: the version-1 script, statement by statement, in one
    transaction (the previous release's code path)."""
    with source._transaction() as cursor:
        for statement in split_statements(v1_script(source.dialect, source.table)):
            cursor.execute(statement)


def execute(source: SourceTable, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with source._transaction() as cursor:
        cursor.execute(source._q(statement), params)
        return list(cursor.fetchall()) if cursor.description else []


def fill_every_state(source: SourceTable) -> None:
    """Rows 1-3 pending, 4-5 pending under another run's live claim, 6-7 created, 8 rejected, 9 failed, 10 a replayed
    row (two audit rows); row 11 was deleted (an AUTOINCREMENT id is never handed out again)."""
    t, now = source.table, source._sql.now
    source.insert_requests(sample_requests(11))
    execute(source, f"DELETE FROM {t} WHERE id = 11")
    execute(source, f"UPDATE {t} SET claim_token = 'other_dag:in_flight', "
                    f"lease_expires_at = {source._sql.lease_until} WHERE id IN (4, 5)",
            (lease_param(600, source.dialect),))
    for row_id, action in ((6, "created"), (7, "adopted")):
        execute(source, f"UPDATE {t} SET status = 'created', sys_id = ?, number = ?, sync_action = ?, "
                        f"synced_at = {now}, last_http_status = 201, attempts = 1, claim_token = 'dag:old_run' "
                        "WHERE id = ?", (f"{row_id:032d}", f"LSC000{row_id}", action, row_id))
    execute(source, f"UPDATE {t} SET status = 'rejected', error = 'consumer: missing; set consumer', "
                    "claim_token = 'dag:old_run' WHERE id = 8")
    execute(source, f"UPDATE {t} SET status = 'failed', error = 'HTTP 500 after 3 attempts', attempts = 3, "
                    "last_http_status = 500, claim_token = 'dag:old_run' WHERE id = 9")
    execute(source, f"UPDATE {t} SET status = 'created', sys_id = 'sys10', number = 'LSC00010', "
                    "sync_action = 'adopted', attempts = 1, claim_token = 'dag:replay_run' WHERE id = 10")
    for previous in ("rejected", "failed"):
        execute(source, f"INSERT INTO {t}_replays (request_id, claim_token, previous_status, previous_error, "
                        "previous_attempts) SELECT request_id, 'dag:replay_run', ?, ?, 2 "
                        f"FROM {t} WHERE id = 10", (previous, f"was {previous}"))


CASE_COLUMNS = ("case_state", "case_state_label", "case_updated_at", "case_checked_at",  # migration 3, NULL at first
                "consumer_number", "account_number", "assignment_group_name", "resolved_references",  # migration 4
                "sent_fields",  # migration 5
                "description", "priority")  # migration 6
VERSIONS = [(1, "initial"), (2, "status_update_pending"), (3, "case_status"), (4, "business_keys"), (5, "sent_fields"),
            (6, "definition_columns")]


def dump(source: SourceTable) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both tables, every column, in id order; the columns of migrations 3 to 6 left out once checked
    NULL (``sent_fields`` excepted: a case the sync creates gets its snapshot)."""
    found = {}
    for name in (source.table, f"{source.table}_replays"):
        with source._transaction() as cursor:
            cursor.execute(f"SELECT * FROM {name} ORDER BY id")
            columns = [str(column[0]).lower() for column in cursor.description]
            rows = [tuple(row) for row in cursor.fetchall()]
        added = [index for index, column in enumerate(columns) if column in CASE_COLUMNS]
        unset = [index for index in added if columns[index] != "sent_fields"]
        assert all(row[index] is None for row in rows for index in unset), "a migrated column is not NULL"
        found[name] = [tuple(v for index, v in enumerate(row) if index not in added) for row in rows]
    return found


def schema_of(source: SourceTable) -> list[tuple[Any, ...]]:
    """The tables', indexes' and constraints' definitions (names normalised to the default table name)."""
    t = source.table
    if source.dialect is Dialect.SQLITE:
        rows = execute(source, "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                               "ORDER BY type, name")
    elif source.dialect is Dialect.MYSQL:
        rows = []
        for name in (t, f"{t}_replays", f"{t}_schema_version"):
            if execute(source, DIALECTS[Dialect.MYSQL].table_exists, (name,)):
                rows += [(name, re.sub(r" AUTO_INCREMENT=\d+", "", row[1]))
                         for row in execute(source, f"SHOW CREATE TABLE {name}")]
                rows += [(name, row[2]) for row in execute(source, f"SHOW INDEX FROM {name}")]
    else:
        tables = (t, f"{t}_replays", f"{t}_schema_version")
        rows = execute(source, "SELECT table_name, column_name, data_type, column_default, is_nullable FROM "
                               "information_schema.columns WHERE table_name IN (?, ?, ?) ORDER BY 1, ordinal_position",
                       tables)
        rows += execute(source, "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                                "FROM pg_constraint WHERE conrelid::regclass::text IN (?, ?, ?) ORDER BY 1, 2", tables)
        rows += execute(source, "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE tablename IN (?, ?, ?) "
                                "ORDER BY 1, 2", tables)
    return [tuple(str(v).replace(t, "ticket_requests") for v in row) for row in rows]


def version_rows(source: SourceTable) -> list[tuple[Any, ...]]:
    return execute(source, f"SELECT version, name FROM {source.table}_schema_version ORDER BY version")


# --- the migration files ------------------------------------------------------------------------------------------

def test_migration_1_is_the_schema_shipped_before_migrations() -> None:
    for dialect, name in V1_FILE.items():
        suffix = DIALECTS[dialect].suffix
        assert (MIGRATIONS / f"0001_initial.{suffix}.sql").read_bytes() == (SCHEMA_V1 / name).read_bytes()


def test_every_dialect_has_the_same_migrations_numbered_without_gaps() -> None:
    by_dialect = {d: [(m.version, m.name) for m in load_migrations(d)] for d in DIALECTS}
    first = next(iter(by_dialect.values()))
    assert first[:2] == [(1, "initial"), (2, "status_update_pending")]
    assert all(versions == first for versions in by_dialect.values()), by_dialect


def test_a_gap_or_a_duplicate_number_is_refused(tmp_path: Path) -> None:
    (tmp_path / "0001_initial.sqlite.sql").write_text("SELECT 1;")
    (tmp_path / "0003_later.sqlite.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match=r"without a gap; found \[1, 3\]"):
        load_migrations(Dialect.SQLITE, tmp_path)
    (tmp_path / "0003_later.sqlite.sql").rename(tmp_path / "0001_again.sqlite.sql")
    with pytest.raises(ValueError, match="two migrations numbered 1"):
        load_migrations(Dialect.SQLITE, tmp_path)


def test_statements_split_on_semicolons_outside_quotes_blocks_and_comments() -> None:
    script = "-- a; comment\nSELECT 'a;b''c;';\nDO $$ BEGIN PERFORM 1; END $$;\n\nSELECT 2 -- tail; here\n;"
    assert split_statements(script) == ["SELECT 'a;b''c;'", "DO $$ BEGIN PERFORM 1; END $$", "SELECT 2"]


@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), ("false", False), (" TRUE ", True),
                                               ("no", False), ("", True), (None, True)])
def test_auto_migrate_extra_is_a_boolean(value: Any, expected: bool) -> None:
    assert auto_migrate_enabled({"ticketsync_auto_migrate": value}) is expected
    assert auto_migrate_enabled({}) is True


def test_auto_migrate_extra_refuses_anything_else() -> None:
    with pytest.raises(ValueError, match="extra ticketsync_auto_migrate must be true or false, got 'maybe'"):
        auto_migrate_enabled({"ticketsync_auto_migrate": "maybe"})


# --- upgrading a version-1 table ----------------------------------------------------------------------------------

def test_upgrade_from_version_1_keeps_every_row_and_admits_update_pending(v1_source: SourceTable) -> None:
    source, t = v1_source, v1_source.table
    fill_every_state(source)
    before = dump(source)
    assert Migrator(source).found_version() == 1

    assert source.ensure_schema() == [version for version, _ in VERSIONS]

    assert dump(source) == before
    assert version_rows(source) == VERSIONS
    assert source.ensure_schema() == []
    execute(source, f"UPDATE {t} SET status = 'update_pending' WHERE id = 6")
    assert source.backlog()["update_pending"] == 1
    with pytest.raises(Exception, match=r"(?i)check|constraint"):
        execute(source, f"UPDATE {t} SET status = 'bogus' WHERE id = 7")
    with pytest.raises(Exception, match=r"(?i)check|constraint"):
        execute(source, f"UPDATE {t} SET sync_action = 'bogus' WHERE id = 7")
    # The live claim of the run in flight is kept: a new run takes only the free pending rows.
    assert source.claim("dag:after_upgrade", limit=100, chunk_size=10, lease_seconds=60) == 3
    assert [r.id for r in source.take_chunk("other_dag:in_flight", after=0, size=10, lease_seconds=60)] == [4, 5]
    source.insert_requests([{"request_id": "REQ-NEW", "consumer": "c"}])
    assert execute(source, f"SELECT id FROM {t} WHERE request_id = 'REQ-NEW'") == [(12,)]
    indexes = {row[1] for row in schema_of(source)}
    assert {"ticket_requests_pending_idx", "ticket_requests_claim_idx", "ticket_requests_replays_request_idx"} <= (
        indexes)


def test_a_new_table_is_created_at_the_latest_version(source: SourceTable) -> None:
    assert Migrator(source).found_version() == len(VERSIONS)
    assert version_rows(source) == VERSIONS


def test_each_migration_is_safe_to_run_again_on_the_schema_it_upgrades_from(v1_source: SourceTable) -> None:
    source = v1_source
    fill_every_state(source)
    migrations = load_migrations(source.dialect)
    for migration in migrations:
        Migrator(source, migrations[: migration.version]).apply()
        schema, rows = schema_of(source), dump(source)
        with source._transaction() as cursor:
            for statement in migration.statements(source.table):
                cursor.execute(statement)
        assert schema_of(source) == schema, f"migration {migration.version} changed the schema when run again"
        assert dump(source) == rows, f"migration {migration.version} changed rows when run again"


def test_a_migration_adding_a_column_with_a_default_and_an_index_keeps_every_row(
    v1_source: SourceTable, tmp_path: Path
) -> None:
    source = v1_source
    fill_every_state(source)
    migrations = load_migrations(source.dialect)
    add = ("ALTER TABLE ticket_requests ADD COLUMN probe VARCHAR(32) NOT NULL DEFAULT 'unknown';\n"
           "CREATE INDEX IF NOT EXISTS ticket_requests_probe_idx ON ticket_requests (probe);\n")
    extended = [*migrations, Migration(len(migrations) + 1, "probe", add)]
    before = dump(source)
    assert Migrator(source, extended).apply() == [m.version for m in extended]
    after = dump(source)
    assert [row[:-1] for row in after[source.table]] == before[source.table]  # the new column comes last
    assert {row[-1] for row in after[source.table]} == {"unknown"}
    assert after[f"{source.table}_replays"] == before[f"{source.table}_replays"]
    assert "ticket_requests_probe_idx" in {row[1] for row in schema_of(source)}


# --- who applies them ---------------------------------------------------------------------------------------------

def test_with_auto_migrate_off_a_table_behind_is_refused_with_the_versions_and_the_command(
    v1_source: SourceTable,
) -> None:
    source = v1_source
    command = f"python -m ticketsync.source.migrate --conn-id src --table {source.table}"
    with pytest.raises(SchemaVersionError) as raised:
        source.ensure_schema(auto_migrate=False, command=command)
    message = str(raised.value)
    assert f"{source.table!r} is at schema version 1; this ticketsync needs version {len(VERSIONS)}" in message
    assert command in message
    assert "ticketsync_auto_migrate = false" in message
    assert not execute(source, *_exists(source, f"{source.table}_schema_version")), "the check created a table"
    source.ensure_schema()
    assert source.ensure_schema(auto_migrate=False) == []


def _exists(source: SourceTable, name: str) -> tuple[str, tuple[str]]:
    return DIALECTS[source.dialect].table_exists, (name,)


def test_with_auto_migrate_off_a_missing_table_is_reported_as_none(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    with SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE) as source, pytest.raises(
        SchemaVersionError, match=r"at schema version none \(the table does not exist\); this ticketsync needs"
    ):
        source.ensure_schema(auto_migrate=False)


def test_a_table_migrated_by_a_newer_release_is_refused_and_not_touched(v1_source: SourceTable) -> None:
    source = v1_source
    source.ensure_schema()
    future, latest = len(VERSIONS) + 1, len(VERSIONS)
    execute(source, f"INSERT INTO {source.table}_schema_version (version, name) VALUES ({future}, 'from_the_future')")
    schema = schema_of(source)
    newer = rf"at schema version {future}, newer than this ticketsync knows \(up to {latest}\)"
    for auto in (True, False):
        with pytest.raises(SchemaVersionError, match=newer):
            source.ensure_schema(auto_migrate=auto)
    assert schema_of(source) == schema


def test_two_migrators_at_once_apply_each_migration_exactly_once(v1_source: SourceTable) -> None:
    source = v1_source
    fill_every_state(source)
    before = dump(source)
    others = [source.clone() for _ in range(4)]
    barrier = threading.Barrier(len(others))
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def migrate(table: SourceTable) -> None:
        try:
            barrier.wait()
            results.append(table.ensure_schema())
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            table.close()

    threads = [threading.Thread(target=migrate, args=(other,)) for other in others]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(v for applied in results for v in applied) == [version for version, _ in VERSIONS]
    assert version_rows(source) == VERSIONS
    assert dump(source) == before


def test_the_printed_sql_does_what_apply_does(v1_source: SourceTable, tmp_path: Path) -> None:
    source = v1_source
    fill_every_state(source)
    before = dump(source)
    script = Migrator(source).script()
    assert script.count("COMMIT;") == len(VERSIONS)
    assert Migrator(source).found_version() == 1, "printing changed something"
    run_script(source, script)
    run_script(source, script)  # a DBA running it twice changes nothing more
    assert Migrator(source).pending() == []
    assert dump(source) == before
    assert version_rows(source) == VERSIONS
    if source.dialect is Dialect.SQLITE:
        applied = SourceTable(lambda: sqlite3.connect(tmp_path / "applied.db"), Dialect.SQLITE)
    else:
        applied = SourceTable(source._connect, source.dialect, table=f"tr_{uuid.uuid4().hex[:8]}")
    with applied:
        applied.ensure_schema()
        assert schema_of(applied) == schema_of(source)
    assert Migrator(source).script() == ""


# --- the previous release on a migrated table ---------------------------------------------------------------------

def test_the_previous_release_runs_on_a_migrated_table_without_changing_it(v1_source: SourceTable) -> None:
    source = v1_source
    fill_every_state(source)
    source.ensure_schema()
    schema, rows = schema_of(source), dump(source)
    old_ensure_schema(source)  # what the previous release does at the start of every run
    assert schema_of(source) == schema
    assert dump(source) == rows
    assert Migrator(source).found_version() == len(VERSIONS)


# --- a migration killed in the middle -----------------------------------------------------------------------------

SLOW = {
    # after the old table is dropped and before the new one is renamed: the worst moment to die
    Dialect.SQLITE: ("DROP TABLE ticket_requests;",
                     "SELECT count(*) FROM (WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                     "WHERE x < 5000000000) SELECT x FROM c);"),
    # after the old CHECK constraint is dropped and before the new one is added
    Dialect.POSTGRES: ("$$;", "SELECT pg_sleep(4);"),
    # DDL commits by itself: after the ALTER has landed and before the version row is written
    Dialect.MYSQL: ("'update_pending'));", "SELECT SLEEP(3);"),
}


def slowed_migrations(dialect: Dialect, directory: Path) -> Path:
    """The shipped migrations, with migration 2 made to hang at its most fragile point."""
    directory.mkdir()
    for path in MIGRATIONS.glob("*.sql"):
        text = path.read_text(encoding="utf-8")
        if path.name.startswith("0002_") and path.name.endswith(f".{DIALECTS[dialect].suffix}.sql"):
            after, slow = SLOW[dialect]
            assert after in text
            text = text.replace(after, f"{after}\n{slow}", 1)
        (directory / path.name).write_text(text, encoding="utf-8")
    return directory


def connection_json(source: SourceTable, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if source.dialect is Dialect.SQLITE:
        return json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "source.db")})
    if source.dialect is Dialect.MYSQL:
        return mariadb_conn_json(request.getfixturevalue("mariadb_database"))
    pg_params = request.getfixturevalue("pg_database")
    return json.dumps({"conn_type": "postgres", "host": pg_params.get("host", "127.0.0.1"),
                       "port": int(pg_params.get("port", 5432)), "login": pg_params.get("user", "postgres"),
                       "schema": pg_params["dbname"]})


def migrate_cli(conn: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "ticketsync.source.migrate", "--conn-id", "ticket_source", *args]


def cli_env(conn: str) -> dict[str, str]:
    return dict(os.environ, AIRFLOW_CONN_TICKET_SOURCE=conn, PYTHONUNBUFFERED="1",
                PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), os.environ.get("PYTHONPATH", "")]))


@pytest.mark.integration
@pytest.mark.slow
def test_a_migration_killed_in_the_middle_is_rolled_back_and_completes_when_run_again(
    v1_source: SourceTable, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    source = v1_source
    fill_every_state(source)
    before, schema_v1 = dump(source), schema_of(source)
    conn = connection_json(source, tmp_path, request)
    slowed = slowed_migrations(source.dialect, tmp_path / "slowed")
    process = subprocess.Popen(
        migrate_cli(conn, "--table", source.table, "--migrations-dir", str(slowed)),
        env=cli_env(conn), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    slow = SLOW[source.dialect][1].rstrip(";")[:20]
    seen = wait_for_line(process, lambda line: "migration 2" in line and slow in line)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert "migration 2" in seen

    source.close()
    assert Migrator(source).found_version() == 1, "the killed migration left a version behind"
    assert dump(source) == before
    if source.dialect is not Dialect.MYSQL:  # MariaDB committed the ALTER: its schema is ahead of its version
        # migration 1 (recording version 1) committed before migration 2 began: version 1's schema, nothing half-done
        assert [row for row in schema_of(source) if "schema_version" not in str(row)] == schema_v1

    result = subprocess.run(migrate_cli(conn, "--table", source.table), env=cli_env(conn), capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    later = [version for version, _ in VERSIONS][1:]
    assert f"applied {later}; {source.table} is at schema version {len(VERSIONS)}" in result.stdout
    assert dump(source) == before
    assert version_rows(source) == VERSIONS
    execute(source, f"UPDATE {source.table} SET status = 'update_pending' WHERE id = 6")


def wait_for_line(process: subprocess.Popen[str], matches: Callable[[str], bool], timeout: float = 60) -> str:
    assert process.stdout is not None
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in process.stdout:
            if matches(line):
                return line
    finally:
        timer.cancel()
    raise AssertionError("the migration ended before reaching the point to kill it")

