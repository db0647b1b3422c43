"""Reading rows as they stand (dry runs) and replaying rows after their data was fixed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ticketsync.models import SourceRow, SyncStatus
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import lease_param, placeholders, validate_identifier
from ticketsync.source.rows import source_row


@dataclass(frozen=True)
class StoredRequest:
    """A row as it stands, sync columns included: what a replay or a dry run decides on."""

    row: SourceRow
    status: str
    sys_id: str | None
    number: str | None
    sync_action: str | None
    claim_token: str | None
    lease_live: bool

    @property
    def id(self) -> int:
        return self.row.id

    @property
    def request_id(self) -> str:
        return str(self.row.request_id)

    @property
    def error(self) -> str | None:
        return self.row.error

    @property
    def attempts(self) -> int:
        return self.row.attempts


@dataclass
class ReplayResult:
    """What :meth:`SourceTable.replay` did: rows reset (as they were before), already held, or busy elsewhere."""

    reset: list[StoredRequest] = field(default_factory=list)
    held: list[str] = field(default_factory=list)
    busy: list[str] = field(default_factory=list)

    @property
    def claimed(self) -> int:
        return len(self.reset) + len(self.held)


class Replay(SourceConnection):
    @reconnecting
    def select_claimable(self, *, after: int, size: int) -> list[SourceRow]:
        """The next ``size`` rows after id ``after`` that a claim would take now; reads only (a dry run)."""
        sql = self._sql
        statement = self._q(
            f"SELECT {', '.join(self.row_columns)} FROM {self.table} WHERE status = 'pending' AND id > ? "
            f"AND (claim_token IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {sql.now}) "
            "ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (after, size))
            return [source_row(values, self.row_columns) for values in cursor.fetchall()]

    @reconnecting
    def find_requests(self, request_ids: Sequence[str]) -> list[StoredRequest]:
        """The rows with these request ids, whatever their status, in id order; reads only."""
        if not request_ids:
            return []
        statement = self._q(self._find_requests_sql(len(request_ids), lock=False))
        with self._transaction() as cursor:
            cursor.execute(statement, tuple(request_ids))
            return [_stored(values, self.row_columns) for values in cursor.fetchall()]

    def replay(self, token: str, request_ids: Sequence[str], *, lease_seconds: float) -> ReplayResult:
        """Make the given rows claimable again and claim them for ``token``, in one transaction.

        For replaying rows after their data was fixed: ``rejected``, ``failed``, even ``created`` ones (the load
        looks each up by correlation_id first, so a row that has a record adopts it instead of duplicating it).
        Each reset row's previous status, error, record and attempt count are kept in ``<table>_replays``, then
        the row becomes ``pending`` with its attempts at 0, held by ``token``. A row another run holds under a
        live lease is left alone (``busy``); a row this token already holds pending is kept as it is (a retried
        extract). Unknown request ids raise ``ValueError`` naming them, and nothing is changed.
        """
        result = ReplayResult()
        if not request_ids:
            return result
        sql = self._sql
        audit = self._q(f"""
            INSERT INTO {self.replays_table} (request_id, claim_token, previous_status, previous_error,
                previous_sys_id, previous_number, previous_sync_action, previous_attempts, replayed_at)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, {sql.now})""")
        reset = self._q(f"""
            UPDATE {self.table}
               SET status = 'pending', error = NULL, sys_id = NULL, number = NULL, sync_action = NULL,
                   resolved_references = NULL,
                   attempts = 0, last_http_status = NULL, claim_token = ?, lease_expires_at = {sql.lease_until},
                   updated_at = {sql.now}
             WHERE id = ?""")
        with self._transaction() as cursor:
            cursor.execute(self._q(self._find_requests_sql(len(request_ids), lock=True)), tuple(request_ids))
            stored = [_stored(values, self.row_columns) for values in cursor.fetchall()]
            unknown = sorted(set(request_ids) - {row.request_id for row in stored})
            if unknown:
                raise ValueError(f"request_ids not found in {self.table}: {', '.join(unknown[:20])}")
            for row in stored:
                if row.status == SyncStatus.PENDING and row.claim_token == token:
                    result.held.append(row.request_id)
                elif row.status == SyncStatus.PENDING and row.lease_live:
                    result.busy.append(row.request_id)
                else:
                    cursor.execute(audit, (row.request_id, token, row.status, row.error, row.sys_id, row.number,
                                           row.sync_action, row.attempts))
                    cursor.execute(reset, (token, lease_param(lease_seconds, self.dialect), row.id))
                    result.reset.append(row)
        return result

    @property
    def replays_table(self) -> str:
        return validate_identifier(f"{self.table}_replays")

    def _find_requests_sql(self, count: int, *, lock: bool) -> str:
        lock_clause = self._sql.lock_for_update if lock else ""
        live = f"CASE WHEN lease_expires_at > {self._sql.now} THEN 1 ELSE 0 END"
        return (
            f"SELECT {', '.join(self.row_columns)}, status, sys_id, number, sync_action, claim_token, {live} "
            f"FROM {self.table} WHERE request_id IN ({placeholders(count)}) ORDER BY id {lock_clause}"
        )


def _stored(values: Sequence[Any], columns: Sequence[str]) -> StoredRequest:
    width = len(columns)
    status, sys_id, number, sync_action, token, live = values[width:]
    return StoredRequest(
        row=source_row(values[:width], columns), status=str(status), sys_id=sys_id, number=number,
        sync_action=sync_action, claim_token=token, lease_live=bool(live),
    )
