"""Checking definitions against the instance's sys_dictionary (the emulator's, over real HTTP)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketsync.definitions import load_definition, packaged_definitions, parse_definition
from ticketsync.definitions.check import check_definition, instance_dictionary, main
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync_dev.emulator import RunningEmulator

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BROKEN = REPO / "docs" / "examples" / "definitions" / "broken_loan.yaml"


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator",
    }))
    hook = ServiceNowHook(pool_size=1)
    yield hook
    hook.close()


def test_the_shipped_definitions_match_the_instance(hook: ServiceNowHook) -> None:
    dictionary = instance_dictionary(hook)
    for definition in packaged_definitions():
        assert check_definition(definition, dictionary) == [], definition.dag_id


def test_three_deliberate_mistakes_are_each_reported(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    findings = check_definition(load_definition(BROKEN), instance_dictionary(hook))

    assert [str(finding) for finding in findings] == [
        "error   fields.short_description.max_length: 200 is larger than the instance's 160 for "
        "sn_bom_loan_service.short_description",
        "error   fields.assignment_group.reference: the instance's sn_bom_loan_service.assignment_group references "
        "sys_user_group, not sys_user",
        "error   fields.u_priority_reason: sn_bom_loan_service has no field u_priority_reason",
    ]
    # per table checked (the loan table, the key's csm_consumer): one dictionary and one choice read for its whole
    # chain of ancestors, not one per field; one sys_db_object read per table of the chains (loan, sn_bom_loan_base,
    # sn_bom_case, sn_customerservice_case, task; csm_consumer)
    assert emulator.stats()["by_table"] == {
        "sys_dictionary": {"GET": 2}, "sys_choice": {"GET": 2}, "sys_db_object": {"GET": 6},
    }


def test_inherited_fields_are_found_by_walking_the_table_hierarchy(hook: ServiceNowHook) -> None:
    """A case table declares none of the fields it is written with: short_description is task's, consumer is
    sn_customerservice_case's, service_definition is sn_bom_case's. The check walks super_class up to find them."""
    dictionary = instance_dictionary(hook)
    entries = dictionary("sn_bom_credit_card_service")
    assert entries["short_description"].max_length == 160
    assert entries["consumer"].reference == "csm_consumer"
    assert entries["service_definition"].reference == "sn_bom_service_definition"
    assert "10" in (entries["state"].choices or ())
    own = hook.list_records("sys_dictionary", query="name=sn_bom_credit_card_service", fields=("element",))
    assert [record["element"] for record in own] == [""]  # its collection row only: reading it alone finds nothing


def test_a_choice_the_instance_does_not_offer_is_an_error(hook: ServiceNowHook) -> None:
    definition = parse_definition("""
dag_id: d
target_table: sn_bom_loan_service
source: {table: t}
correlation: {id: request_id}
fields:
  short_description: {column: short_description, max_length: 160}
  contact_type: {column: contact_type, choices: [web, Phone, fax, carrier_pigeon]}
""", "d.yaml")
    found = [str(finding) for finding in check_definition(definition, instance_dictionary(hook))]
    assert found == [
        "error   fields.contact_type.choices: 'fax', 'carrier_pigeon' not in the instance's choices for "
        "sn_bom_loan_service.contact_type (chat, email, phone, social, web)",
    ]


def test_keys_unknown_tables_and_warnings(hook: ServiceNowHook) -> None:
    definition = parse_definition("""
dag_id: d
target_table: sn_bom_loan_service
source: {table: t}
correlation: {id: request_id}
fields:
  short_description: {column: short_description}
  consumer:
    sys_id: true
    key: {column: consumer_number, table: csm_consumer, field: customer_no}
  sold_product:
    sys_id: true
    key: {column: account_number, table: sn_bom_financial_account, field: account_number, max_length: 50}
  product: {column: product}
  priority: {column: priority, sys_id: true}
""", "d.yaml")
    found = [str(finding) for finding in check_definition(definition, instance_dictionary(hook))]
    assert found == [
        "warning fields.short_description.max_length: not set; the instance allows 160",
        "error   fields.consumer.key.field: csm_consumer has no field customer_no",
        "error   fields.sold_product.key.max_length: 50 is larger than the instance's 40 for "
        "sn_bom_financial_account.account_number",
        "warning fields.product: is a reference to cmdb_model: set sys_id: true so a malformed sys_id is rejected "
        "before it is sent",
        "error   fields.priority: is not a reference on the instance (its type is integer)",
    ]
    unknown = definition.model_copy(update={"target_table": "u_no_such_table"})
    assert [f.where for f in check_definition(unknown, instance_dictionary(hook))] == ["target_table"]


def test_the_command_exits_1_on_errors_and_0_on_a_clean_definition(
    hook: ServiceNowHook, capsys: pytest.CaptureFixture[str]
) -> None:
    loan = REPO / "plugins" / "ticketsync" / "definitions" / "sn_bom_loan_service.yaml"
    assert main([str(loan)]) == 0
    assert main([str(BROKEN)]) == 1
    out = capsys.readouterr().out
    assert "sn_bom_loan_service.yaml (servicenow_ticket_sync -> sn_bom_loan_service): OK" in out
    assert "broken_loan.yaml (servicenow_ticket_sync_broken -> sn_bom_loan_service): 3 finding(s)" in out
