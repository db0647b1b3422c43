"""The table's schema (versioned migrations, see :mod:`ticketsync.source.migrator`) and the producer's insert."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ticketsync.models import KEY_COLUMNS, PRODUCER_COLUMNS
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import Dialect, placeholders
from ticketsync.source.migrator import Migrator, migrate_command


class Schema(SourceConnection):
    @reconnecting
    def ensure_schema(self, *, auto_migrate: bool = True, command: str | None = None) -> list[int]:
        """Bring the table to the latest schema version: create it if missing, apply the pending migrations under
        the migration lock. Safe to run on every DAG run (nothing pending: one read) and again after a lost
        connection (each migration is one transaction and is recorded in it). Returns the versions applied.

        :param auto_migrate: False: change nothing, and raise :class:`~ticketsync.source.migrator.SchemaVersionError`
            if the table is not at the latest version
        :param command: the command that applies the migrations, named in that error
        """
        if self.dialect is Dialect.SQLITE:
            self.conn.cursor().execute("PRAGMA journal_mode = WAL")
        migrator = Migrator(self)
        if not auto_migrate:
            migrator.require_current(command or migrate_command("ticket_source", self.table))
            return []
        return migrator.apply()

    def insert_requests(self, requests: Iterable[dict[str, Any]]) -> int:
        """Insert producer rows (what a bank's system does); used by the demo, the tests and the benchmark.

        Not repeated after a lost connection: a lost COMMIT may have landed, and the repeat would hit the unique
        ``request_id``.
        """
        rows = list(requests)
        # The business-key columns (migration 4) only when a request gives one: a producer on an older schema works.
        used = [c for c in PRODUCER_COLUMNS if c not in KEY_COLUMNS or any(r.get(c) is not None for r in rows)]
        # A definition's own columns (``extra_columns``, migration 6) likewise only when a request gives one.
        used += [c for c in self.extra_columns if any(r.get(c) is not None for r in rows)]
        statement = self._q(f"INSERT INTO {self.table} ({', '.join(used)}) VALUES ({placeholders(len(used))})")
        params = [
            tuple(request.get(c, "sn_bom_loan_service" if c == "target_table" else None) for c in used)
            for request in rows
        ]
        return self._execute_many(statement, params)
