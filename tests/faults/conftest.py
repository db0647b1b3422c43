"""Fixtures of the fault tests. Their figures are printed at the end of the session (``tests/conftest.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from ticketsync.source import SourceTable


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, dict[str, Any]]]:
    """A fresh database holding the default ``ticket_requests`` table (what the DAG reads), and its parameters."""
    with fresh_source_database(pg_database, "faults") as (source, params):
        yield source, params


def conn_json(params: dict[str, Any]) -> str:
    return airflow_conn_json(params)
