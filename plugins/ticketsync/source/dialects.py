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
    return f"{float(seconds):.3f}" if dialect is Dialect.SQLITE else float(seconds)
