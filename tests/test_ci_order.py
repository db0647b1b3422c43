"""`make test` starts the slowest files first (tests/conftest.py, SLOWEST_FIRST): a file that runs the DAG through
Airflow and is missing from that list would start late and leave one pytest-xdist worker running alone at the end."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import SLOWEST_FIRST

TESTS = Path(__file__).resolve().parent
# What starts Airflow (15 s or more each time): a DAG run, the `make ui` stack, the soak and scale-out scripts.
STARTS_AIRFLOW = re.compile(r"\.run_dag\(|\.start_dag_run\(|\bLocalStack\(|scripts/(soak|scaleout)\.py")


def test_every_file_that_starts_airflow_is_among_the_slowest_first() -> None:
    starting = {
        f"tests/{path.relative_to(TESTS)}" for path in TESTS.rglob("test_*.py")
        if STARTS_AIRFLOW.search(path.read_text())
    }
    assert len(starting) >= 12, starting  # the pattern still finds them
    assert starting - set(SLOWEST_FIRST) == set()


def test_the_slowest_first_are_files_that_exist_once_each() -> None:
    assert len(set(SLOWEST_FIRST)) == len(SLOWEST_FIRST)
    assert [name for name in SLOWEST_FIRST if not (TESTS.parent / name).is_file()] == []
