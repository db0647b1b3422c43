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


# (column, Outcome attribute) written only when some outcome of a batch carries a value
OPTIONAL_COLUMNS = (("sent_fields", "sent_fields"), ("resolved_references", "resolved"))


class Outcomes(SourceConnection):
    def write_outcomes(self, token: str, outcomes: Iterable[Outcome]) -> int:
        """Write each outcome to its row in one transaction, only where the token still holds a pending row.

        A final status ends the lease; a row left ``pending`` (transient failure) has its lease released at once,
        so the next attempt (a task retry or the next run) may take it.
        """
        now = self._sql.now
        batch = list(outcomes)
        # Columns of later migrations, written only when an outcome of the batch carries a value: a create's snapshot
        # (sent_fields, migration 5), the sys_ids business keys resolved to (resolved_references, migration 4). Rows
        # without them never need the columns, so nothing else depends on those migrations having run.
        optional = [
            (column, attribute) for column, attribute in OPTIONAL_COLUMNS
            if any(getattr(o, attribute) is not None for o in batch)
        ]
        set_optional = "".join(f"{column} = COALESCE(?, {column}), " for column, _ in optional)
        statement = self._q(f"""
            UPDATE {self.table}
               SET status = ?, sys_id = COALESCE(?, sys_id), number = COALESCE(?, number), error = ?,
                   attempts = attempts + ?, last_http_status = COALESCE(?, last_http_status),
                   sync_action = COALESCE(?, sync_action), {set_optional}synced_at = {now},
                   updated_at = {now},
                   lease_expires_at = {now}
             WHERE id = ? AND claim_token = ? AND status = 'pending'""")
        params = [
            (
                str(o.status), o.sys_id, o.number, o.error, o.attempts_made, o.http_status, o.action,
                *(getattr(o, attribute) for _, attribute in optional), o.row_id, token,
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
