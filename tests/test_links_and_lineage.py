"""The records link's URL, the OpenLineage dataset names, the Assets, and how alerts read (pure functions)."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import parse_qs, urlparse

from airflow.sdk import Connection

from ticketsync.alerts import Alert
from ticketsync.assets import cases_created_alias, cases_event_extra, servicenow_asset, source_asset
from ticketsync.lineage import DatasetName, operator_lineage, servicenow_dataset, source_dataset
from ticketsync.links import MAX_LINKED_IDS, records_url


def query_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["sysparm_query"][0]


def test_few_records_are_linked_by_their_correlation_ids() -> None:
    url = records_url("https://acme.service-now.com", "sn_bom_loan_service", correlation_ids=["A-1", "B#2"])
    assert url.startswith("https://acme.service-now.com/sn_bom_loan_service_list.do?sysparm_query=")
    assert "#" not in url  # encoded: a '#' would end the URL
    assert query_of(url) == "correlation_idINA-1,B#2^ORDERBYcorrelation_id"


def test_many_records_are_linked_by_the_creation_window_and_creator() -> None:
    ids = [f"R-{i}" for i in range(MAX_LINKED_IDS + 1)]
    window = (datetime(2026, 3, 1, 10, 0, 30, tzinfo=UTC), datetime(2026, 3, 1, 10, 7, 0, tzinfo=UTC))
    url = records_url("https://acme.service-now.com/", "sn_bom_loan_service", correlation_ids=ids, window=window,
                      created_by="integration.user")
    assert query_of(url) == ("sys_created_on>=2026-03-01 09:59:30^sys_created_on<=2026-03-01 10:08:00"
                             "^sys_created_by=integration.user^ORDERBYsys_created_on")
    assert len(url) < 400


def test_openlineage_names_follow_the_naming_spec() -> None:
    pg = Connection(conn_id="s", conn_type="postgres", host="db.bank.internal", port=5433, schema="requests")
    assert source_dataset(pg, "ticket_requests", "sync").namespace == "postgres://db.bank.internal:5433"
    assert source_dataset(pg, "ticket_requests", "sync").name == "requests.sync.ticket_requests"
    assert source_dataset(pg, "ticket_requests").name == "requests.public.ticket_requests"
    lite = Connection(conn_id="s", conn_type="sqlite", host="/var/lib/ticketsync/source.db")
    assert source_dataset(lite, "ticket_requests").namespace.startswith("file://")
    assert source_dataset(lite, "ticket_requests").name == "/var/lib/ticketsync/source.db.ticket_requests"
    maria = Connection(conn_id="s", conn_type="mysql", host="db.bank.internal", schema="requests")
    expected = DatasetName("mysql://db.bank.internal:3306", "requests.ticket_requests")
    assert source_dataset(maria, "ticket_requests") == expected
    target = servicenow_dataset("https://acme.service-now.com:443", "sn_bom_loan_service")
    assert (target.namespace, target.name) == ("https://acme.service-now.com", "sn_bom_loan_service")
    assert servicenow_dataset("http://127.0.0.1:8765", "t").namespace == "http://127.0.0.1:8765"


def test_operator_lineage_carries_the_counts_and_a_dry_run_has_no_output() -> None:
    source = source_dataset(Connection(conn_id="s", conn_type="sqlite", host="/x.db"), "ticket_requests")
    target = servicenow_dataset("https://acme.service-now.com", "sn_bom_loan_service")
    lineage = operator_lineage(source, target, {"taken": 5, "created": 4, "adopted": 1, "posts": 4})
    assert [d.name for d in lineage.outputs] == ["sn_bom_loan_service"]
    facet = lineage.run_facets["ticketsync"]
    assert (facet.taken, facet.created, facet.adopted, facet.posts, facet.dryRun) == (5, 4, 1, 4, False)
    assert operator_lineage(source, target, {"taken": 5}, dry_run=True).outputs == []


def test_assets_are_static_and_stable() -> None:
    assert source_asset().uri == "ticketsync://ticket_source/ticket_requests"
    assert servicenow_asset().uri == "servicenow://servicenow_default/sn_bom_loan_service"
    assert servicenow_asset().name == "servicenow_default.sn_bom_loan_service"
    assert cases_created_alias().name == "servicenow_default.sn_bom_loan_service.cases"


def test_a_cases_event_names_the_run_and_the_loader_and_counts_every_outcome() -> None:
    extra = cases_event_extra("d", "manual__1", (1, 3), {"created": 7, "adopted": 2, "rejected": 1, "pending": 4})
    assert extra == {"dag_id": "d", "run_id": "manual__1", "loader": 1, "loaders": 3,
                     "created": 7, "adopted": 2, "failed": 0, "rejected": 1}


def test_an_alert_names_where_what_and_how_many_and_escapes_html() -> None:
    alert = Alert(kind="task_failed", headline="load failed", dag_id="d", task_id="load", run_id="r1", try_number=2,
                  details=["Error: <boom>"], counts={"claimed": 3, "created_created": 1, "rejected": 2},
                  errors=[("REQ-1", "rejected", "consumer: is required")], run_url="http://ui/dags/d/runs/r1")
    text = alert.text()
    assert text.splitlines()[:3] == ["[ticketsync] d: load failed", "DAG d, task load, run r1, try 2", "Error: <boom>"]
    assert "Rows of this run: claimed 3, created 1, adopted 0, rejected 2, failed 0, still pending 0" in text
    assert "  rejected REQ-1: consumer: is required" in text
    assert "&lt;boom&gt;" in alert.html()
    assert alert.payload()["text"] == text
    assert alert.payload()["ticketsync"]["errors"] == [
        {"request_id": "REQ-1", "status": "rejected", "error": "consumer: is required"}]
