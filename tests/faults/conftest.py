"""Fixtures of the fault tests, and a summary table of their figures at the end of the session."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import PG_ADMIN_DSN, airflow_conn_json, pg_connector
from tests.faults.support import RESULTS
from ticketsync.local import LocalAirflow
from ticketsync.source import Dialect, SourceTable

_SESSION = {"ran": False}


@pytest.fixture(scope="session", autouse=True)
def _fresh_results() -> None:
    shutil.rmtree(RESULTS, ignore_errors=True)
    _SESSION["ran"] = True


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("airflow")
    LocalAirflow(home=home).migrate()
    return home


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, dict[str, Any]]]:
    """A fresh database holding the default ``ticket_requests`` table (what the DAG reads), and its parameters."""
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"ticketsync_faults_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params = {**pg_database, "dbname": name}
    source = SourceTable(pg_connector(params), Dialect.POSTGRES)
    source.ensure_schema()
    try:
        yield source, params
    finally:
        source.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def conn_json(params: dict[str, Any]) -> str:
    return airflow_conn_json(params)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the figures the fault tests saved (``.artifacts/faults/*.json``)."""
    if not _SESSION["ran"] or not RESULTS.is_dir():
        return
    for path in sorted(RESULTS.glob("*.json")):
        data = json.loads(path.read_text())
        terminalreporter.section(f"ticketsync {path.stem}")
        columns = sorted({key for result in data.values() for key in result if key != "faults"})
        columns = [c for c in _ORDER if c in columns] + [c for c in columns if c not in _ORDER]
        terminalreporter.write_line(" | ".join(["case", *columns, "faults injected"]))
        for name, result in data.items():
            faults = ", ".join(f"{k}={v}" for k, v in sorted(result.get("faults", {}).items()))
            terminalreporter.write_line(" | ".join([name, *(str(result.get(c, "")) for c in columns), faults]))


_ORDER = ("rows", "created", "adopted", "rejected", "failed", "pending", "duplicates", "attempts", "requests",
          "throttled", "seconds")
