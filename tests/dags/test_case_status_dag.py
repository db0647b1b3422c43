"""The status DAG parses without connections, and is wired and scheduled as documented (issue 13)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"


@pytest.fixture(scope="module")
def dag() -> Iterator[Any]:
    from airflow.dag_processing.dagbag import DagBag

    saved = {key: os.environ.pop(key) for key in list(os.environ) if key.startswith("AIRFLOW_CONN_")}
    try:
        bag = DagBag(dag_folder=str(DAGS / "servicenow_case_status.py"))
        assert bag.import_errors == {}
        yield bag.dags["servicenow_case_status"]
    finally:
        os.environ.update(saved)


def test_every_five_minutes_and_on_the_sync_dags_outlet(dag: Any) -> None:
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    timetable = dag.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert isinstance(timetable.timetable, CronTriggerTimetable)
    assert (timetable.timetable.expression, timetable.timetable.timezone) == ("*/5 * * * *", "UTC")
    assert timetable.asset_condition.uri == "servicenow://servicenow_default/sn_bom_loan_service"
    assert (dag.max_active_runs, dag.catchup) == (1, False)


def test_lineage_instance_table_in_source_table_out(dag: Any) -> None:
    task = dag.get_task("pull")

    assert [asset.uri for asset in task.inlets] == ["servicenow://servicenow_default/sn_bom_loan_service"]
    assert [asset.uri for asset in task.outlets] == ["ticketsync://ticket_source/ticket_requests"]
    assert task.retries >= 2
    assert set(dag.params.keys()) == {"page_size", "overlap_seconds", "max_pages", "verify_batch"}
