"""Read-only reports on the table: a run's counts and first errors, the backlog, and how old it is."""

from __future__ import annotations

from collections.abc import Sequence

from ticketsync.models import SyncStatus
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import Dialect, placeholders
from ticketsync.source.rows import printable


class Reports(SourceConnection):
    @reconnecting
    def case_twins(self) -> list[tuple[int, str, str, str | None]]:
        """(id, request_id, status, number) of every row whose request id equals another row's up to case, in id
        order: usually none. ServiceNow compares correlation ids without case, so such rows conflict
        (:mod:`ticketsync.correlation`). One scan of the table: there is no index on ``lower(request_id)``."""
        statement = (
            f"SELECT id, request_id, status, number FROM {self.table} WHERE lower(request_id) IN "
            f"(SELECT lower(request_id) FROM {self.table} GROUP BY lower(request_id) HAVING COUNT(*) > 1) "
            "ORDER BY id"
        )
        with self._transaction() as cursor:
            cursor.execute(statement)
            return [(int(r[0]), printable(r[1]), str(r[2]), r[3]) for r in cursor.fetchall()]

    @reconnecting
    def token_summary(self, token: str) -> dict[str, int]:
        """Counts of the rows this token touched, by status, with ``created`` split into created/adopted."""
        statement = self._q(
            f"SELECT status, sync_action, COUNT(*) FROM {self.table} WHERE claim_token = ? "
            "GROUP BY status, sync_action"
        )
        counts: dict[str, int] = {}
        with self._transaction() as cursor:
            cursor.execute(statement, (token,))
            for status, action, count in cursor.fetchall():
                key = f"created_{action}" if status == SyncStatus.CREATED and action else str(status)
                counts[key] = counts.get(key, 0) + int(count)
        return counts

    @reconnecting
    def first_errors(self, token: str, statuses: Sequence[str], limit: int = 5) -> list[tuple[str, str, str]]:
        """(request_id, status, error) of the first rows in the given statuses, for summaries and alerts."""
        statement = self._q(
            f"SELECT request_id, status, error FROM {self.table} WHERE claim_token = ? "
            f"AND status IN ({placeholders(len(statuses))}) AND error IS NOT NULL ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *statuses, limit))
            return [(printable(r[0]), str(r[1]), str(r[2])) for r in cursor.fetchall()]

    @reconnecting
    def backlog(self) -> dict[str, int]:
        """The whole table by status: what is still pending after this run, and everything else."""
        statement = f"SELECT status, COUNT(*) FROM {self.table} GROUP BY status"
        with self._transaction() as cursor:
            cursor.execute(statement)
            return {str(status): int(count) for status, count in cursor.fetchall()}

    @reconnecting
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest ``pending`` row was written by its producer, or None when none is pending.

        A backlog whose oldest row keeps ageing is stuck (the sync is failing, paused, or out-paced).
        """
        with self._transaction() as cursor:
            cursor.execute(f"SELECT {self._sql.pending_age} FROM {self.table} WHERE status = 'pending'")
            value = cursor.fetchone()[0]
        return None if value is None else max(0.0, float(value))

    @reconnecting
    def current_schema(self) -> str | None:
        """The schema the table's name resolves in on PostgreSQL (for lineage); None on SQLite and MariaDB, where
        the connection's database is the whole answer."""
        if self.dialect is not Dialect.POSTGRES:
            return None
        with self._transaction() as cursor:
            cursor.execute("SELECT current_schema()")
            value = cursor.fetchone()[0]
        return None if value is None else str(value)

    @reconnecting
    def created_request_ids(self, token: str, limit: int) -> list[str]:
        """Request ids (= correlation ids) of up to ``limit`` rows the token took to ``created``, in id order."""
        statement = self._q(
            f"SELECT request_id FROM {self.table} WHERE claim_token = ? AND status = 'created' ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, limit))
            return [str(row[0]) for row in cursor.fetchall()]
