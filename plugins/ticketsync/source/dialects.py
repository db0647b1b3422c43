"""The SQL that differs between the source databases, one :class:`DialectSql` per :class:`Dialect`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


class Dialect(StrEnum):
    POSTGRES = "postgres"
    SQLITE = "sqlite"
    MYSQL = "mysql"  # MariaDB >= 10.6 (SKIP LOCKED) and MySQL >= 8.0


@dataclass(frozen=True)
class DialectSql:
    """Fragments and facts of one dialect; statements are written with ``?`` placeholders."""

    now: str
    lease_until: str  # takes one parameter: the lease in seconds
    skip_locked: str
    begin: str | None  # the statement that opens a write transaction, or None for the driver's implicit one
    modulo: str  # takes one parameter: the divisor (psycopg reads a bare % as a placeholder, so PostgreSQL uses MOD)
    pending_age: str  # seconds since MIN(created_at)
    lock_for_update: str  # appended to a SELECT that must lock the rows it reads in a write transaction
    paramstyle_format: bool  # the driver wants %s instead of ?
    returning: bool = True  # UPDATE … RETURNING and WITH … UPDATE; without them a claim is SELECT … FOR UPDATE + UPDATE
    session_setup: tuple[str, ...] = ()  # run on every new connection


SQL: dict[Dialect, DialectSql] = {
    Dialect.POSTGRES: DialectSql(
        now="now()",
        lease_until="now() + ? * interval '1 second'",
        skip_locked="FOR UPDATE SKIP LOCKED",
        begin=None,
        modulo="MOD(id, ?)",
        pending_age="EXTRACT(EPOCH FROM (now() - MIN(created_at)))",
        lock_for_update="FOR UPDATE",
        paramstyle_format=True,
    ),
    Dialect.SQLITE: DialectSql(
        now="strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
        lease_until="strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+' || ? || ' seconds')",
        skip_locked="",
        begin="BEGIN IMMEDIATE",
        modulo="(id % ?)",
        pending_age="(julianday('now') - julianday(MIN(created_at))) * 86400.0",
        lock_for_update="",
        paramstyle_format=False,
    ),
    # Timestamps are DATETIME(6) in UTC. READ COMMITTED as on PostgreSQL: a locking read takes no gap locks, so a
    # claim does not block the producer's inserts; strict mode so a bad write fails instead of being truncated.
    Dialect.MYSQL: DialectSql(
        now="UTC_TIMESTAMP(6)",
        lease_until="UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND",
        skip_locked="FOR UPDATE SKIP LOCKED",
        begin=None,
        modulo="MOD(id, ?)",
        pending_age="TIMESTAMPDIFF(MICROSECOND, MIN(created_at), UTC_TIMESTAMP(6)) / 1000000.0",
        lock_for_update="FOR UPDATE",
        paramstyle_format=True,
        returning=False,
        session_setup=(
            "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
            "SET SESSION sql_mode = CONCAT_WS(',', @@sql_mode, 'STRICT_ALL_TABLES')",
        ),
    ),
}


def validate_identifier(name: str) -> str:
    """Table names come from configuration; refuse anything that is not a plain SQL identifier."""
    if not IDENTIFIER.fullmatch(name):
        raise ValueError(f"invalid table name {name!r}: use letters, digits and underscores only")
    return name


def placeholders(count: int) -> str:
    return ", ".join("?" for _ in range(count))


def lease_param(seconds: float, dialect: Dialect) -> Any:
    """The lease length as the dialect's ``lease_until`` expression takes it."""
    if dialect is Dialect.SQLITE:
        return f"{float(seconds):.3f}"
    if dialect is Dialect.MYSQL:
        return round(float(seconds) * 1_000_000)
    return float(seconds)
