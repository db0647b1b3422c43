"""Writing each row's outcome back to the source, only where the run's token still holds it pending."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ticketsync.models import SyncStatus
from ticketsync.source.connection import SourceConnection, reconnecting


@dataclass(frozen=True)
class Outcome:
    """What happened to one row in this attempt; the load operator decides it, the source writes it."""

    row_id: int
    status: SyncStatus
    sys_id: str | None = None
    number: str | None = None
    error: str | None = None
    attempts_made: int = 0
    http_status: int | None = None
    action: str | None = None
    sent_fields: str | None = None  # the snapshot of what a create applied (ticketsync.updates.Snapshot, JSON)
    resolved: str | None = None  # JSON: reference field -> the sys_id its business key resolved to


class Outcomes(SourceConnection):
    def write_outcomes(self, token: str, outcomes: Iterable[Outcome]) -> int:
        """Write each outcome to its row in one transaction, only where the token still holds a pending row.

        A final status ends the lease; a row left ``pending`` (transient failure) has its lease released at once,
        so the next attempt (a task retry or the next run) may take it.
        """
        now = self._sql.now
        batch = list(outcomes)
        # resolved_references (migration 4) only when an outcome carries one: rows without business keys never
        # need the column, so nothing else depends on the migration having run.
        resolved = any(o.resolved is not None for o in batch)
        set_resolved = "resolved_references = COALESCE(?, resolved_references), " if resolved else ""
        # sent_fields (migration 5) likewise: only creates carry a snapshot.
        sent = any(o.sent_fields is not None for o in batch)
        set_sent = "sent_fields = COALESCE(?, sent_fields), " if sent else ""
        statement = self._q(f"""
            UPDATE {self.table}
               SET status = ?, sys_id = COALESCE(?, sys_id), number = COALESCE(?, number), error = ?,
                   attempts = attempts + ?, last_http_status = COALESCE(?, last_http_status),
                   sync_action = COALESCE(?, sync_action), {set_sent}{set_resolved}synced_at = {now},
                   updated_at = {now},
                   lease_expires_at = {now}
             WHERE id = ? AND claim_token = ? AND status = 'pending'""")
        params = [
            (
                str(o.status), o.sys_id, o.number, o.error, o.attempts_made, o.http_status, o.action,
                *((o.sent_fields,) if sent else ()), *((o.resolved,) if resolved else ()), o.row_id, token,
            )
            for o in batch
        ]
        return self._write_back(statement, params)

    @reconnecting
    def note_error(self, token: str, row_id: int, error: str) -> int:
        """Set only the ``error`` of a pending row the token holds, and end its lease: what is left to say about a
        row whose outcome the database refused to store (the loader's ``write_isolating``)."""
        statement = self._q(
            f"UPDATE {self.table} SET error = ?, lease_expires_at = {self._sql.now} "
            "WHERE id = ? AND claim_token = ? AND status = 'pending'"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (error[:4000], row_id, token))
            return int(cursor.rowcount or 0)

    @reconnecting
    def _write_back(self, statement: str, params: list[tuple[Any, ...]]) -> int:
        return self._execute_many(statement, params)
