"""Connecting to MariaDB / MySQL with PyMySQL from an Airflow connection of type ``mysql``."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow.sdk import Connection

    from ticketsync.source.connection import DBAPIConnection

DEFAULT_PORT = 3306


def connect_kwargs(connection: Connection) -> dict[str, Any]:
    """PyMySQL's arguments from the connection: host, port, login, password, schema (the database), and the
    extras ``ssl`` (a dict or its JSON: ``ca``, ``cert``, ``key``, as the MySQL provider reads it),
    ``unix_socket`` and ``connect_timeout`` (seconds, default 10)."""
    from pymysql.constants import CLIENT

    extra = connection.extra_dejson
    kwargs: dict[str, Any] = {
        "host": connection.host or "localhost",
        "port": int(connection.port or DEFAULT_PORT),
        "user": connection.login or None,
        "password": connection.password or "",
        "database": connection.schema or None,
        "charset": "utf8mb4",
        "connect_timeout": float(extra.get("connect_timeout", 10)),
        # rowcount counts the rows an UPDATE matched, as on PostgreSQL, not only those it changed
        "client_flag": CLIENT.FOUND_ROWS,
    }
    ssl = extra.get("ssl")
    if isinstance(ssl, str):
        ssl = json.loads(ssl)
    if ssl:
        kwargs["ssl"] = dict(ssl)
    if extra.get("unix_socket"):
        kwargs["unix_socket"] = str(extra["unix_socket"])
    return kwargs


def connector(connection: Connection) -> Callable[[], DBAPIConnection]:
    """Opens a new PyMySQL connection each time it is called (again after a lost one)."""
    import pymysql

    kwargs = connect_kwargs(connection)

    def connect() -> DBAPIConnection:
        conn: DBAPIConnection = pymysql.connect(**kwargs)
        return conn

    return connect
