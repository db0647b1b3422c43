"""The table's schema (one SQL file per dialect under ``sql/``) and the producer's insert."""

from __future__ import annotations

import re
from collections.abc import Iterable
from importlib import resources
from typing import Any

from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import Dialect, placeholders, strip_comments

PENDING_MIGRATIONS = "ticketsync.source.sql.migrations_pending"
_ADD_COLUMN = re.compile(r"ALTER\s+TABLE\s+\w+\s+ADD\s+COLUMN\s+(?:IF\s+NOT\s+EXISTS\s+)?(\w+)", re.IGNORECASE)


class Schema(SourceConnection):
    def schema_sql(self) -> str:
        """The dialect's schema script, for this table's name."""
        text = resources.files("ticketsync.source.sql").joinpath(self._sql.schema_file).read_text(encoding="utf-8")
        return text.replace("ticket_requests", self.table)

    @reconnecting
    def ensure_schema(self) -> None:
        """Create the table and its indexes if missing; safe to run on every DAG run."""
        statements = [s.strip() for s in strip_comments(self.schema_sql()).split(";") if s.strip()]
        if self.dialect is Dialect.SQLITE:
            self.conn.cursor().execute("PRAGMA journal_mode = WAL")
        with self._transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)
        self._apply_pending_migrations()

    def pending_migration_sql(self) -> list[str]:
        """The statements of the pending migrations for this dialect (``sql/migrations_pending``), in file order."""
        suffix = self._sql.schema_file.removeprefix("ticket_requests")
        folder = resources.files(PENDING_MIGRATIONS)
        names = sorted(item.name for item in folder.iterdir() if item.name.endswith(suffix))
        statements: list[str] = []
        for name in names:
            text = folder.joinpath(name).read_text(encoding="utf-8").replace("ticket_requests", self.table)
            statements.extend(s.strip() for s in strip_comments(text).split(";") if s.strip())
        return statements

    def _apply_pending_migrations(self) -> None:
        """Columns added after the base schema (see the files' headers); each ADD COLUMN only where missing."""
        statements = self.pending_migration_sql()
        if not statements:
            return
        with self._transaction() as cursor:
            present = self._columns(cursor)
            for statement in statements:
                added = _ADD_COLUMN.match(statement)
                if added is not None and added.group(1).lower() in present:
                    continue
                cursor.execute(statement)

    def _columns(self, cursor: Any) -> set[str]:
        if self.dialect is Dialect.SQLITE:
            cursor.execute(f"PRAGMA table_info({self.table})")
            return {str(row[1]).lower() for row in cursor.fetchall()}
        cursor.execute(
            self._q("SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                    "AND table_schema = current_schema()"),
            (self.table,),
        )
        return {str(row[0]).lower() for row in cursor.fetchall()}

    def insert_requests(self, requests: Iterable[dict[str, Any]]) -> int:
        """Insert producer rows (what a bank's system does); used by the demo, the tests and the benchmark.

        Not repeated after a lost connection: a lost COMMIT may have landed, and the repeat would hit the unique
        ``request_id``.
        """
        columns = ", ".join(PRODUCER_COLUMNS)
        statement = self._q(f"INSERT INTO {self.table} ({columns}) VALUES ({placeholders(len(PRODUCER_COLUMNS))})")
        params = [
            tuple(request.get(c, "sn_bom_loan_service" if c == "target_table" else None) for c in PRODUCER_COLUMNS)
            for request in requests
        ]
        return self._execute_many(statement, params)
