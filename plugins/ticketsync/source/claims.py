"""Claims and leases: stamping rows with a run's token, renewing the lease before sending, releasing it.

A row is free to claim when it is ``pending`` and unclaimed or its lease has run out (docs/adr/0002); loaders
sharing one claim each take a :class:`Shard` of it (docs/adr/0004).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ticketsync.models import SourceRow
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import lease_param, placeholders
from ticketsync.source.rows import source_row


@dataclass(frozen=True)
class Shard:
    """Loader ``index`` of ``count`` loaders sharing one claim: it handles the rows with ``id % count = index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"invalid shard {self.index} of {self.count}: need 0 <= index < count")


class Claims(SourceConnection):
    def claim(self, token: str, *, limit: int, chunk_size: int, lease_seconds: float) -> int:
        """Stamp up to ``limit`` claimable pending rows with ``token``, one committed chunk at a time.

        Rows this token already holds are claimed again (their lease renewed), so a retried extract is idempotent.
        Returns how many rows the token holds from this call.
        """
        claimed, after = 0, 0
        while claimed < limit:
            ids = self._claim_chunk(token, after, min(chunk_size, limit - claimed), lease_seconds)
            if not ids:
                break
            claimed += len(ids)
            after = max(ids)
        return claimed

    @reconnecting
    def _claim_chunk(self, token: str, after: int, size: int, lease_seconds: float) -> list[int]:
        sql = self._sql
        pick = f"""
            SELECT id FROM {self.table}
             WHERE status = 'pending' AND id > ?
               AND (claim_token IS NULL OR claim_token = ?
                    OR lease_expires_at IS NULL OR lease_expires_at <= {sql.now})
             ORDER BY id LIMIT ? {sql.skip_locked}"""
        assignments = f"claim_token = ?, lease_expires_at = {sql.lease_until}, updated_at = {sql.now}"
        with self._transaction() as cursor:
            rows = self._update_picked(
                cursor, pick, (after, token, size), assignments, (token, lease_param(lease_seconds, self.dialect)),
                returning="id",
            )
        return [int(row[0]) for row in rows]

    def iter_claimed(self, token: str, *, chunk_size: int) -> Iterator[list[SourceRow]]:
        """Stream the token's pending rows in id order, one chunk in memory at a time (read only)."""
        after = 0
        while True:
            rows = self._claimed_after(token, after, chunk_size)
            if not rows:
                return
            yield rows
            after = rows[-1].id

    @reconnecting
    def _claimed_after(self, token: str, after: int, size: int) -> list[SourceRow]:
        columns = ", ".join(self.row_columns)
        statement = self._q(
            f"SELECT {columns} FROM {self.table} WHERE claim_token = ? AND status = 'pending' AND id > ? "
            "ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, after, size))
            return [source_row(values, self.row_columns) for values in cursor.fetchall()]

    @reconnecting
    def take_chunk(
        self, token: str, *, after: int, size: int, lease_seconds: float, shard: Shard | None = None
    ) -> list[SourceRow]:
        """Renew the lease on the next ``size`` pending rows the token still holds and return them, in id order.

        This is the guard before sending: a row whose claim was lost is not returned, so it is not sent. With a
        ``shard``, only that shard's rows of the claim are taken.
        """
        sql = self._sql
        in_shard, shard_params = self._shard_filter(shard)
        pick = f"""
            SELECT id FROM {self.table}
             WHERE claim_token = ? AND status = 'pending' AND id > ?{in_shard}
             ORDER BY id LIMIT ? {sql.skip_locked}"""
        with self._transaction() as cursor:
            rows = self._update_picked(
                cursor, pick, (token, after, *shard_params, size),
                f"lease_expires_at = {sql.lease_until}, updated_at = {sql.now}",
                (lease_param(lease_seconds, self.dialect),),
                guard=" AND claim_token = ? AND status = 'pending'", guard_params=(token,),
                returning=", ".join(self.row_columns),
            )
        return sorted((source_row(values, self.row_columns) for values in rows), key=lambda row: row.id)

    @reconnecting
    def take_rows(
        self, token: str, ids: Sequence[int], *, lease_seconds: float, shard: Shard | None = None
    ) -> list[SourceRow]:
        """Like :meth:`take_chunk`, for the given rows (a retry round): renew and return those still held."""
        if not ids:
            return []
        sql = self._sql
        in_shard, shard_params = self._shard_filter(shard)
        with self._transaction() as cursor:
            rows = self._update_returning(
                cursor, f"lease_expires_at = {sql.lease_until}, updated_at = {sql.now}",
                (lease_param(lease_seconds, self.dialect),),
                f"claim_token = ? AND status = 'pending' AND id IN ({placeholders(len(ids))}){in_shard}",
                (token, *ids, *shard_params),
                returning=", ".join(self.row_columns),
            )
        return sorted((source_row(values, self.row_columns) for values in rows), key=lambda row: row.id)

    @reconnecting
    def release(self, token: str, *, shard: Shard | None = None) -> int:
        """End the lease on every row the token (or its ``shard``) still holds pending, so the next run need not
        wait for it. A loader releases only its own shard: the other loaders of the run may still be sending theirs.
        """
        now = self._sql.now
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"UPDATE {self.table} SET lease_expires_at = {now} WHERE claim_token = ? AND status = 'pending'{in_shard}"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *shard_params))
            return int(cursor.rowcount or 0)

    @reconnecting
    def extend_lease(self, token: str, seconds: float, *, shard: Shard | None = None) -> int:
        """Lease every row the token (or its ``shard``) still holds pending for ``seconds`` from now: a load that
        defers keeps its claim until it resumes, so no other run takes those rows meanwhile. Returns how many."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"UPDATE {self.table} SET lease_expires_at = {self._sql.lease_until}, updated_at = {self._sql.now} "
            f"WHERE claim_token = ? AND status = 'pending'{in_shard}"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (lease_param(seconds, self.dialect), token, *shard_params))
            return int(cursor.rowcount or 0)

    @reconnecting
    def held(self, token: str, *, shard: Shard | None = None) -> int:
        """Pending rows the token (or its ``shard``) holds, leased or not: the work a load of it has ahead."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(f"SELECT COUNT(*) FROM {self.table} WHERE claim_token = ? AND status = 'pending'{in_shard}")
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *shard_params))
            row = cursor.fetchone()
            return int(row[0]) if row else 0

    @reconnecting
    def unreleased(self, token: str, *, shard: Shard | None = None) -> int:
        """Pending rows the token (or its ``shard``) holds under a lease still running. Every load ends by releasing
        its rows (even a failing one), so on a retry of the load these are the rows of a try that died: some may have
        a POST the instance is still writing."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"SELECT COUNT(*) FROM {self.table} WHERE claim_token = ? AND status = 'pending' "
            f"AND lease_expires_at > {self._sql.now}{in_shard}"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *shard_params))
            row = cursor.fetchone()
            return int(row[0]) if row else 0

    @reconnecting
    def note_held_back(self, token: str, note: str, *, shard: Shard | None = None) -> int:
        """Give every pending row the token (or its ``shard``) holds without an ``error`` this one: rows a load
        stopped before handling say why they are still pending."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"UPDATE {self.table} SET error = ? WHERE claim_token = ? AND status = 'pending' AND error IS NULL"
            f"{in_shard}"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (note[:4000], token, *shard_params))
            return int(cursor.rowcount or 0)

    def _shard_filter(self, shard: Shard | None) -> tuple[str, tuple[int, ...]]:
        """`` AND id % count = index`` and its parameters, or nothing when the loader has the whole claim."""
        if shard is None or shard.count == 1:
            return "", ()
        return f" AND {self._sql.modulo} = ?", (shard.count, shard.index)

    def _update_picked(
        self, cursor: Any, pick: str, pick_params: tuple[Any, ...], assignments: str, assign_params: tuple[Any, ...],
        *, guard: str = "", guard_params: tuple[Any, ...] = (), returning: str,
    ) -> list[Sequence[Any]]:
        """Set ``assignments`` on the rows ``pick`` selects (and locks) that also pass ``guard``; return their
        ``returning`` columns.

        With RETURNING the pick is a CTE, so PostgreSQL evaluates it exactly once (a ``LIMIT … SKIP LOCKED``
        sub-select inside ``IN (…)`` may be re-run by the planner and update more rows than asked). Without it
        (MariaDB / MySQL) the pick runs first and holds its row locks to the end of the transaction.
        """
        if self._sql.returning:
            cursor.execute(
                self._q(
                    f"WITH picked AS ({pick}) UPDATE {self.table} SET {assignments} "
                    f"WHERE id IN (SELECT id FROM picked){guard} RETURNING {returning}"
                ),
                (*pick_params, *assign_params, *guard_params),
            )
            return list(cursor.fetchall())
        cursor.execute(self._q(pick), pick_params)
        ids = tuple(int(row[0]) for row in cursor.fetchall())
        if not ids:
            return []
        where = f"id IN ({placeholders(len(ids))}){guard}"
        where_params = (*ids, *guard_params)
        return self._update_returning(cursor, assignments, assign_params, where, where_params, returning=returning)

    def _update_returning(
        self, cursor: Any, assignments: str, assign_params: tuple[Any, ...], where: str, where_params: tuple[Any, ...],
        *, returning: str,
    ) -> list[Sequence[Any]]:
        """``UPDATE … SET assignments WHERE where RETURNING returning``; without RETURNING, the UPDATE (which
        locks the rows it changes) and then a read of the same rows in the same transaction."""
        update = f"UPDATE {self.table} SET {assignments} WHERE {where}"
        if self._sql.returning:
            cursor.execute(self._q(f"{update} RETURNING {returning}"), (*assign_params, *where_params))
            return list(cursor.fetchall())
        cursor.execute(self._q(update), (*assign_params, *where_params))
        cursor.execute(self._q(f"SELECT {returning} FROM {self.table} WHERE {where} ORDER BY id"), where_params)
        return list(cursor.fetchall())

    @reconnecting
    def shard_summary(self, token: str, *, shard: Shard | None = None) -> dict[str, int]:
        """Counts of the rows the token (or its ``shard``) holds, by status, ``created`` split into ``created`` and
        ``adopted``: what one loader's part of a run came to, over all its tries."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"SELECT status, sync_action, COUNT(*) FROM {self.table} WHERE claim_token = ?{in_shard} "
            "GROUP BY status, sync_action"
        )
        counts: dict[str, int] = {}
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *shard_params))
            for status, action, count in cursor.fetchall():
                key = "adopted" if status == "created" and action == "adopted" else str(status)
                counts[key] = counts.get(key, 0) + int(count)
        return counts
