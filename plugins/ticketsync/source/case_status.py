"""The case's state on its source row (status back, issue 13; the columns and the watermark table come with
migration 3, ``0003_case_status``): the pull's watermark, the write-back of changed cases, and the existence check's
report of cases not found."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ticketsync.casestatus.models import NOT_FOUND_PREFIX, CaseState
from ticketsync.source.connection import SourceConnection, reconnecting
from ticketsync.source.dialects import Dialect, placeholders

# "column differs from the parameter", NULL-safe, per dialect
_DIFFERS = {
    Dialect.POSTGRES: "{column} IS DISTINCT FROM ?",
    Dialect.SQLITE: "{column} IS NOT ?",
    Dialect.MYSQL: "NOT ({column} <=> ?)",
}
_TABLE_EXISTS = {
    Dialect.POSTGRES: "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() "
    "AND table_name = ?",
    Dialect.SQLITE: "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?",
    Dialect.MYSQL: "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name = ?",
}


@dataclass(frozen=True)
class PullState:
    """Where the status pull of one instance table stands."""

    watermark: str | None  # the newest sys_updated_on written back, as the instance writes it
    verify_after_id: int  # the existence check goes on after this row id
    completed_seconds_ago: float | None  # since a pull last read to its end (None: never)


class CaseStatusRows(SourceConnection):
    @property
    def status_pulls_table(self) -> str:
        return f"{self.table}_status_pulls"

    def _timestamp(self, moment: datetime) -> Any:
        """A UTC time as the dialect stores it (SQLite: ISO text that sorts like time)."""
        if self.dialect is Dialect.SQLITE:
            return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        if self.dialect is Dialect.MYSQL:
            return moment.astimezone(UTC).replace(tzinfo=None)  # DATETIME(6) in UTC
        return moment

    def _as_datetime(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))

    @reconnecting
    def case_status_targets(self) -> list[str]:
        """The instance tables that hold cases of this table's rows."""
        statement = f"SELECT DISTINCT target_table FROM {self.table} WHERE sys_id IS NOT NULL ORDER BY target_table"
        with self._transaction() as cursor:
            cursor.execute(statement)
            return [str(row[0]) for row in cursor.fetchall()]

    @reconnecting
    def status_pull(self, key: str) -> PullState:
        """The pull state of one instance table (``<servicenow conn id>/<table>``)."""
        statement = self._q(
            f"SELECT watermark, verify_after_id, completed_at FROM {self.status_pulls_table} WHERE instance_table = ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (key,))
            row = cursor.fetchone()
        if row is None:
            return PullState(None, 0, None)
        completed = self._as_datetime(row[2])
        age = None if completed is None else (datetime.now(UTC) - completed).total_seconds()
        return PullState(None if row[0] is None else str(row[0]), int(row[1]), age)

    @reconnecting
    def status_pulls(self) -> dict[str, PullState]:
        """Every instance table's pull state; empty when no status pull ran (or the table is not at version 3)."""
        exists = _TABLE_EXISTS[self.dialect]
        with self._transaction() as cursor:
            cursor.execute(self._q(exists), (self.status_pulls_table,))
            if not int(cursor.fetchone()[0]):
                return {}
            cursor.execute(f"SELECT instance_table FROM {self.status_pulls_table} ORDER BY instance_table")
            keys = [str(row[0]) for row in cursor.fetchall()]
        return {key: self.status_pull(key) for key in keys}

    @staticmethod
    def _in_table(target_table: str | None) -> tuple[str, tuple[str, ...]]:
        """The condition "the row's case is in ``target_table``"; None: every row's case is in the one table of the
        source's definition (its rows' ``target_table`` column is the loan contract's, not theirs)."""
        return ("target_table = ? AND ", (target_table,)) if target_table is not None else ("", ())

    @reconnecting
    def first_case_requested_at(self, target_table: str | None) -> datetime | None:
        """When the oldest row with a case in ``target_table`` (None: with a case) was written: no case of ours is
        older."""
        condition, args = self._in_table(target_table)
        statement = self._q(f"SELECT MIN(created_at) FROM {self.table} WHERE {condition}sys_id IS NOT NULL")
        with self._transaction() as cursor:
            cursor.execute(statement, args)
            row = cursor.fetchone()
        return None if row is None else self._as_datetime(row[0])

    def write_case_states(self, key: str, states: Sequence[CaseState], watermark: str) -> tuple[int, int]:
        """Write one page of cases and move the watermark, in one transaction: (rows matched, rows changed).

        A row is written only when its case really changed: a newer ``sys_updated_on``, or another state or label
        at the same one; never back to an older one. Not repeated after a lost connection: the caller reads the
        page again (the overlap), which is safe because an unchanged case writes nothing.
        """
        now = self._sql.now
        differs = _DIFFERS[self.dialect]
        state_differs = differs.format(column="case_state")
        label_differs = differs.format(column="case_state_label")
        update = self._q(f"""
            UPDATE {self.table}
               SET case_state = ?, case_state_label = ?, case_updated_at = ?, case_checked_at = {now},
                   updated_at = {now}
             WHERE sys_id = ?
               AND (case_updated_at IS NULL OR case_updated_at < ?
                    OR (case_updated_at = ? AND ({state_differs} OR {label_differs})))""")
        ids = sorted({state.sys_id for state in states})
        known_sql = self._q(f"SELECT COUNT(*) FROM {self.table} WHERE sys_id IN ({placeholders(len(ids))})")
        changed = 0
        with self._transaction() as cursor:
            cursor.execute(known_sql, ids)
            matched = int(cursor.fetchone()[0]) if ids else 0
            for state in states:
                at = self._timestamp(state.updated_at)
                cursor.execute(
                    update, (state.state, state.state_label, at, state.sys_id, at, at, state.state, state.state_label)
                )
                changed += max(cursor.rowcount, 0)
            self._move_watermark(cursor, key, watermark)
        return matched, changed

    def _pull_row_exists(self, cursor: Any, key: str) -> bool:
        """Whether the pull state row exists (MariaDB counts changed rows, not matched ones: no rowcount test)."""
        cursor.execute(self._q(f"SELECT COUNT(*) FROM {self.status_pulls_table} WHERE instance_table = ?"), (key,))
        return bool(int(cursor.fetchone()[0]))

    def _move_watermark(self, cursor: Any, key: str, watermark: str) -> None:
        now = self._sql.now
        if self._pull_row_exists(cursor, key):
            cursor.execute(
                self._q(
                    f"UPDATE {self.status_pulls_table} SET watermark = ?, updated_at = {now} WHERE instance_table = ?"
                ),
                (watermark, key),
            )
        else:
            cursor.execute(
                self._q(f"INSERT INTO {self.status_pulls_table} (instance_table, watermark) VALUES (?, ?)"),
                (key, watermark),
            )

    @reconnecting
    def finish_status_pull(self, key: str, verify_after_id: int) -> None:
        """Record a pull that read to its end, and where the next existence check starts."""
        now = self._sql.now
        with self._transaction() as cursor:
            if self._pull_row_exists(cursor, key):
                cursor.execute(
                    self._q(
                        f"UPDATE {self.status_pulls_table} SET completed_at = {now}, verify_after_id = ?, "
                        f"updated_at = {now} WHERE instance_table = ?"
                    ),
                    (verify_after_id, key),
                )
            else:
                cursor.execute(
                    self._q(
                        f"INSERT INTO {self.status_pulls_table} (instance_table, verify_after_id, completed_at) "
                        f"VALUES (?, ?, {now})"
                    ),
                    (key, verify_after_id),
                )

    @reconnecting
    def cases_to_verify(
        self, target_table: str | None, after_id: int, limit: int
    ) -> list[tuple[int, str, str | None]]:
        """(id, sys_id, number) of the next rows with a case in ``target_table`` (None: with a case), by id."""
        condition, args = self._in_table(target_table)
        statement = self._q(
            f"SELECT id, sys_id, number FROM {self.table} WHERE {condition}sys_id IS NOT NULL AND id > ? "
            "ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (*args, after_id, limit))
            return [(int(r[0]), str(r[1]), None if r[2] is None else str(r[2])) for r in cursor.fetchall()]

    @reconnecting
    def mark_cases_not_found(self, reports: Sequence[tuple[int, str]]) -> int:
        """Write each (row id, message) into ``error``, unless it is there already; the status stays as it is."""
        now = self._sql.now
        statement = self._q(
            f"UPDATE {self.table} SET error = ?, updated_at = {now} WHERE id = ? AND (error IS NULL OR error <> ?)"
        )
        written = 0
        with self._transaction() as cursor:
            for row_id, message in reports:
                cursor.execute(statement, (message, row_id, message))
                written += max(cursor.rowcount, 0)
        return written

    @reconnecting
    def clear_cases_not_found(self, row_ids: Sequence[int]) -> int:
        """Clear an earlier "not found" report on rows whose case the check found again (an ACL was fixed)."""
        if not row_ids:
            return 0
        now = self._sql.now
        statement = self._q(
            f"UPDATE {self.table} SET error = NULL, updated_at = {now} "
            f"WHERE id IN ({placeholders(len(row_ids))}) AND error LIKE ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (*row_ids, f"{NOT_FOUND_PREFIX}%"))
            return max(int(cursor.rowcount), 0)
