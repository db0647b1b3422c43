"""Fixtures of the fault tests, and a summary table of their figures at the end of the session."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.support.faults import RESULTS
from ticketsync.source import SourceTable

_SESSION = {"ran": False}


@pytest.fixture(scope="session", autouse=True)
def _fresh_results() -> None:
    shutil.rmtree(RESULTS, ignore_errors=True)
    _SESSION["ran"] = True


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, dict[str, Any]]]:
    """A fresh database holding the default ``ticket_requests`` table (what the DAG reads), and its parameters."""
    with fresh_source_database(pg_database, "faults") as (source, params):
        yield source, params


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
