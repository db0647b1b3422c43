"""One DB-API connection to the source database: opened on first use, transactions, and reconnection.

Which statements may run again on a new connection after a loss, and why: docs/adr/0007.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, Protocol, Self, TypeVar

from ticketsync.source.dialects import SQL, Dialect, validate_identifier
from ticketsync.source.rows import ROW_COLUMNS

log = logging.getLogger(__name__)


class DBAPIConnection(Protocol):
    def cursor(self) -> Any: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def close(self) -> None: ...


_DRIVERS = ("psycopg", "psycopg2", "pymysql")
# Extras of the source connection that ticketsync reads itself (docs/migrations.md), not driver options.
AUTO_MIGRATE_EXTRA = "ticketsync_auto_migrate"
TICKETSYNC_EXTRAS = (AUTO_MIGRATE_EXTRA,)
_CONNECTION_ERRORS = ("OperationalError", "InterfaceError")
# MySQL / MariaDB client and server codes that mean the connection is gone (PyMySQL raises OperationalError for
# these, but also for deadlocks and lock wait timeouts, which leave the connection open)
MYSQL_CONNECTION_LOST = frozenset({
    1053,  # server shutdown in progress
    1927,  # ER_CONNECTION_KILLED (MariaDB: KILL <id>)
    2003,  # can't connect
    2006,  # server has gone away
    2013,  # lost connection during query
    2055,  # lost connection at <stage>
    4031,  # MySQL 8: disconnected by the server because of inactivity
})


def is_connection_error(exc: BaseException) -> bool:
    """An ``OperationalError`` or ``InterfaceError`` of psycopg (3 or 2) or PyMySQL: the errors a lost server
    raises. For PyMySQL's ``OperationalError`` only the codes in :data:`MYSQL_CONNECTION_LOST`."""
    for cls in type(exc).__mro__:
        driver = cls.__module__.split(".")[0]
        if cls.__name__ not in _CONNECTION_ERRORS or driver not in _DRIVERS:
            continue
        if driver == "pymysql" and cls.__name__ == "OperationalError":
            return bool(exc.args) and exc.args[0] in MYSQL_CONNECTION_LOST
        return True
    return False


# SQLSTATE classes of an error about the data of a statement: 22 data exception (a value too long…), 23 integrity
# constraint violation (CHECK, NOT NULL, UNIQUE…), P0 PL/pgSQL (a trigger's RAISE EXCEPTION).
_ROW_REFUSAL_SQLSTATES = ("22", "23", "P0")
# MySQL / MariaDB error codes of the same kind (PyMySQL does not pass the SQLSTATE on, and raises OperationalError
# for a trigger's SIGNAL)
MYSQL_ROW_REFUSALS = frozenset({
    1048,  # column cannot be null
    1062,  # duplicate entry
    1264,  # out of range value
    1292,  # truncated incorrect value
    1366,  # incorrect string value
    1406,  # data too long
    1451, 1452,  # foreign key
    1644,  # a trigger's SIGNAL SQLSTATE '45000'
    3819,  # MySQL: check constraint violated
    4025,  # MariaDB: CONSTRAINT ... failed
})


def is_row_refusal(exc: BaseException) -> bool:
    """An error the database raises about the data of a statement (a constraint, a trigger's ``RAISE``, a value
    too long), as opposed to the connection or the permissions: on PostgreSQL by SQLSTATE class (22, 23, P0), on
    SQLite ``sqlite3.IntegrityError`` (constraints and a trigger's ``RAISE(ABORT, …)``) or ``DataError``, on
    MySQL / MariaDB by error code (:data:`MYSQL_ROW_REFUSALS`)."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
        return True
    driver = type(exc).__module__.split(".")[0]
    if driver not in _DRIVERS:
        return False
    if driver == "pymysql":
        return bool(exc.args) and exc.args[0] in MYSQL_ROW_REFUSALS
    code = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return isinstance(code, str) and code[:2] in _ROW_REFUSAL_SQLSTATES


def refusal_text(exc: BaseException) -> str:
    """A database error on one line, for a row's ``error`` column."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:500]


def is_closed(conn: Any) -> bool:
    """psycopg 3: ``closed``/``broken`` are True; psycopg2: ``closed`` is 1 or 2; PyMySQL: ``open`` is False."""
    return (
        bool(getattr(conn, "closed", False))
        or bool(getattr(conn, "broken", False))
        or getattr(conn, "open", True) is False
    )


class SourceConnection:
    """The ``ticket_requests`` table's connection: opened on first use, dropped when lost.

    :param connect: opens a new DB-API connection (called again after a loss)
    :param dialect: the database's dialect
    :param table: the table's name, a plain SQL identifier
    :param extra_columns: producer columns read beside the ``ticket_requests`` ones (a sync definition's, such as
        ``description``); none for the loan contract
    """

    def __init__(
        self, connect: Callable[[], DBAPIConnection], dialect: Dialect, table: str = "ticket_requests",
        *, extra_columns: Sequence[str] = (),
    ) -> None:
        self._connect = connect
        self.dialect = Dialect(dialect)
        self.table = validate_identifier(table)
        self._sql = SQL[self.dialect]
        self._conn: DBAPIConnection | None = None
        self.extra_columns = tuple(validate_identifier(column) for column in extra_columns)
        self.row_columns: tuple[str, ...] = (*ROW_COLUMNS, *self.extra_columns)

    @classmethod
    def from_conn_id(cls, conn_id: str, table: str = "ticket_requests", *, extra_columns: Sequence[str] = ()) -> Self:
        """Build from an Airflow connection: ``postgres``, ``mysql`` (MariaDB or MySQL) or ``sqlite`` (the embedded
        default)."""
        from airflow.sdk import BaseHook

        connection = BaseHook.get_connection(conn_id)
        conn_type = connection.conn_type
        if conn_type == "mysql":
            from ticketsync.source.mysql import connector

            return cls(connector(connection), Dialect.MYSQL, table, extra_columns=extra_columns)
        if conn_type in ("postgres", "postgresql"):
            from airflow.providers.postgres.hooks.postgres import PostgresHook

            class SourcePostgresHook(PostgresHook):
                # PostgresHook hands every other extra to the driver as a connection option
                ignored_extra_options = PostgresHook.ignored_extra_options | set(TICKETSYNC_EXTRAS)

            connect: Callable[[], Any] = SourcePostgresHook(postgres_conn_id=conn_id).get_conn
            return cls(connect, Dialect.POSTGRES, table, extra_columns=extra_columns)
        if conn_type == "sqlite":
            from airflow.providers.sqlite.hooks.sqlite import SqliteHook

            return cls(SqliteHook(sqlite_conn_id=conn_id).get_conn, Dialect.SQLITE, table,  # type: ignore[no-untyped-call]
                       extra_columns=extra_columns)
        raise ValueError(
            f"connection {conn_id!r} has conn_type {conn_type!r}; ticketsync supports postgres, mysql and sqlite"
        )

    def clone(self) -> Self:
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
            if self._sql.session_setup:
                self._set_up_session(conn)
            self._conn = conn
        return self._conn

    def _set_up_session(self, conn: DBAPIConnection) -> None:
        try:
            with _closing_cursor(conn) as cursor:
                for statement in self._sql.session_setup:
                    cursor.execute(statement)
        except BaseException:
            self._drop(conn)
            raise

    def close(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _q(self, sql: str) -> str:
        """Statements are written with ``?``; psycopg wants ``%s``."""
        return sql.replace("?", "%s") if self._sql.paramstyle_format else sql

    def _execute_many(self, statement: str, params: list[tuple[Any, ...]]) -> int:
        """One statement over many parameter rows, in one transaction; returns the number of rows given."""
        if not params:
            return 0
        with self._transaction() as cursor:
            cursor.executemany(statement, params)
        return len(params)

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
        if is_connection_error(exc) and is_closed(conn):
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


_C = TypeVar("_C", bound=SourceConnection)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def reconnecting(method: Callable[Concatenate[_C, _P], _R]) -> Callable[Concatenate[_C, _P], _R]:
    """Run the statement once more on a new connection if the connection was lost under it. Only for statements
    that are safe to repeat even when the lost attempt did commit (docs/adr/0007 lists them and why)."""

    @functools.wraps(method)
    def run(self: _C, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
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


@contextmanager
def _closing_cursor(conn: DBAPIConnection) -> Iterator[Any]:
    cursor = conn.cursor()
    try:
        yield cursor
    finally:
        cursor.close()


def _decode_text(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")
