"""The DAG factory: one sync DAG per definition, each with its own id, source, Params and Assets; an invalid
definition fails the DAG file's import naming the file, the field and the rule (docs/definitions.md, ADR 17)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
CARD = REPO / "plugins" / "ticketsync" / "definitions" / "sn_bom_credit_card_service.yaml"


def parse(monkeypatch: pytest.MonkeyPatch, extra: Path | None = None) -> Any:
    """The dags folder parsed as the DAG processor does: no AIRFLOW_CONN_*, the extra definitions folder if any."""
    from airflow.dag_processing.dagbag import DagBag

    for key in [key for key in os.environ if key.startswith("AIRFLOW_CONN_")]:
        monkeypatch.delenv(key)
    if extra is None:
        monkeypatch.delenv("TICKETSYNC_DEFINITIONS_DIR", raising=False)
    else:
        monkeypatch.setenv("TICKETSYNC_DEFINITIONS_DIR", str(extra))
    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="module")
def dagbag() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        yield parse(monkeypatch)


def test_each_shipped_definition_is_a_sync_dag_and_a_status_dag_of_its_own(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    files = {dag_id: Path(dag.fileloc).name for dag_id, dag in dagbag.dags.items()}
    assert files == {
        "servicenow_ticket_sync": "servicenow_ticket_sync.py",
        "servicenow_credit_card_sync": "servicenow_ticket_sync.py",
        "servicenow_case_status": "servicenow_case_status.py",  # the loan's, named in its definition
        "servicenow_credit_card_status": "servicenow_case_status.py",  # derived: _sync -> _status
    }


def test_the_credit_card_status_dag_follows_its_own_tables(dagbag: Any) -> None:
    from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable

    loan, card = dagbag.dags["servicenow_case_status"], dagbag.dags["servicenow_credit_card_status"]
    timetable = card.timetable
    assert isinstance(timetable, AssetOrTimeSchedule)
    assert isinstance(timetable.timetable, CronTriggerTimetable)
    assert timetable.timetable.expression == "*/5 * * * *"
    assert timetable.asset_condition.uri == "servicenow://servicenow_default/sn_bom_credit_card_service"
    pull = card.get_task("pull")
    assert [asset.uri for asset in pull.inlets] == ["servicenow://servicenow_default/sn_bom_credit_card_service"]
    assert [asset.uri for asset in pull.outlets] == ["ticketsync://ticket_source/card_service_requests"]
    assert (pull.source_conn_id, pull.source_table) == ("ticket_source", "card_service_requests")
    assert pull.target_table() == "sn_bom_credit_card_service"  # every card row's case is in the card table
    assert loan.get_task("pull").target_table() is None  # a loan row names its table (target_table)
    assert list(card.params) == list(loan.params)
    assert "`card_service_requests`" in card.doc_md
    assert "`servicenow_credit_card_sync`" in card.doc_md


def test_the_credit_card_dag_has_its_own_source_assets_and_params(dagbag: Any) -> None:
    loan, card = dagbag.dags["servicenow_ticket_sync"], dagbag.dags["servicenow_credit_card_sync"]
    assert [task.task_id for task in card.tasks] == [task.task_id for task in loan.tasks]
    load = card.get_task("load")
    assert [asset.uri for asset in load.inlets] == ["ticketsync://ticket_source/card_service_requests"]
    assert [(type(outlet).__name__, outlet.name) for outlet in load.outlets] == [
        ("AssetAlias", "servicenow_default.sn_bom_credit_card_service.cases")]
    for task in card.tasks:
        kwargs = task.partial_kwargs if hasattr(task, "partial_kwargs") else vars(task)
        assert (kwargs["source_conn_id"], kwargs["source_table"]) == ("ticket_source", "card_service_requests")
        assert kwargs["definition"]["target_table"] == "sn_bom_credit_card_service"
    assert list(card.params) == list(loan.params)
    assert "card_service_requests_replays" in card.params.get_param("request_ids").description
    assert "`card_service_requests`" in card.doc_md
    assert "servicenow://servicenow_default/sn_bom_credit_card_service" in card.doc_md
    # the loan DAG keeps its contract: ticket_requests, its replays table, its Asset
    assert "ticket_requests_replays" in loan.params.get_param("request_ids").description
    assert [asset.uri for asset in loan.get_task("load").inlets] == ["ticketsync://ticket_source/ticket_requests"]


def test_a_definition_in_the_extra_folder_becomes_a_dag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = CARD.read_text(encoding="utf-8")
    (tmp_path / "disputes.yaml").write_text(
        text.replace("servicenow_credit_card_sync", "servicenow_card_dispute_sync")
        .replace("target_table: sn_bom_credit_card_service", "target_table: sn_bom_credit_card_dispute")
        .replace("table: card_service_requests", "table: card_disputes")
        .replace("conn_id: ticket_source", "conn_id: disputes_source"),
        encoding="utf-8",
    )
    bag = parse(monkeypatch, tmp_path)
    assert bag.import_errors == {}
    load = bag.dags["servicenow_card_dispute_sync"].get_task("load")
    assert [asset.uri for asset in load.inlets] == ["ticketsync://disputes_source/card_disputes"]
    assert [outlet.name for outlet in load.outlets] == ["servicenow_default.sn_bom_credit_card_dispute.cases"]
    assert {"servicenow_ticket_sync", "servicenow_credit_card_sync"} <= set(bag.dags)
    status = bag.dags["servicenow_card_dispute_status"].get_task("pull")
    assert [asset.uri for asset in status.inlets] == ["servicenow://servicenow_default/sn_bom_credit_card_dispute"]
    assert [asset.uri for asset in status.outlets] == ["ticketsync://disputes_source/card_disputes"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("on_no_match: empty", "on_no_match: ignore"),
         "disputes.yaml: fields.assignment_group.key.on_no_match: Input should be 'reject' or 'empty'"),
        (("max_length: 160", "max_length: long"),
         "disputes.yaml: fields.short_description.max_length: Input should be a valid integer"),
        (("column: priority", "column: urgency"),
         "disputes.yaml: fields.priority.column: 'urgency' is not a column of the source table's schema"),
        (("dag_id: servicenow_card_dispute_sync", "dag_id: servicenow_ticket_sync"),
         "disputes.yaml: dag_id: 'servicenow_ticket_sync' is also the dag_id of"),
        (("dag_id: servicenow_card_dispute_sync", "dag_id: servicenow_card_dispute_sync\nstatus_dag_id: "
          "servicenow_case_status"),
         "disputes.yaml: status_dag_id: 'servicenow_case_status' is also the status_dag_id of "),
        (("dag_id: servicenow_card_dispute_sync", "dag_id: servicenow_card_dispute_sync\nstatus_dag_id: "
          "servicenow_card_dispute_sync"),
         "disputes.yaml: status_dag_id: 'servicenow_card_dispute_sync' is the dag_id of the sync DAG"),
    ],
)
def test_an_invalid_definition_fails_the_import_naming_file_field_and_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = CARD.read_text(encoding="utf-8").replace("servicenow_credit_card_sync", "servicenow_card_dispute_sync")
    assert change[0] in text
    (tmp_path / "disputes.yaml").write_text(text.replace(*change), encoding="utf-8")
    bag = parse(monkeypatch, tmp_path)
    # both DAG files are built from the definitions: both fail, with the same message
    assert {Path(path).name for path in bag.import_errors} == {"servicenow_ticket_sync.py", "servicenow_case_status.py"}
    for error in bag.import_errors.values():
        assert "invalid sync definition: " in error
        assert message in error, error
    assert "servicenow_card_dispute_sync" not in bag.dags
    assert "servicenow_card_dispute_status" not in bag.dags
