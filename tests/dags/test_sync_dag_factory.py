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


def test_each_shipped_definition_is_a_dag_of_its_own(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    sync = {dag_id for dag_id in dagbag.dags if dag_id != "servicenow_case_status"}
    assert sync == {"servicenow_ticket_sync", "servicenow_credit_card_sync"}
    assert {Path(dagbag.dags[dag_id].fileloc).name for dag_id in sync} == {"servicenow_ticket_sync.py"}


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
    ],
)
def test_an_invalid_definition_fails_the_import_naming_file_field_and_rule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    text = CARD.read_text(encoding="utf-8").replace("servicenow_credit_card_sync", "servicenow_card_dispute_sync")
    assert change[0] in text
    (tmp_path / "disputes.yaml").write_text(text.replace(*change), encoding="utf-8")
    bag = parse(monkeypatch, tmp_path)
    [(path, error)] = bag.import_errors.items()
    assert Path(path).name == "servicenow_ticket_sync.py"
    assert "invalid sync definition: " in error
    assert message in error, error
    assert "servicenow_card_dispute_sync" not in bag.dags
