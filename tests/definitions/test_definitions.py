"""Sync definitions: the shipped files load, agree with the transform, and a broken file is refused with a message
naming the file, the field and the rule."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ticketsync import models
from ticketsync.definitions import (
    DefinitionError,
    load_definition,
    load_definitions,
    packaged_definitions,
    parse_definition,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples" / "definitions"
VALID = """
dag_id: servicenow_card_sync
target_table: sn_bom_credit_card_service
source: {table: card_requests}
correlation: {id: request_id}
fields:
  short_description: {column: short_description, required: true, max_length: 160}
"""


def test_the_shipped_definitions_load() -> None:
    by_table = {definition.target_table: definition for definition in packaged_definitions()}
    assert by_table["sn_bom_loan_service"].dag_id == "servicenow_ticket_sync"
    assert by_table["sn_bom_credit_card_service"].dag_id == "servicenow_credit_card_sync"
    assert by_table["sn_bom_loan_service"].source.table == "ticket_requests"


def test_the_examples_load() -> None:
    custom = load_definition(EXAMPLES / "u_branch_visit_case.yaml")
    assert {"u_branch_code", "u_visit_reason", "u_appointment_channel"} <= set(custom.fields)
    assert custom.fields["consumer"].key is not None
    assert custom.fields["consumer"].column is None  # the key only


def test_the_loan_definition_states_the_rules_the_transform_applies() -> None:
    loan = {d.target_table: d for d in packaged_definitions()}["sn_bom_loan_service"]
    fields = loan.fields
    assert fields["short_description"].max_length == models.MAX_SHORT_DESCRIPTION
    assert fields["work_notes"].max_length == models.MAX_JOURNAL
    assert tuple(fields["contact_type"].choices or ()) == models.CONTACT_TYPES
    assert fields["category"].labels == models.CATEGORY_LABELS
    keys = {name: spec.key for name, spec in fields.items() if spec.key}
    assert {(k.column, k.max_length) for k in keys.values() if k} == {
        ("consumer_number", models.MAX_CONSUMER_NUMBER), ("account_number", models.MAX_ACCOUNT_NUMBER),
        ("assignment_group_name", models.MAX_GROUP_NAME),
    }
    spec = models.TARGETS["sn_bom_loan_service"]
    assert sorted(spec.required) == ["consumer", "short_description", "sold_product"]
    assert [(k.column, k.field, k.table, k.key_field) for k in spec.keys] == [
        ("consumer_number", "consumer", "csm_consumer", "number"),
        ("account_number", "sold_product", "sn_bom_financial_account", "account_number"),
        ("assignment_group_name", "assignment_group", "sys_user_group", "name"),
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("  short_description: {column: short_description, max_length: -1}",
         "cards.yaml: fields.short_description.max_length: Input should be greater than 0"),
        ("  short_description: {column: short_description, maxlen: 10}",
         "cards.yaml: fields.short_description.maxlen: Extra inputs are not permitted"),
        ("  sys_created_by: {value: me}",
         "cards.yaml: fields.sys_created_by.[key]: 'sys_created_by': fields starting with sys_ are written by the "
         "instance, never sent"),
        ("  consumer: {key: {column: consumer_number, table: csm_consumer, field: number}}",
         "cards.yaml: fields.consumer: a business key fills a reference field: set sys_id: true"),
        ("  consumer: {sys_id: true, key: {column: c, table: csm_consumer, field: number, on_no_match: create}}",
         "cards.yaml: fields.consumer.key.on_no_match: Input should be 'reject' or 'empty'"),
        ("  contact_type: {value: fax, choices: [web, phone]}",
         "cards.yaml: fields.contact_type: the constant 'fax' is not one of the choices"),
        ("  description: {column: short_description}",
         "cards.yaml: (top level): fields.description: column 'short_description' is already used by "
         "short_description"),
        ("  correlation_id: {column: request_id}",
         "cards.yaml: (top level): fields: correlation_id come from correlation, not from fields"),
    ],
)
def test_an_invalid_definition_names_the_file_the_field_and_the_rule(change: str, message: str) -> None:
    with pytest.raises(DefinitionError) as raised:
        parse_definition(VALID + change + "\n", "cards.yaml")
    assert message in str(raised.value)


def test_two_definitions_with_one_dag_id_are_refused(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text(VALID, encoding="utf-8")
    with pytest.raises(DefinitionError, match=r"b.yaml: dag_id: 'servicenow_card_sync' is also the dag_id of .*a.yaml"):
        load_definitions(tmp_path.glob("*.yaml"))


def test_yaml_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(DefinitionError, match=r"x.yaml: \(top level\): must be a mapping"):
        parse_definition("- a\n- b\n", "x.yaml")
    with pytest.raises(DefinitionError, match=r"x.yaml: not valid YAML"):
        parse_definition("a: [b\n", "x.yaml")


def test_a_broken_shipped_definition_fails_the_dag_import(tmp_path: Path) -> None:
    """The DAG file reads the packaged definitions when it is parsed: a broken one is an import error naming it."""
    plugins = tmp_path / "plugins"
    shutil.copytree(REPO / "plugins", plugins, ignore=shutil.ignore_patterns("__pycache__"))
    loan = plugins / "ticketsync" / "definitions" / "sn_bom_loan_service.yaml"
    loan.write_text(loan.read_text(encoding="utf-8").replace("max_length: 160", "max_length: many"), encoding="utf-8")
    script = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(REPO / 'dags')!r})\n"
        "print('\\n'.join(bag.import_errors.values()))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(plugins)}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=True)
    assert "invalid sync definition" in result.stdout, result.stdout + result.stderr
    assert "sn_bom_loan_service.yaml: fields.short_description.max_length: Input should be a valid integer" in (
        result.stdout
    )
