"""Versioned migrations of the source table: which exist, which a database still needs, applying them under a lock.

Migration ``N`` of a dialect is the file ``migrations/NNNN_<name>.<dialect>.sql`` (written for the table name
``ticket_requests``, replaced by the configured one). Version 1 is the schema shipped before migrations existed. The
versions applied are rows of ``<table>_schema_version``. How to add one: docs/migrations.md; why a runner of our own
rather than Alembic: docs/adr/0009.

The command line is :mod:`ticketsync.source.migrate`.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ticketsync.source.connection import AUTO_MIGRATE_EXTRA, SourceConnection
from ticketsync.source.dialects import Dialect
from ticketsync.typed import flag

log = logging.getLogger(__name__)

MIGRATIONS_PACKAGE = "ticketsync.source.migrations"
TEMPLATE_TABLE = "ticket_requests"
FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.(?P<suffix>[a-z]+)\.sql")
# How long a migration waits for a table lock held by a running statement before it gives up (PostgreSQL): better a
# failed task, retried, than every reader of the table queued behind a waiting ALTER.
PG_LOCK_TIMEOUT = "30s"


@dataclass(frozen=True)
class DialectMigrations:
    suffix: str  # the dialect part of a migration file's name
    version_table: str  # DDL of the version table, for the name ``{table}``
    table_exists: str  # takes one parameter, the table's name; returns a row when it exists
    lock: str | None  # run first in each migration's transaction: serialises migrators (None: BEGIN IMMEDIATE does)
    record: str  # the version row's insert, safe to repeat; takes version and name
    begin: str  # what opens a migration's transaction in the printed script
    unlock: str | None = None  # releases a session-level lock after each migration (None: the transaction's end does)


DIALECTS: dict[Dialect, DialectMigrations] = {
    Dialect.POSTGRES: DialectMigrations(
        suffix="postgresql",
        version_table="CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        table_exists="SELECT 1 WHERE to_regclass(?) IS NOT NULL",
        lock="SELECT pg_advisory_xact_lock(?)",
        record="INSERT INTO {table} (version, name) VALUES (?, ?) ON CONFLICT (version) DO NOTHING",
        begin="BEGIN",
    ),
    Dialect.SQLITE: DialectMigrations(
        suffix="sqlite",
        version_table="CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
        "applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))",
        table_exists="SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
        lock=None,
        record="INSERT OR IGNORE INTO {table} (version, name) VALUES (?, ?)",
        begin="BEGIN IMMEDIATE",
    ),
    # DDL commits by itself here, so a migration is not one transaction: each mysql migration must be safe to run
    # again from any point (IF NOT EXISTS, MODIFY). The lock is a named session lock, held across those commits.
    Dialect.MYSQL: DialectMigrations(
        suffix="mysql",
        version_table="CREATE TABLE IF NOT EXISTS {table} (version INTEGER PRIMARY KEY, name VARCHAR(255) NOT NULL, "
        "applied_at DATETIME(6) NOT NULL DEFAULT (UTC_TIMESTAMP(6))) ENGINE = InnoDB",
        table_exists="SELECT 1 FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
        lock="SELECT GET_LOCK(CONCAT('ticketsync.migrate:', ?), 600)",
        record="INSERT IGNORE INTO {table} (version, name) VALUES (?, ?)",
        begin="START TRANSACTION",
        unlock="SELECT RELEASE_LOCK(CONCAT('ticketsync.migrate:', ?))",
    ),
}


@dataclass(frozen=True)
class Migration:
    """One numbered schema change of one dialect.

    :param version: its number, 1 for the schema shipped before migrations
    :param name: what it does, from the file name
    :param script: the SQL, written for the table name ``ticket_requests``
    """

    version: int
    name: str
    script: str

    def statements(self, table: str) -> list[str]:
        return split_statements(self.script.replace(TEMPLATE_TABLE, table))


class SchemaVersionError(RuntimeError):
    """The source table is not at the version this code needs, and will not be migrated by this call."""


def load_migrations(dialect: Dialect, directory: Traversable | Path | None = None) -> list[Migration]:
    """The dialect's migrations in order; refuses a gap or a duplicate, so a missing file cannot be skipped."""
    folder = directory if directory is not None else resources.files(MIGRATIONS_PACKAGE)
    suffix = DIALECTS[dialect].suffix
    found: dict[int, Migration] = {}
    for entry in folder.iterdir():
        match = FILE_NAME.fullmatch(entry.name)
        if not match or match["suffix"] != suffix:
            continue
        version = int(match["version"])
        if version in found:
            raise ValueError(f"two migrations numbered {version} for {suffix}: {found[version].name}, {match['name']}")
        found[version] = Migration(version, match["name"], entry.read_text(encoding="utf-8"))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise ValueError(f"the {suffix} migrations must be numbered 1, 2, 3, … without a gap; found {versions}")
    return [found[v] for v in versions]


def split_statements(script: str) -> list[str]:
    """Split a script on ``;``, skipping ``--`` comments and ``;`` inside quotes or ``$$`` blocks."""
    statements: list[str] = []
    current: list[str] = []
    i = 0
    quote: str | None = None
    while i < len(script):
        char = script[i]
        if quote is None and script.startswith("--", i):
            end = script.find("\n", i)
            i = len(script) if end < 0 else end
            continue
        if quote is None and script.startswith("$$", i):
            quote, char = "$$", "$$"
        elif quote == "$$" and script.startswith("$$", i):
            quote, char = None, "$$"
        elif quote is None and char == "'":
            quote = "'"
        elif quote == "'" and char == "'":
            quote = None
        elif quote is None and char == ";":
            statements.append("".join(current).strip())
            current, i = [], i + 1
            continue
        current.append(char)
        i += len(char)
    statements.append("".join(current).strip())
    return [s for s in statements if s]


class Migrator:
    """Reads and applies the migrations of one source table.

    :param source: the table's connection
    :param migrations: the dialect's migrations (default: the ones shipped in the package)
    """

    def __init__(self, source: SourceConnection, migrations: Sequence[Migration] | None = None) -> None:
        self.source = source
        self.dialect = DIALECTS[source.dialect]
        self.migrations = list(migrations) if migrations is not None else load_migrations(source.dialect)
        self.version_table = f"{source.table}_schema_version"

    @property
    def latest(self) -> int:
        return self.migrations[-1].version

    def found_version(self) -> int | None:
        """The version recorded in the database; 1 for a table created before migrations; None without a table."""
        with self.source._transaction() as cursor:
            if self._exists(cursor, self.version_table):
                cursor.execute(f"SELECT MAX(version) FROM {self.version_table}")
                row = cursor.fetchone()
                if row and row[0] is not None:
                    return int(row[0])
            return 1 if self._exists(cursor, self.source.table) else None

    def pending(self) -> list[Migration]:
        """The migrations not recorded yet. An unrecorded version-1 table gets migration 1 again: it only creates
        what is missing, and records the version."""
        recorded = self._recorded()
        self._refuse_newer(recorded)
        return [m for m in self.migrations if m.version > recorded]

    def apply(self) -> list[int]:
        """Apply every pending migration, each in its own transaction under the migration lock; returns the versions
        applied by this call (another run may have applied some while this one waited for the lock)."""
        applied = []
        for migration in self.pending():
            if self._apply_one(migration):
                applied.append(migration.version)
        return applied

    def require_current(self, command: str) -> None:
        """Raise :class:`SchemaVersionError` unless the table is at the latest version (no lock, no DDL)."""
        found = self.found_version()
        recorded = self._recorded()
        self._refuse_newer(recorded)
        if recorded < self.latest:
            shown = "none (the table does not exist)" if found is None else str(found)
            raise SchemaVersionError(
                f"the source table {self.source.table!r} is at schema version {shown}; this ticketsync needs "
                f"version {self.latest}, and automatic migration is off ({AUTO_MIGRATE_EXTRA} = false). Apply the "
                f"pending migrations with: {command} (add --sql to print the SQL for review first)"
            )

    def script(self) -> str:
        """The SQL that :meth:`apply` would run now, one transaction per migration, for a DBA to review or run."""
        parts = []
        for migration in self.pending():
            statements = [self._lock_sql(), self._version_table_sql(), *migration.statements(self.source.table),
                          self._literal_record(migration), self._unlock_sql()]
            body = "".join(f"{s};\n" for s in statements if s)
            parts.append(f"-- migration {migration.version}: {migration.name}\n{self.dialect.begin};\n{body}COMMIT;\n")
        return "\n".join(parts)

    def _apply_one(self, migration: Migration) -> bool:
        try:
            return self._apply_locked(migration)
        finally:
            self._unlock()

    def _unlock(self) -> None:
        """Release a session-level migration lock; a lost session released it with it."""
        if self.dialect.unlock is None or self.source._conn is None:
            return
        with self.source._transaction() as cursor:
            cursor.execute(self.source._q(self.dialect.unlock), (self._lock_key(),))

    def _apply_locked(self, migration: Migration) -> bool:
        source = self.source
        statements = migration.statements(source.table)
        with source._transaction() as cursor:
            if self.dialect.lock:
                cursor.execute(source._q(self.dialect.lock), (self._lock_key(),))
            if source.dialect is Dialect.POSTGRES:
                cursor.execute(f"SET LOCAL lock_timeout = '{PG_LOCK_TIMEOUT}'")
            cursor.execute(self._version_table_sql())
            cursor.execute(f"SELECT MAX(version) FROM {self.version_table}")
            row = cursor.fetchone()
            if row and row[0] is not None and int(row[0]) >= migration.version:
                log.info("migration %d (%s) was applied by another run meanwhile", migration.version, migration.name)
                return False
            for number, statement in enumerate(statements, start=1):
                log.info("migration %d (%s): statement %d of %d: %s", migration.version, migration.name, number,
                         len(statements), " ".join(statement.split())[:160])
                cursor.execute(statement)
            cursor.execute(source._q(self.dialect.record.format(table=self.version_table)),
                           (migration.version, migration.name))
        log.info("source table %s is now at schema version %d", source.table, migration.version)
        return True

    def _recorded(self) -> int:
        """The highest recorded version, 0 when none is recorded."""
        with self.source._transaction() as cursor:
            if not self._exists(cursor, self.version_table):
                return 0
            cursor.execute(f"SELECT MAX(version) FROM {self.version_table}")
            row = cursor.fetchone()
            return int(row[0]) if row and row[0] is not None else 0

    def _refuse_newer(self, recorded: int) -> None:
        if recorded > self.latest:
            raise SchemaVersionError(
                f"the source table {self.source.table!r} is at schema version {recorded}, newer than this ticketsync "
                f"knows (up to {self.latest}): a newer release migrated it. Run that release (or newer); this one "
                "refuses to touch the table rather than guess (docs/migrations.md, Downgrade)"
            )

    def _exists(self, cursor: Any, name: str) -> bool:
        cursor.execute(self.source._q(self.dialect.table_exists), (name,))
        return cursor.fetchone() is not None

    def _version_table_sql(self) -> str:
        return self.dialect.version_table.format(table=self.version_table)

    def _lock_key(self) -> int:
        """A stable signed 64-bit key per table, for the advisory lock."""
        digest = hashlib.blake2b(f"ticketsync.migrate:{self.source.table}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big", signed=True)

    def _lock_sql(self) -> str | None:
        return self.dialect.lock.replace("?", str(self._lock_key())) if self.dialect.lock else None

    def _unlock_sql(self) -> str | None:
        return self.dialect.unlock.replace("?", str(self._lock_key())) if self.dialect.unlock else None

    def _literal_record(self, migration: Migration) -> str:
        record = self.dialect.record.format(table=self.version_table)
        return record.replace("?", str(migration.version), 1).replace("?", f"'{migration.name}'", 1)


def auto_migrate_enabled(extra: dict[str, Any]) -> bool:
    """The source connection's extra ``ticketsync_auto_migrate``: true (the default) or false."""
    return flag(extra.get(AUTO_MIGRATE_EXTRA), name=f"the source connection's extra {AUTO_MIGRATE_EXTRA}", default=True)


def migrate_command(conn_id: str, table: str) -> str:
    return f"python -m ticketsync.source.migrate --conn-id {conn_id} --table {table}"
