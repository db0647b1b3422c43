"""The schema migrations on a real MariaDB: a version-1 table with rows in every state upgraded, each migration run
twice, several migrators at once under the named lock, and the printed SQL run by the ``mariadb`` client.

MariaDB commits DDL by itself, so a migration there is not one transaction (docs/migrations.md): these tests check
the property that replaces it, that every mysql migration is safe to run again."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import mariadb_connector
from ticketsync.models import SyncStatus
from ticketsync.source import Dialect, Outcome, SourceTable
from ticketsync.source.migrator import Migrator, load_migrations, split_statements
from ticketsync_dev.samples import sample_requests

pytestmark = pytest.mark.integration

LATEST = [(1, "initial"), (2, "status_update_pending"), (3, "case_status"), (4, "business_keys"), (5, "sent_fields"),
          (6, "definition_columns")]
CASE_COLUMNS = ("case_state", "case_state_label", "case_updated_at", "case_checked_at",  # migration 3, NULL at first
                "consumer_number", "account_number", "assignment_group_name", "resolved_references",  # migration 4
                "sent_fields",  # migration 5
                "description", "priority")  # migration 6


@pytest.fixture
def v1_source(mariadb_database: dict[str, Any]) -> Iterator[SourceTable]:
    """A table built by migration 1 alone (the schema as shipped), with no version table, holding rows in every
    state: pending, pending under another run's live lease, created, rejected, failed."""
    source = SourceTable(mariadb_connector(mariadb_database), Dialect.MYSQL, table=f"tr_{uuid.uuid4().hex[:8]}")
    with source._transaction() as cursor:
        for statement in load_migrations(Dialect.MYSQL)[0].statements(source.table):
            cursor.execute(statement)
    source.insert_requests(sample_requests(9))
    source.claim("other_dag:in_flight", limit=2, chunk_size=2, lease_seconds=600)
    source.claim("dag:old_run", limit=3, chunk_size=3, lease_seconds=600)
    source.write_outcomes("dag:old_run", [
        Outcome(3, SyncStatus.CREATED, sys_id="a" * 32, number="LSC0001", action="created", attempts_made=1),
        Outcome(4, SyncStatus.REJECTED, error="consumer: missing; set consumer"),
        Outcome(5, SyncStatus.FAILED, error="HTTP 500 after 3 attempts", attempts_made=3, http_status=500),
    ])
    yield source
    source.close()


def dump(source: SourceTable) -> list[tuple[Any, ...]]:
    """Every row, every column; migration 3's columns left out once checked NULL."""
    with source._transaction() as cursor:
        cursor.execute(f"SELECT * FROM {source.table} ORDER BY id")
        columns = [str(column[0]).lower() for column in cursor.description]
        rows = [tuple(row) for row in cursor.fetchall()]
    added = [index for index, column in enumerate(columns) if column in CASE_COLUMNS]
    assert all(row[index] is None for row in rows for index in added), "migration 3's columns are not NULL"
    return [tuple(v for index, v in enumerate(row) if index not in added) for row in rows]


def version_rows(source: SourceTable) -> list[tuple[Any, ...]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT version, name FROM {source.table}_schema_version ORDER BY version")
        return [tuple(row) for row in cursor.fetchall()]


def set_status(source: SourceTable, status: str) -> None:
    with source._transaction() as cursor:
        cursor.execute(f"UPDATE {source.table} SET status = %s WHERE id = 3", (status,))


def test_upgrade_from_version_1_keeps_every_row_and_admits_update_pending(v1_source: SourceTable) -> None:
    source = v1_source
    before = dump(source)
    with pytest.raises(Exception, match="CONSTRAINT"):
        set_status(source, "update_pending")
    assert Migrator(source).found_version() == 1
    assert source.ensure_schema() == [version for version, _ in LATEST]
    assert dump(source) == before
    assert version_rows(source) == LATEST
    assert source.ensure_schema() == []
    set_status(source, "update_pending")
    with pytest.raises(Exception, match="CONSTRAINT"):
        set_status(source, "bogus")
    # the sync goes on where it was: the live claim is still held, the free rows are claimable
    assert source.claim("dag:next_run", limit=10, chunk_size=10, lease_seconds=60) == 4


def test_each_migration_is_safe_to_run_again_from_any_statement(v1_source: SourceTable) -> None:
    source = v1_source
    before = dump(source)
    for migration in load_migrations(Dialect.MYSQL):
        statements = migration.statements(source.table)
        for start in range(len(statements)):  # as if killed before statement `start` and run again
            with source._transaction() as cursor:
                for statement in statements[start:] + statements:
                    cursor.execute(statement)
    assert dump(source) == before
    assert source.ensure_schema() == [version for version, _ in LATEST]
    assert dump(source) == before


def test_several_migrators_at_once_apply_each_migration_exactly_once(v1_source: SourceTable) -> None:
    source = v1_source
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
    assert sorted(v for applied in results for v in applied) == [version for version, _ in LATEST]
    assert version_rows(source) == LATEST
    assert dump(source) == before


def test_the_printed_sql_run_by_the_mariadb_client_does_what_apply_does(
    v1_source: SourceTable, mariadb_database: dict[str, Any]
) -> None:
    source = v1_source
    before = dump(source)
    script = Migrator(source).script()
    assert script.count("COMMIT;") == len(LATEST)
    assert "GET_LOCK" in script
    assert "RELEASE_LOCK" in script
    assert len(split_statements(script)) > 4
    command = ["mariadb", f"--host={mariadb_database['host']}", f"--port={mariadb_database['port']}",
               f"--user={mariadb_database['user']}", mariadb_database["database"]]
    for _ in range(2):  # a DBA running it twice changes nothing more
        subprocess.run(command, input=script, text=True, check=True, timeout=60)
    assert Migrator(source).pending() == []
    assert dump(source) == before
    assert version_rows(source) == LATEST
