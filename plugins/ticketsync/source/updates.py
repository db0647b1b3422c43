"""Rows whose case needs an update (``update_pending``, issue 13): claimed under a token and lease like pending rows
(docs/adr/0002), read with their case's ``sys_id`` and ``sent_fields``, and written back to ``created``."""

from __future__ import annotations

from dataclasses import dataclass

from ticketsync.models import SourceRow
from ticketsync.source.claims import Claims
from ticketsync.source.connection import reconnecting
from ticketsync.source.dialects import lease_param
from ticketsync.source.rows import source_row

UPDATE_COLUMNS: tuple[str, ...] = ("sys_id", "number", "sent_fields")  # read after the row's own columns


@dataclass(frozen=True)
class UpdateRow:
    """A claimed ``update_pending`` row: the producer's columns, its case, and what was last applied to it."""

    row: SourceRow
    sys_id: str | None
    number: str | None
    sent_fields: str | None


@dataclass(frozen=True)
class UpdateOutcome:
    """How one update ended: the row goes back to ``created`` with ``error`` (None when all was applied) and, when
    something was applied or verified, the new ``sent_fields``; ``status`` stays ``update_pending`` to try again."""

    row_id: int
    status: str
    error: str | None
    sent_fields: str | None = None


class UpdateRows(Claims):
    @reconnecting
    def claim_updates(self, token: str, *, limit: int, lease_seconds: float) -> int:
        """Stamp up to ``limit`` claimable ``update_pending`` rows with ``token`` (a free claim, or a lease run out)."""
        sql = self._sql
        pick = f"""
            SELECT id FROM {self.table}
             WHERE status = 'update_pending'
               AND (claim_token IS NULL OR claim_token = ?
                    OR lease_expires_at IS NULL OR lease_expires_at <= {sql.now})
             ORDER BY id LIMIT ? {sql.skip_locked}"""
        assignments = f"claim_token = ?, lease_expires_at = {sql.lease_until}, updated_at = {sql.now}"
        with self._transaction() as cursor:
            rows = self._update_picked(
                cursor, pick, (token, limit), assignments, (token, lease_param(lease_seconds, self.dialect)),
                returning="id",
            )
        return len(rows)

    @reconnecting
    def take_updates(self, token: str, *, after: int, size: int, lease_seconds: float) -> list[UpdateRow]:
        """Renew the lease on the next ``size`` update rows the token holds and return them in id order."""
        sql = self._sql
        pick = f"""
            SELECT id FROM {self.table}
             WHERE claim_token = ? AND status = 'update_pending' AND id > ?
             ORDER BY id LIMIT ? {sql.skip_locked}"""
        with self._transaction() as cursor:
            rows = self._update_picked(
                cursor, pick, (token, after, size),
                f"lease_expires_at = {sql.lease_until}, updated_at = {sql.now}",
                (lease_param(lease_seconds, self.dialect),),
                guard=" AND claim_token = ? AND status = 'update_pending'", guard_params=(token,),
                returning=", ".join((*self.row_columns, *UPDATE_COLUMNS)),
            )
        found = []
        for values in rows:
            width = len(self.row_columns)
            sys_id, number, sent = values[width:]
            found.append(UpdateRow(source_row(values[:width], self.row_columns), _text(sys_id), _text(number),
                                   _text(sent)))
        return sorted(found, key=lambda update: update.row.id)

    @reconnecting
    def pending_updates(self, *, limit: int) -> list[UpdateRow]:
        """Up to ``limit`` ``update_pending`` rows in id order, read only (a dry run's plan: no claim)."""
        statement = self._q(
            f"SELECT {', '.join((*self.row_columns, *UPDATE_COLUMNS))} FROM {self.table} "
            "WHERE status = 'update_pending' ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (limit,))
            width = len(self.row_columns)
            return [
                UpdateRow(source_row(values[:width], self.row_columns), *(_text(value) for value in values[width:]))
                for values in cursor.fetchall()
            ]

    @reconnecting
    def write_update_outcome(self, token: str, outcome: UpdateOutcome) -> int:
        """Write one update's outcome where the token still holds the row ``update_pending``; end its lease."""
        now = self._sql.now
        statement = self._q(f"""
            UPDATE {self.table}
               SET status = ?, error = ?, sent_fields = COALESCE(?, sent_fields), synced_at = {now},
                   updated_at = {now}, lease_expires_at = {now}
             WHERE id = ? AND claim_token = ? AND status = 'update_pending'""")
        with self._transaction() as cursor:
            cursor.execute(
                statement, (outcome.status, _cut(outcome.error), outcome.sent_fields, outcome.row_id, token)
            )
            return int(cursor.rowcount or 0)

    @reconnecting
    def write_sent_fields(self, row_id: int, sent_fields: str) -> int:
        """Store the snapshot of a row whose case the sync just created or adopted."""
        statement = self._q(f"UPDATE {self.table} SET sent_fields = ? WHERE id = ?")
        with self._transaction() as cursor:
            cursor.execute(statement, (sent_fields, row_id))
            return int(cursor.rowcount or 0)

    @reconnecting
    def release_updates(self, token: str) -> int:
        """End the lease on every update row the token still holds, so the next run may take it at once."""
        statement = self._q(
            f"UPDATE {self.table} SET lease_expires_at = {self._sql.now} "
            "WHERE claim_token = ? AND status = 'update_pending'"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token,))
            return int(cursor.rowcount or 0)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _cut(error: str | None) -> str | None:
    return None if error is None else error[:4000]
