"""The transform, without Airflow or any network: every rule, with the reason the user sees."""

from __future__ import annotations

from typing import Any

import pytest

from ticketsync.models import TARGETS, CaseBody, PreparedCase, Rejection, SourceRow, ValidatedRequest
from ticketsync.transform import BODY_SOURCES, prepare
from ticketsync_dev.samples import INVALID_CHANGES, sample_requests

CONSUMER = "0f2c6e1a9b3d4c5e8f7a6b5c4d3e2f1a"
ACCOUNT = "a1b2c3d4e5f60718293a4b5c6d7e8f90"


def row(**changes: Any) -> SourceRow:
    values: dict[str, Any] = {
        "id": 42,
        "request_id": "OB-2026-000042",
        "source_system": "online-banking",
        "target_table": "sn_bom_loan_service",
        "consumer": CONSUMER,
        "sold_product": ACCOUNT,
        "short_description": "Request for loan forgiveness",
    }
    values.update(changes)
    return SourceRow(**values)


def body(**changes: Any) -> dict[str, str]:
    result = prepare(row(**changes))
    assert isinstance(result, PreparedCase), getattr(result, "reason", result)
    return result.body.to_json()


def reason(**changes: Any) -> str:
    result = prepare(row(**changes))
    assert isinstance(result, Rejection), f"expected a rejection, got {result}"
    return result.reason


def test_valid_row_maps_source_names_to_table_api_names() -> None:
    assert body(notes="Customer lost their job", category="1", contact_type="web") == {
        "correlation_id": "OB-2026-000042",
        "correlation_display": "online-banking",
        "short_description": "Request for loan forgiveness",
        "consumer": CONSUMER,
        "sold_product": ACCOUNT,
        "contact_type": "web",
        "category": "1",
        "work_notes": "Customer lost their job",
    }


def test_the_source_documents_example_becomes_the_documented_body() -> None:
    sent = body(
        assignment_group="d625dccec0a8016700a222a0f7900d6c",
        contact_type="web",
        product="e8caedcbc0a80164017df472f39eaed1",
        service_definition="5a7ef5a1c3a03010d5c4a3f4b3012f3b",
    )
    assert sent["assignment_group"] == "d625dccec0a8016700a222a0f7900d6c"
    assert sent["service_definition"] == "5a7ef5a1c3a03010d5c4a3f4b3012f3b"
    assert all(isinstance(value, str) for value in sent.values())


def test_no_sys_field_can_be_sent() -> None:
    assert not any(name.startswith("sys_") for name in CaseBody.model_fields)
    with pytest.raises(ValueError, match="sys_id"):
        CaseBody(correlation_id="A", short_description="x", sys_id="abc")  # type: ignore[call-arg]


def test_blank_optional_fields_are_left_out_so_instance_defaults_apply() -> None:
    sent = body(assignment_group="", contact_type="  ", category=None, notes="\n", product=None)
    assert set(sent) == {"correlation_id", "correlation_display", "short_description", "consumer", "sold_product"}


@pytest.mark.parametrize(
    ("given", "sent"),
    [("0", "0"), ("1", "1"), ("2", "2"), (2, "2"), ("Question", "0"), ("issue", "1"), (" FEATURE ", "2")],
)
def test_category_accepts_values_and_labels_and_sends_the_value(given: Any, sent: str) -> None:
    assert body(category=given)["category"] == sent


@pytest.mark.parametrize("given", ["3", "Complaint", "-1", 1.5, True])
def test_category_outside_the_choices_is_rejected(given: Any) -> None:
    assert reason(category=given).startswith("category: ")


@pytest.mark.parametrize("given", ["chat", "email", "phone", "social", "web", "Web", " EMAIL "])
def test_contact_type_choices(given: Any) -> None:
    assert body(contact_type=given)["contact_type"] == given.strip().lower()


def test_contact_type_outside_the_choices_is_rejected() -> None:
    assert reason(contact_type="fax") == "contact_type: must be one of chat, email, phone, social, web, got 'fax'"


@pytest.mark.parametrize("column", ["consumer", "sold_product", "assignment_group", "product", "service_definition"])
def test_reference_fields_must_be_sys_ids(column: str) -> None:
    assert reason(**{column: "12345"}) == f"{column}: must be a 32-character hexadecimal sys_id, got '12345'"
    assert reason(**{column: "g" * 32}).startswith(f"{column}: must be a 32-character")
    assert reason(**{column: "a" * 33}).startswith(f"{column}: must be a 32-character")


def test_reference_sys_ids_are_normalised_to_lowercase() -> None:
    assert body(consumer=CONSUMER.upper())["consumer"] == CONSUMER


def test_short_description_rules() -> None:
    assert reason(short_description=None) == "short_description: is required and must not be blank"
    assert reason(short_description=" \t ") == "short_description: is required and must not be blank"
    assert reason(short_description="x" * 161) == "short_description: is 161 characters long, at most 160 allowed"
    assert body(short_description="x" * 160)["short_description"] == "x" * 160
    assert body(short_description="  Loan help \n")["short_description"] == "Loan help"


def test_notes_go_to_work_notes_up_to_4000_characters() -> None:
    assert body(notes="é" * 4000)["work_notes"] == "é" * 4000
    assert reason(notes="n" * 4001) == "notes: is 4001 characters long, at most 4000 allowed"


def test_request_id_becomes_correlation_id_and_is_checked() -> None:
    assert body(request_id="CRM:2026/11#7")["correlation_id"] == "CRM:2026/11#7"
    assert reason(request_id="r" * 101) == "request_id: is 101 characters long, at most 100 allowed"
    assert reason(request_id="A,B").startswith("request_id: may only contain")
    assert reason(request_id="A^B").startswith("request_id: may only contain")
    assert reason(request_id="") == "request_id: is required and must not be blank"


def test_source_system_becomes_correlation_display_up_to_100() -> None:
    assert reason(source_system="s" * 101) == "source_system: is 101 characters long, at most 100 allowed"


def test_loan_service_case_needs_consumer_and_account() -> None:
    assert reason(consumer=None, sold_product="") == (
        "consumer: is required for sn_bom_loan_service (give consumer or consumer_number); "
        "sold_product: is required for sn_bom_loan_service (give sold_product or account_number)"
    )


def test_unsupported_target_table_is_rejected_and_blank_means_default() -> None:
    assert reason(target_table="incident") == (
        "target_table: 'incident' is not supported (supported: sn_bom_loan_service)"
    )
    result = prepare(row(target_table="  "))
    assert isinstance(result, PreparedCase)
    assert result.table == "sn_bom_loan_service"


def test_every_broken_column_is_named_in_column_order() -> None:
    text = reason(request_id="bad id", consumer="x", contact_type="fax", short_description="", notes=b"\x00")
    assert [part.split(":")[0] for part in text.split("; ")] == [
        "request_id", "consumer", "contact_type", "short_description", "notes",
    ]


@pytest.mark.parametrize("value", [b"blob", 12, 3.5, ["a"], {"a": 1}])
def test_non_text_values_in_text_columns_are_rejected_not_crashing(value: Any) -> None:
    assert reason(short_description=value) == f"short_description: must be text, got {type(value).__name__}"


@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\x7f", "\ud800"])
def test_control_characters_and_lone_surrogates_are_rejected(char: str) -> None:
    assert reason(notes=f"ab{char}c").startswith("notes: contains ")


def test_tabs_newlines_and_every_unicode_plane_pass_unchanged() -> None:
    text = "Prêt\tété\r\nローン 💸 𝔘 \U0010fffd"
    assert body(notes=text)["work_notes"] == text


def test_template_and_sql_syntax_is_just_text() -> None:
    text = "{{ params.x }} %s '; DROP TABLE ticket_requests; --"
    assert body(notes=text)["work_notes"] == text


def test_the_samples_reject_exactly_the_rows_they_break() -> None:
    rows = list(sample_requests(200, invalid_every=10))
    results = [prepare(SourceRow(id=i, **r)) for i, r in enumerate(rows, start=1)]
    rejected = [r for r in results if isinstance(r, Rejection)]
    assert len(rejected) == 20
    assert {r.reason.split(":")[0] for r in rejected} == {next(iter(c)) for c in INVALID_CHANGES}


def test_a_business_key_stands_for_the_sys_id_and_is_resolved_later() -> None:
    result = prepare(row(consumer=None, consumer_number=" C-0042 ", sold_product=None, account_number="LN-1"))
    assert isinstance(result, PreparedCase)
    assert "consumer" not in result.body.to_json()
    assert "sold_product" not in result.body.to_json()
    assert [(lookup.key.table, lookup.key.key_field, lookup.value) for lookup in result.keys] == [
        ("csm_consumer", "number", "C-0042"),
        ("sn_bom_financial_account", "account_number", "LN-1"),
    ]


def test_a_reference_given_both_ways_is_rejected_naming_the_key() -> None:
    assert reason(assignment_group="d625dccec0a8016700a222a0f7900d6c", assignment_group_name="Collections") == (
        "assignment_group_name: give either assignment_group (the sys_id) or assignment_group_name (the key), not "
        "both (assignment_group is 'd625dccec0a8016700a222a0f7900d6c', assignment_group_name is 'Collections')"
    )


def test_business_keys_are_checked_like_any_column() -> None:
    assert reason(consumer=None, consumer_number="C-1,C-2") == (
        "consumer_number: must not contain ',' (the look-up query cannot carry it), got 'C-1,C-2'"
    )
    assert reason(sold_product=None, account_number="A^B").startswith("account_number: must not contain '^'")
    assert reason(consumer=None, consumer_number="c" * 41) == (
        "consumer_number: is 41 characters long, at most 40 allowed"
    )
    assert reason(assignment_group_name="g" * 81) == "assignment_group_name: is 81 characters long, at most 80 allowed"


def test_each_body_field_has_the_rules_of_the_request_field_it_is_filled_from() -> None:
    """``to_body`` does not validate the body again: that is only sound while each body field has the type (the
    rules) of its source field."""
    for spec in TARGETS.values():
        body_fields, request_fields = spec.body_model.model_fields, ValidatedRequest.model_fields
        assert set(body_fields) == set(BODY_SOURCES)
        for name, source in BODY_SOURCES.items():
            assert (body_fields[name].annotation, body_fields[name].metadata) == (
                request_fields[source].annotation, request_fields[source].metadata), name
    # the control: fields with other rules compare unequal
    assert CaseBody.model_fields["category"].metadata != ValidatedRequest.model_fields["consumer"].metadata


@pytest.mark.parametrize("changes", [
    {}, {"notes": "\tline one\nline two\r\n", "category": "Issue", "contact_type": " EMAIL "},
    {"short_description": "  padded  ", "consumer": CONSUMER.upper(), "source_system": " "},
    {"notes": "日本語 🎉 ü", "category": 2, "product": None, "assignment_group_name": " Collections "},
])
def test_the_body_and_its_json_are_what_validating_and_dumping_give(changes: dict[str, Any]) -> None:
    """The body is built without a second validation and its JSON without ``model_dump``: both give what the
    validating and dumping path gives."""
    rows = [row(**changes), *(SourceRow(id=i, **r) for i, r in enumerate(sample_requests(50), start=1))]
    for source_row in rows:
        prepared = prepare(source_row)
        assert isinstance(prepared, PreparedCase)
        validated = CaseBody(**prepared.body.model_dump())
        assert prepared.body == validated
        assert prepared.body.model_fields_set == validated.model_fields_set
        assert prepared.body.to_json() == validated.model_dump(exclude_none=True)
        assert list(prepared.body.to_json()) == list(validated.model_dump(exclude_none=True))
