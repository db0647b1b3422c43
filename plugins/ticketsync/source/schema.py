"""The table's schema (one SQL file per dialect under ``sql/``) and the producer's insert."""

from __future__ import annotations

from collections.abc import Iterable
from importlib import resources
from typing import Any

from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import Dialect, placeholders, strip_comments


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
