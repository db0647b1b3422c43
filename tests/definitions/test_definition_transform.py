"""The transform a definition drives (ticketsync.definitions.transform): pure, no Airflow, no I/O."""

from __future__ import annotations

from pathlib import Path

from ticketsync.definitions import load_definition, packaged_definition
from ticketsync.definitions.transform import DefinitionTransform, transform_for
from ticketsync.models import CaseBody, PreparedCase, Rejection, SourceRow
from ticketsync.transform import prepare
from ticketsync.updates import UPDATABLE_FIELDS, desired_fields

REPO = Path(__file__).resolve().parents[2]
CARD = packaged_definition("sn_bom_credit_card_service")
SYS_ID = "0123456789abcdef0123456789abcdef"


def card_row(**values: object) -> SourceRow:
    base: dict[str, object] = {
        "id": 7, "request_id": "CARD-7", "source_system": "cards-crm", "short_description": "Card blocked",
        "description": "Declined abroad", "consumer_number": "C-0001", "account_number": "CC-400001",
        "priority": "High", "contact_type": " Phone ", "notes": "called",
    }
    return SourceRow.model_validate({**base, **values})


def test_a_card_row_becomes_the_body_the_definition_maps() -> None:
    case = DefinitionTransform(CARD).prepare(card_row())
    assert isinstance(case, PreparedCase)
    assert case.table == "sn_bom_credit_card_service"
    assert case.body.to_json() == {
        "correlation_id": "CARD-7", "correlation_display": "cards-crm", "short_description": "Card blocked",
        "description": "Declined abroad", "priority": "2", "contact_type": "phone", "category": "1",
        "work_notes": "called",
    }
    assert [(k.key.column, k.key.field, k.key.table, k.value) for k in case.keys] == [
        ("consumer_number", "consumer", "csm_consumer", "C-0001"),
        ("account_number", "sold_product", "sn_bom_financial_account", "CC-400001"),
    ]
    resolved = case.body.model_copy(update={"consumer": SYS_ID})
    assert resolved.to_json()["consumer"] == SYS_ID


def test_every_broken_rule_is_named_by_its_column_in_the_definitions_order() -> None:
    row = card_row(short_description="  ", priority="urgent", consumer=SYS_ID, account_number=None,
                   description="x" * 4001, notes=b"\xff")
    result = DefinitionTransform(CARD).prepare(row)
    assert isinstance(result, Rejection)
    assert [error.column for error in result.errors] == [
        "short_description", "description", "consumer_number", "sold_product", "priority", "notes"]
    reason = result.reason
    assert "priority: must be one of 1, 2, 3, 4 or critical, high, moderate, low, got 'urgent'" in reason
    assert "description: is 4001 characters long, at most 4000 allowed" in reason
    assert "consumer_number: give either consumer (the sys_id) or consumer_number (the key), not both" in reason
    assert "sold_product: is required for sn_bom_credit_card_service (give sold_product or account_number)" in reason
    assert "notes: must be text, got bytes" in reason


def test_a_valid_row_is_not_rejected_control() -> None:
    assert isinstance(DefinitionTransform(CARD).prepare(card_row(priority=3)), PreparedCase)


def test_a_key_without_a_sys_id_column_is_required_by_its_key() -> None:
    custom = load_definition(REPO / "docs" / "examples" / "definitions" / "u_branch_visit_case.yaml")
    transform = DefinitionTransform(custom)
    row = SourceRow.model_validate({"id": 1, "visit_id": "V-1", "summary": "Visit", "branch_code": "B-12",
                                    "reason": "Advice"})
    result = transform.prepare(row)
    assert isinstance(result, Rejection)
    assert result.reason == "customer_number: is required for u_branch_visit_case"
    case = transform.prepare(row.model_copy(update={"customer_number": "C-0002"}))
    assert isinstance(case, PreparedCase)
    assert case.body.to_json() == {"correlation_id": "V-1", "short_description": "Visit", "u_branch_code": "B-12",
                                   "u_visit_reason": "advice", "u_appointment_channel": "web"}


def test_the_loan_definition_keeps_its_own_transform() -> None:
    assert transform_for(packaged_definition("sn_bom_loan_service")) is prepare
    assert transform_for(None) is prepare
    assert transform_for(CARD) is not prepare


def test_an_update_may_change_the_definitions_mapped_fields_and_the_loans_stay_as_they_were() -> None:
    card = DefinitionTransform(CARD).prepare(card_row())
    assert isinstance(card, PreparedCase)
    assert type(card.body).updatable_fields == CARD.updatable_fields() == (
        "correlation_display", "short_description", "description", "consumer", "sold_product", "assignment_group",
        "service_definition", "contact_type", "priority")  # not category (a constant), not work_notes (the note)
    assert desired_fields(card.body)["description"] == "Declined abroad"
    assert "category" not in desired_fields(card.body)
    # the rule gives the loan definition exactly the fields the loan's updates always changed
    assert set(packaged_definition("sn_bom_loan_service").updatable_fields()) == set(UPDATABLE_FIELDS)
    assert CaseBody.updatable_fields == UPDATABLE_FIELDS
    assert "description" not in UPDATABLE_FIELDS  # control: the loan's own list does not have the card's fields


def test_the_status_dag_id_is_named_or_derived() -> None:
    assert packaged_definition("sn_bom_loan_service").status_id() == "servicenow_case_status"
    assert CARD.status_id() == "servicenow_credit_card_status"
    assert CARD.model_copy(update={"dag_id": "cards"}).status_id() == "cards_status"
