"""The source table ``ticket_requests``: schema, claiming, reading in chunks, and writing outcomes back.

One class, two dialects (PostgreSQL in production, SQLite as the embedded default). Every statement uses bound
parameters; the table name comes from configuration and is checked to be a plain identifier.

Claiming is a lease: a run stamps rows with its ``claim_token`` and a ``lease_expires_at``. A row is free to claim
when it is ``pending`` and unclaimed or its lease has run out. On PostgreSQL the claim uses ``FOR UPDATE SKIP
LOCKED`` so concurrent claimers never block on, or take, each other's rows; on SQLite ``BEGIN IMMEDIATE``
serialises writers. Before a row is sent its lease is renewed in the same statement that reads it, and only rows
whose claim is still held come back, so a row whose lease ran out and was taken by another run is never sent twice
at once.

A run's claim can be split between several loaders (mapped tasks, perhaps on several machines): loader ``i`` of
``n`` passes ``Shard(i, n)`` and takes, renews and releases only the rows with ``id % n = i``, so the loaders of one
run never take the same row, and a retry of loader ``i`` takes shard ``i`` again.

Connection loss (PostgreSQL restarting, a failover, ``pg_terminate_backend``, a proxy closing an idle connection):
a psycopg ``OperationalError``/``InterfaceError`` that leaves the connection closed drops it, and the next use opens
a new one. The statements marked with :func:`_reconnecting` are then run once more on the new connection; each is
safe to repeat even when the lost attempt did commit (the error may have cut the answer to a COMMIT):

* ``ensure_schema``: ``CREATE … IF NOT EXISTS``;
* claiming (``_claim_chunk``): a row this token already holds is claimable by it again, so a repeat returns the same
  ids with their lease renewed;
* ``take_chunk``/``take_rows``: renew the lease on rows the token holds and return them; a repeat returns the same
  rows (the first answer never reached the loader, so nothing was sent for it);
* ``write_outcomes``: conditioned on ``claim_token = token AND status = 'pending'``: a final status that did commit
  is not pending any more, so the repeat changes nothing. A ``pending`` write-back (transient failure) that did
  commit would count its attempt twice; that only brings forward the look-up that precedes ``failed``, never a
  second record or a lost row;
* ``release``: sets the lease end to now again;
* the reads (``iter_claimed``'s chunks, ``token_summary``, ``first_errors``, ``backlog``).

``insert_requests`` (the producer's insert, used by the demo, tests and benchmarks) is not repeated: after a lost
COMMIT it could hit the unique ``request_id``; it drops the connection and raises. A second loss in a row raises
too: the task fails and Airflow retries it, which is safe for the same reasons.
"""

from __future__ import annotations

import functools
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from importlib import resources
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

from ticketsync.models import PRODUCER_COLUMNS, SourceRow, SyncStatus

log = logging.getLogger(__name__)

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
ROW_COLUMNS: tuple[str, ...] = ("id", *PRODUCER_COLUMNS, "attempts", "error")


class Dialect(StrEnum):
    POSTGRES = "postgres"
    SQLITE = "sqlite"


class DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


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


@dataclass(frozen=True)
class Shard:
    """Loader ``index`` of ``count`` loaders sharing one claim: it handles the rows with ``id % count = index``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"invalid shard {self.index} of {self.count}: need 0 <= index < count")


@dataclass(frozen=True)
class _Sql:
    now: str
    lease_until: str  # takes one parameter: the lease in seconds
    skip_locked: str
    begin: str | None
    modulo: str  # takes one parameter: the divisor (psycopg reads a bare % as a placeholder, so PostgreSQL uses MOD)


_SQL = {
    Dialect.POSTGRES: _Sql(
        now="now()",
        lease_until="now() + ? * interval '1 second'",
        skip_locked="FOR UPDATE SKIP LOCKED",
        begin=None,
        modulo="MOD(id, ?)",
    ),
    Dialect.SQLITE: _Sql(
        now="strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        lease_until="strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ? || ' seconds')",
        skip_locked="",
        begin="BEGIN IMMEDIATE",
        modulo="(id % ?)",
    ),
}


def validate_identifier(name: str) -> str:
    """Table names come from configuration; refuse anything that is not a plain SQL identifier."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and underscores only")
    return name


def _placeholders(count: int) -> str:
    return ", ".join("?" for _ in range(count))


_DRIVERS = ("psycopg", "psycopg2")
_CONNECTION_ERRORS = ("OperationalError", "InterfaceError")


def is_connection_error(exc: BaseException) -> bool:
    """A psycopg (3 or 2) ``OperationalError`` or ``InterfaceError``: the class of errors a lost server raises."""
    return any(
        cls.__name__ in _CONNECTION_ERRORS and cls.__module__.split(".")[0] in _DRIVERS for cls in type(exc).__mro__
    )


# SQLSTATE classes of an error about the data of a statement: 22 data exception (a value too long…), 23 integrity
# constraint violation (CHECK, NOT NULL, UNIQUE…), P0 PL/pgSQL (a trigger's RAISE EXCEPTION).
_ROW_REFUSAL_SQLSTATES = ("22", "23", "P0")


def is_row_refusal(exc: BaseException) -> bool:
    """An error the database raises about the data of a statement (a constraint, a trigger's ``RAISE``, a value
    too long), as opposed to the connection or the permissions: on PostgreSQL by SQLSTATE class (22, 23, P0), on
    SQLite ``sqlite3.IntegrityError`` (constraints and a trigger's ``RAISE(ABORT, …)``) or ``DataError``."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return True
    if type(exc).__module__.split(".")[0] not in _DRIVERS:
        return False
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(code, str) and code[:2] in _ROW_REFUSAL_SQLSTATES


def refusal_text(exc: BaseException) -> str:
    """A database error on one line, for a row's ``error`` column."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def _is_closed(conn: Any) -> bool:
    """psycopg 3: ``closed``/``broken`` are True; psycopg2: ``closed`` is 1 or 2."""
    return bool(getattr(conn, "closed", False)) or bool(getattr(conn, "broken", False))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _reconnecting(method: Callable[Concatenate[SourceTable, _P], _R]) -> Callable[Concatenate[SourceTable, _P], _R]:
    """Run the statement once more on a new connection if the connection was lost under it (see the module doc
    for why each statement marked so is safe to repeat)."""

    @functools.wraps(method)
    def run(self: SourceTable, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:
            if self._conn is not None or not is_connection_error(exc):
                raise
            log.warning(
                "the source database connection was lost in %s (%s: %s); running it again on a new connection",
                method.__name__, type(exc).__name__, " ".join(str(exc).split())[:200],
            )
        return method(self, *args, **kwargs)

    return run


class SourceTable:
    """Access to the ``ticket_requests`` table through one DB-API connection, opened on first use."""

    def __init__(
        self,
        connect: Callable[[], DBAPIConnection],
        dialect: Dialect,
        table: str = "ticket_requests",
    ) -> None:
        self._connect = connect
        self.dialect = Dialect(dialect)
        self.table = validate_identifier(table)
        self._sql = _SQL[self.dialect]
        self._conn: DBAPIConnection | None = None

    # ----------------------------------------------------------------------------------------------------------
    # connection and transactions
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_conn_id(cls, conn_id: str, table: str = "ticket_requests") -> SourceTable:
        """Build from an Airflow connection: ``postgres`` (production) or ``sqlite`` (the embedded default)."""
        from airflow.sdk import BaseHook

        conn_type = BaseHook.get_connection(conn_id).conn_type
        if conn_type in ("postgres", "postgresql"):
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            connect: Callable[[], Any] = PostgresHook(postgres_conn_id=conn_id).get_conn
            return cls(connect, Dialect.POSTGRES, table)
        if conn_type == "sqlite":
            from airflow.providers.sqlite.hooks.sqlite import SqliteHook

            return cls(SqliteHook(sqlite_conn_id=conn_id).get_conn, Dialect.SQLITE, table)  # type: ignore[no-untyped-call]
        raise ValueError(f"connection {conn_id!r} has conn_type {conn_type!r}; ticketsync supports postgres and sqlite")

    def clone(self) -> SourceTable:
        """Another handle on the same table, with its own connection (for a second thread)."""
        return type(self)(self._connect, self.dialect, self.table)

    @property
    def conn(self) -> DBAPIConnection:
        if self._conn is None:
            conn = self._connect()
            if isinstance(conn, sqlite3.Connection):
                conn.isolation_level = None  # we issue BEGIN ourselves
                conn.execute("PRAGMA busy_timeout = 30000")
                # SQLite stores whatever bytes a producer put in a TEXT column; the default decoder raises on
                # invalid UTF-8 and would stop every row of the chunk. Undecodable bytes become lone surrogates
                # instead, which validation rejects on that row and column alone.
                conn.text_factory = _decode_text
            self._conn = conn
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> SourceTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _q(self, sql: str) -> str:
        """Statements are written with ``?``; psycopg wants ``%s``."""
        return sql.replace("?", "%s") if self.dialect is Dialect.POSTGRES else sql

    def _shard_filter(self, shard: Shard | None) -> tuple[str, tuple[int, ...]]:
        """`` AND id % count = index`` and its parameters, or nothing when the loader has the whole claim."""
        if shard is None or shard.count == 1:
            return "", ()
        return f" AND {self._sql.modulo} = ?", (shard.count, shard.index)

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        conn = self.conn
        cursor = None
        try:
            cursor = conn.cursor()
            if self._sql.begin:
                cursor.execute(self._sql.begin)
            yield cursor
            if self._sql.begin:
                cursor.execute("COMMIT")
            else:
                conn.commit()
        except BaseException as exc:
            self._abort(conn, exc)
            raise
        finally:
            if cursor is not None:
                cursor.close()

    def _abort(self, conn: DBAPIConnection, exc: BaseException) -> None:
        """Roll back after ``exc``; drop the connection if it is lost. Never raises over ``exc``."""
        if is_connection_error(exc) and _is_closed(conn):
            self._drop(conn)
            return
        try:
            conn.rollback()
        except Exception:
            log.warning("rollback after %s failed; dropping the source connection", type(exc).__name__, exc_info=True)
            self._drop(conn)

    def _drop(self, conn: DBAPIConnection) -> None:
        if self._conn is conn:
            self._conn = None
        try:
            conn.close()
        except Exception:
            log.debug("closing a lost source connection failed", exc_info=True)

    # ----------------------------------------------------------------------------------------------------------
    # schema
    # ----------------------------------------------------------------------------------------------------------

    def schema_sql(self) -> str:
        name = "ticket_requests.postgresql.sql" if self.dialect is Dialect.POSTGRES else "ticket_requests.sqlite.sql"
        text = resources.files("ticketsync.sql").joinpath(name).read_text(encoding="utf-8")
        return text.replace("ticket_requests", self.table)

    @_reconnecting
    def ensure_schema(self) -> None:
        """Create the table and its indexes if missing; safe to run on every DAG run."""
        statements = [s.strip() for s in _strip_comments(self.schema_sql()).split(";") if s.strip()]
        if self.dialect is Dialect.SQLITE:
            self.conn.cursor().execute("PRAGMA journal_mode = WAL")
        with self._transaction() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def insert_requests(self, requests: Iterable[dict[str, Any]]) -> int:
        """Insert producer rows (what a bank's system does); used by the demo, the tests and the benchmark."""
        columns = ", ".join(PRODUCER_COLUMNS)
        statement = self._q(f"INSERT INTO {self.table} ({columns}) VALUES ({_placeholders(len(PRODUCER_COLUMNS))})")
        params = [
            tuple(request.get(c, "sn_bom_loan_service" if c == "target_table" else None) for c in PRODUCER_COLUMNS)
            for request in requests
        ]
        return self._execute_many(statement, params)

    # ----------------------------------------------------------------------------------------------------------
    # claiming and reading
    # ----------------------------------------------------------------------------------------------------------

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

    @_reconnecting
    def _claim_chunk(self, token: str, after: int, size: int, lease_seconds: float) -> list[int]:
        sql = self._sql
        # The pick is a CTE so PostgreSQL evaluates it exactly once (a LIMIT … SKIP LOCKED sub-select inside
        # `IN (…)` may be re-run by the planner and update more rows than asked).
        statement = f"""
            WITH picked AS (
                SELECT id FROM {self.table}
                 WHERE status = 'pending' AND id > ?
                   AND (claim_token IS NULL OR claim_token = ?
                        OR lease_expires_at IS NULL OR lease_expires_at <= {sql.now})
                 ORDER BY id LIMIT ? {sql.skip_locked})
            UPDATE {self.table}
               SET claim_token = ?, lease_expires_at = {sql.lease_until}, updated_at = {sql.now}
             WHERE id IN (SELECT id FROM picked)
            RETURNING id"""
        with self._transaction() as cursor:
            cursor.execute(self._q(statement), (after, token, size, token, _lease(lease_seconds, self.dialect)))
            return [int(row[0]) for row in cursor.fetchall()]

    def iter_claimed(self, token: str, *, chunk_size: int) -> Iterator[list[SourceRow]]:
        """Stream the token's pending rows in id order, one chunk in memory at a time (read only)."""
        after = 0
        while True:
            rows = self._claimed_after(token, after, chunk_size)
            if not rows:
                return
            yield rows
            after = rows[-1].id

    @_reconnecting
    def _claimed_after(self, token: str, after: int, size: int) -> list[SourceRow]:
        columns = ", ".join(ROW_COLUMNS)
        statement = self._q(
            f"SELECT {columns} FROM {self.table} WHERE claim_token = ? AND status = 'pending' AND id > ? "
            "ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, after, size))
            return [_row(values) for values in cursor.fetchall()]

    @_reconnecting
    def take_chunk(
        self, token: str, *, after: int, size: int, lease_seconds: float, shard: Shard | None = None
    ) -> list[SourceRow]:
        """Renew the lease on the next ``size`` pending rows the token still holds and return them, in id order.

        This is the guard before sending: a row whose claim was lost is not returned, so it is not sent. With a
        ``shard``, only that shard's rows of the claim are taken.
        """
        sql = self._sql
        columns = ", ".join(ROW_COLUMNS)
        in_shard, shard_params = self._shard_filter(shard)
        statement = f"""
            WITH picked AS (
                SELECT id FROM {self.table}
                 WHERE claim_token = ? AND status = 'pending' AND id > ?{in_shard}
                 ORDER BY id LIMIT ? {sql.skip_locked})
            UPDATE {self.table}
               SET lease_expires_at = {sql.lease_until}, updated_at = {sql.now}
             WHERE id IN (SELECT id FROM picked) AND claim_token = ? AND status = 'pending'
            RETURNING {columns}"""
        params = (token, after, *shard_params, size, _lease(lease_seconds, self.dialect), token)
        with self._transaction() as cursor:
            cursor.execute(self._q(statement), params)
            rows = [_row(values) for values in cursor.fetchall()]
        return sorted(rows, key=lambda row: row.id)

    @_reconnecting
    def take_rows(
        self, token: str, ids: Sequence[int], *, lease_seconds: float, shard: Shard | None = None
    ) -> list[SourceRow]:
        """Like :meth:`take_chunk`, for the given rows (a retry round): renew and return those still held."""
        if not ids:
            return []
        sql = self._sql
        columns = ", ".join(ROW_COLUMNS)
        in_shard, shard_params = self._shard_filter(shard)
        statement = f"""
            UPDATE {self.table}
               SET lease_expires_at = {sql.lease_until}, updated_at = {sql.now}
             WHERE claim_token = ? AND status = 'pending' AND id IN ({_placeholders(len(ids))}){in_shard}
            RETURNING {columns}"""
        with self._transaction() as cursor:
            cursor.execute(self._q(statement), (_lease(lease_seconds, self.dialect), token, *ids, *shard_params))
            rows = [_row(values) for values in cursor.fetchall()]
        return sorted(rows, key=lambda row: row.id)

    @_reconnecting
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

    @_reconnecting
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

    # ----------------------------------------------------------------------------------------------------------
    # writing back
    # ----------------------------------------------------------------------------------------------------------

    def write_outcomes(self, token: str, outcomes: Iterable[Outcome]) -> int:
        """Write each outcome to its row in one transaction, only where the token still holds a pending row.

        A final status ends the lease; a row left ``pending`` (transient failure) has its lease released at once,
        so the next attempt (a task retry or the next run) may take it.
        """
        now = self._sql.now
        statement = self._q(f"""
            UPDATE {self.table}
               SET status = ?, sys_id = COALESCE(?, sys_id), number = COALESCE(?, number), error = ?,
                   attempts = attempts + ?, last_http_status = COALESCE(?, last_http_status),
                   sync_action = COALESCE(?, sync_action), synced_at = {now}, updated_at = {now},
                   lease_expires_at = {now}
             WHERE id = ? AND claim_token = ? AND status = 'pending'""")
        params = [
            (
                str(o.status), o.sys_id, o.number, o.error, o.attempts_made, o.http_status, o.action,
                o.row_id, token,
            )
            for o in outcomes
        ]
        return self._write_back(statement, params)

    @_reconnecting
    def note_error(self, token: str, row_id: int, error: str) -> int:
        """Set only the ``error`` of a pending row the token holds, and end its lease: what is left to say about a
        row whose outcome the database refused to store (see :meth:`write_outcomes`)."""
        statement = self._q(
            f"UPDATE {self.table} SET error = ?, lease_expires_at = {self._sql.now} "
            "WHERE id = ? AND claim_token = ? AND status = 'pending'"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (error[:4000], row_id, token))
            return int(cursor.rowcount or 0)

    @_reconnecting
    def note_held_back(self, token: str, note: str, *, shard: Shard | None = None) -> int:
        """Give every pending row the token (or its ``shard``) holds without an ``error`` this one: rows a load
        stopped before sending say why they are still pending."""
        in_shard, shard_params = self._shard_filter(shard)
        statement = self._q(
            f"UPDATE {self.table} SET error = ? WHERE claim_token = ? AND status = 'pending' AND error IS NULL"
            f"{in_shard}"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (note[:4000], token, *shard_params))
            return int(cursor.rowcount or 0)

    @_reconnecting
    def case_twins(self) -> list[tuple[int, str, str, str | None]]:
        """(id, request_id, status, number) of every row whose request id equals another row's up to case, in id
        order: usually none. ServiceNow compares correlation ids without case, so such rows conflict. One scan of
        the table (no index on ``lower(request_id)``)."""
        statement = (
            f"SELECT id, request_id, status, number FROM {self.table} WHERE lower(request_id) IN "
            f"(SELECT lower(request_id) FROM {self.table} GROUP BY lower(request_id) HAVING COUNT(*) > 1) "
            "ORDER BY id"
        )
        with self._transaction() as cursor:
            cursor.execute(statement)
            return [(int(r[0]), _printable(r[1]), str(r[2]), r[3]) for r in cursor.fetchall()]

    @_reconnecting
    def _write_back(self, statement: str, params: list[tuple[Any, ...]]) -> int:
        return self._execute_many(statement, params)

    def _execute_many(self, statement: str, params: list[tuple[Any, ...]]) -> int:
        """One statement over many parameter rows, in one transaction; returns the number of rows given."""
        if not params:
            return 0
        with self._transaction() as cursor:
            cursor.executemany(statement, params)
        return len(params)

    # ----------------------------------------------------------------------------------------------------------
    # reporting
    # ----------------------------------------------------------------------------------------------------------

    @_reconnecting
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

    @_reconnecting
    def first_errors(self, token: str, statuses: Sequence[str], limit: int = 5) -> list[tuple[str, str, str]]:
        """(request_id, status, error) of the first rows in the given statuses, for summaries and alerts."""
        statement = self._q(
            f"SELECT request_id, status, error FROM {self.table} WHERE claim_token = ? "
            f"AND status IN ({_placeholders(len(statuses))}) AND error IS NOT NULL ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, *statuses, limit))
            return [(_printable(r[0]), str(r[1]), str(r[2])) for r in cursor.fetchall()]

    @_reconnecting
    def backlog(self) -> dict[str, int]:
        """The whole table by status: what is still pending after this run, and everything else."""
        statement = f"SELECT status, COUNT(*) FROM {self.table} GROUP BY status"
        with self._transaction() as cursor:
            cursor.execute(statement)
            return {str(status): int(count) for status, count in cursor.fetchall()}

    @_reconnecting
    def oldest_pending_age(self) -> float | None:
        """Seconds since the oldest ``pending`` row was written by its producer, or None when none is pending.

        A backlog whose oldest row keeps ageing is stuck (the sync is failing, paused, or out-paced).
        """
        if self.dialect is Dialect.POSTGRES:
            expression = "EXTRACT(EPOCH FROM (now() - MIN(created_at)))"
        else:
            expression = "(julianday('now') - julianday(MIN(created_at))) * 86400.0"
        with self._transaction() as cursor:
            cursor.execute(f"SELECT {expression} FROM {self.table} WHERE status = 'pending'")
            value = cursor.fetchone()[0]
        return None if value is None else max(0.0, float(value))

    @_reconnecting
    def current_schema(self) -> str | None:
        """The schema the table's name resolves in on PostgreSQL (for lineage); None on SQLite."""
        if self.dialect is not Dialect.POSTGRES:
            return None
        with self._transaction() as cursor:
            cursor.execute("SELECT current_schema()")
            value = cursor.fetchone()[0]
        return None if value is None else str(value)

    @_reconnecting
    def created_request_ids(self, token: str, limit: int) -> list[str]:
        """Request ids (= correlation ids) of up to ``limit`` rows the token took to ``created``, in id order."""
        statement = self._q(
            f"SELECT request_id FROM {self.table} WHERE claim_token = ? AND status = 'created' ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (token, limit))
            return [str(row[0]) for row in cursor.fetchall()]

    # ----------------------------------------------------------------------------------------------------------
    # dry runs (read only) and replays
    # ----------------------------------------------------------------------------------------------------------

    @_reconnecting
    def select_claimable(self, *, after: int, size: int) -> list[SourceRow]:
        """The next ``size`` rows after id ``after`` that a claim would take now; reads only (a dry run)."""
        sql = self._sql
        statement = self._q(
            f"SELECT {', '.join(ROW_COLUMNS)} FROM {self.table} WHERE status = 'pending' AND id > ? "
            f"AND (claim_token IS NULL OR lease_expires_at IS NULL OR lease_expires_at <= {sql.now}) "
            "ORDER BY id LIMIT ?"
        )
        with self._transaction() as cursor:
            cursor.execute(statement, (after, size))
            return [_row(values) for values in cursor.fetchall()]

    @_reconnecting
    def find_requests(self, request_ids: Sequence[str]) -> list[StoredRequest]:
        """The rows with these request ids, whatever their status, in id order; reads only."""
        if not request_ids:
            return []
        statement = self._q(self._find_requests_sql(len(request_ids), lock=False))
        with self._transaction() as cursor:
            cursor.execute(statement, tuple(request_ids))
            return [_stored(values) for values in cursor.fetchall()]

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
                   attempts = 0, last_http_status = NULL, claim_token = ?, lease_expires_at = {sql.lease_until},
                   updated_at = {sql.now}
             WHERE id = ?""")
        with self._transaction() as cursor:
            cursor.execute(self._q(self._find_requests_sql(len(request_ids), lock=True)), tuple(request_ids))
            stored = [_stored(values) for values in cursor.fetchall()]
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
                    cursor.execute(reset, (token, _lease(lease_seconds, self.dialect), row.id))
                    result.reset.append(row)
        return result

    @property
    def replays_table(self) -> str:
        return validate_identifier(f"{self.table}_replays")

    def _find_requests_sql(self, count: int, *, lock: bool) -> str:
        lock_clause = "FOR UPDATE" if lock and self.dialect is Dialect.POSTGRES else ""
        live = f"CASE WHEN lease_expires_at > {self._sql.now} THEN 1 ELSE 0 END"
        return (
            f"SELECT {', '.join(ROW_COLUMNS)}, status, sys_id, number, sync_action, claim_token, {live} "
            f"FROM {self.table} WHERE request_id IN ({_placeholders(count)}) ORDER BY id {lock_clause}"
        )


def _row(values: Sequence[Any]) -> SourceRow:
    data = dict(zip(ROW_COLUMNS, values, strict=True))
    if isinstance(data.get("notes"), memoryview):
        data["notes"] = bytes(data["notes"])
    return SourceRow.model_validate(data)


def _stored(values: Sequence[Any]) -> StoredRequest:
    width = len(ROW_COLUMNS)
    status, sys_id, number, sync_action, token, live = values[width:]
    return StoredRequest(
        row=_row(values[:width]), status=str(status), sys_id=sys_id, number=number, sync_action=sync_action,
        claim_token=token, lease_live=bool(live),
    )


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _printable(value: Any) -> str:
    """A producer's value as safe text for logs and alerts: undecodable bytes shown as escapes, not raised on."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")


def _lease(seconds: float, dialect: Dialect) -> Any:
    return f"{float(seconds):.3f}" if dialect is Dialect.SQLITE else float(seconds)


def _strip_comments(script: str) -> str:
    """Drop ``--`` comment lines (the shipped schema has no ``--`` inside string literals)."""
    return "\n".join(line.split("--", 1)[0] for line in script.splitlines())
