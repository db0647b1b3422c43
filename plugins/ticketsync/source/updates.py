"""Rows whose case needs an update (``update_pending``, issue 13): claimed under a token and lease like pending rows
(docs/adr/0002), read with their case's ``sys_id`` and ``sent_fields``, and written back to ``created``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ticketsync.models import SourceRow
from ticketsync.source.claims import Claims
from ticketsync.source.connection import reconnecting
from ticketsync.source.dialects import Dialect, lease_param
from ticketsync.source.rows import source_row

UPDATE_COLUMNS: tuple[str, ...] = ("sys_id", "number", "sent_fields")  # read after the row's own columns
NOT_PRODUCERS = frozenset({"id", "attempts", "error"})  # of the row's columns, those the sync writes
# "column equals the parameter", NULL-safe, per dialect
_SAME = {
    Dialect.POSTGRES: "{column} IS NOT DISTINCT FROM ?",
    Dialect.SQLITE: "{column} IS ?",
    Dialect.MYSQL: "{column} <=> ?",
}
CHANGED_DURING_UPDATE = (
    "the producer changed this row while its update was being sent: what was sent is recorded in sent_fields and "
    "the next run sends the rest"
)


@dataclass(frozen=True)
class UpdateRow:
    """A claimed ``update_pending`` row: the producer's columns, its case, and what was last applied to it."""

    row: SourceRow
    sys_id: str | None
    number: str | None
    sent_fields: str | None
    read: tuple[Any, ...] = ()  # the producer's columns exactly as read, for the write's guard


@dataclass(frozen=True)
class UpdateOutcome:
    """How one update ended: the row goes back to ``created`` with ``error`` (None when all was applied) and, when
    something was applied or verified, the new ``sent_fields``; ``status`` stays ``update_pending`` to try again."""

    row_id: int
    status: str
    error: str | None
    sent_fields: str | None = None


class UpdateRows(Claims):
    @property
    def producer_columns(self) -> tuple[str, ...]:
        """The row's columns the producer writes (what an update reads, and its write-back's guard compares)."""
        return tuple(name for name in self.row_columns if name not in NOT_PRODUCERS)

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
        width = len(self.row_columns)
        producer = [self.row_columns.index(name) for name in self.producer_columns]
        for values in rows:
            sys_id, number, sent = values[width:]
            found.append(UpdateRow(source_row(values[:width], self.row_columns), _text(sys_id), _text(number),
                                   _text(sent), tuple(_param(values[index]) for index in producer)))
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
                UpdateRow(source_row(values[:width], self.row_columns), _text(values[width]),
                          _text(values[width + 1]), _text(values[width + 2]))
                for values in cursor.fetchall()
            ]

    @reconnecting
    def write_update_outcome(self, token: str, outcome: UpdateOutcome, read: tuple[Any, ...] = ()) -> int:
        """Write one update's outcome where the token still holds the row ``update_pending``; end its lease.

        :param read: the producer's columns as the update read them (:attr:`UpdateRow.read`). When given, the row
            goes back to ``created`` only if the producer has not changed it since; a row changed while its update
            was being sent keeps ``update_pending`` (with what was sent in ``sent_fields``), so the next run sends
            the newer change instead of losing it.
        """
        now = self._sql.now
        done = (f"sent_fields = COALESCE(?, sent_fields), synced_at = {now}, updated_at = {now}, "
                f"lease_expires_at = {now}")
        held = "WHERE id = ? AND claim_token = ? AND status = 'update_pending'"
        producers = self.producer_columns
        assert not read or len(read) == len(producers), "read must hold the producer's columns as take_updates read"
        same = "".join(f" AND {_SAME[self.dialect].format(column=name)}" for name in producers[:len(read)])
        with self._transaction() as cursor:
            cursor.execute(self._q(f"UPDATE {self.table} SET status = ?, error = ?, {done} {held}{same}"),
                           (outcome.status, _cut(outcome.error), outcome.sent_fields, outcome.row_id, token, *read))
            written = int(cursor.rowcount or 0)
            if written or not read or outcome.status == "update_pending":
                return written
            cursor.execute(self._q(f"UPDATE {self.table} SET error = ?, {done} {held}"),
                           (CHANGED_DURING_UPDATE, outcome.sent_fields, outcome.row_id, token))
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


def _param(value: Any) -> Any:
    """A value read back as a statement parameter (PostgreSQL's bytea comes back as a memoryview)."""
    return bytes(value) if isinstance(value, memoryview) else value


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _cut(error: str | None) -> str | None:
    return None if error is None else error[:4000]
