"""Reference tables and the dictionary of the emulator, over real HTTP: seeded, queried like any table."""

from __future__ import annotations

import pytest
import requests

from tests.support.emulator import LOAN, query
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.reference import AMBIGUOUS_KEYS, seeded_sys_id

pytestmark = pytest.mark.integration


def _url(emulator: RunningEmulator, table: str) -> str:
    return f"{emulator.url}/api/now/table/{table}"


def test_seeded_keys_are_found_with_an_in_query(emulator: RunningEmulator, session: requests.Session) -> None:
    found = query(session, _url(emulator, "csm_consumer"), "numberINC-0001,C-0003,C-9999",
                  sysparm_fields="sys_id,number")

    assert sorted((r["number"], r["sys_id"]) for r in found) == [
        ("C-0001", seeded_sys_id("csm_consumer", "C-0001")),
        ("C-0003", seeded_sys_id("csm_consumer", "C-0003")),
    ]


def test_financial_accounts_carry_account_number_external_id_and_their_consumer(
    emulator: RunningEmulator, session: requests.Session
) -> None:
    [account] = query(session, _url(emulator, "sn_bom_financial_account"), "external_id=CORE-LN-0002")

    assert account["account_number"] == "LN-100002"
    assert account["consumer"] == seeded_sys_id("csm_consumer", "C-0002")
    assert account["sys_class_name"] == "sn_bom_financial_account"


@pytest.mark.parametrize("table", sorted(AMBIGUOUS_KEYS))
def test_the_seed_holds_keys_that_name_two_records(
    emulator: RunningEmulator, session: requests.Session, table: str
) -> None:
    field, key = AMBIGUOUS_KEYS[table]
    assert len(query(session, _url(emulator, table), f"{field}={key}")) == 2


def test_a_reset_restores_the_seed(emulator: RunningEmulator, session: requests.Session) -> None:
    url = _url(emulator, "sys_user_group")
    before = len(query(session, url, ""))
    sys_id = seeded_sys_id("sys_user_group", "Loan Servicing")
    assert session.delete(f"{url}/{sys_id}").status_code == 204
    assert len(query(session, url, "")) == before - 1

    emulator.reset()

    assert len(query(session, url, "")) == before


def test_reference_fields_of_a_reference_table_render_as_links(
    emulator: RunningEmulator, session: requests.Session
) -> None:
    response = session.get(f"{_url(emulator, 'sn_bom_financial_account')}/"
                           f"{seeded_sys_id('sn_bom_financial_account', 'LN-100001')}")
    consumer = response.json()["result"]["consumer"]
    assert consumer == {
        "link": f"{emulator.url}/api/now/table/csm_consumer/{seeded_sys_id('csm_consumer', 'C-0001')}",
        "value": seeded_sys_id("csm_consumer", "C-0001"),
    }


def test_the_dictionary_describes_case_and_reference_fields(
    emulator: RunningEmulator, session: requests.Session
) -> None:
    own = query(session, _url(emulator, "sys_dictionary"), f"name={LOAN}", sysparm_fields="element,internal_type")
    assert own == [{"element": "", "internal_type": "collection"}]  # the fields are declared on its ancestors
    chain = f"{LOAN},sn_bom_loan_base,sn_bom_case,sn_customerservice_case,task"
    rows = query(session, _url(emulator, "sys_dictionary"), f"nameIN{chain}^element!=",
                 sysparm_fields="name,element,internal_type,max_length,reference,mandatory")
    by_element = {row.pop("element"): row for row in rows}
    declared = {element: row.pop("name") for element, row in by_element.items()}
    assert (declared["short_description"], declared["consumer"], declared["service_definition"]) == (
        "task", "sn_customerservice_case", "sn_bom_case")

    assert by_element["short_description"] == {
        "internal_type": "string", "max_length": "160", "reference": "",
        "mandatory": "false",
    }
    assert by_element["sold_product"]["reference"] == "sn_install_base_sold_product"
    assert by_element["consumer"]["reference"] == "csm_consumer"
    assert by_element["work_notes"]["internal_type"] == "journal_input"
    assert "u_anything" not in by_element
    groups = query(session, _url(emulator, "sys_dictionary"), "name=sys_user_group^element=name")
    assert [(g["max_length"], g["mandatory"]) for g in groups] == [("80", "true")]


def test_the_choice_lists_are_readable_and_match_the_display_values(
    emulator: RunningEmulator, session: requests.Session
) -> None:
    """servicenow.md: choices (`sys_choice`) describe every choice field and are readable through the Table API."""
    case_choices = _url(emulator, "sys_choice")
    states = query(session, case_choices, "name=sn_customerservice_case^element=state^ORDERBYsequence")
    case = session.post(_url(emulator, LOAN), json={"state": "18"}).json()["result"]
    shown = session.get(f"{_url(emulator, LOAN)}/{case['sys_id']}", params={"sysparm_display_value": "all"})

    assert [(c["value"], c["label"]) for c in states] == [
        ("1", "New"), ("10", "Open"), ("18", "Awaiting Info"), ("6", "Resolved"), ("3", "Closed"), ("7", "Cancelled"),
    ]
    assert shown.json()["result"]["state"] == {"display_value": "Awaiting Info", "value": "18"}
    contact_types = query(session, case_choices, "name=task^element=contact_type")
    assert {c["value"] for c in contact_types} == {"chat", "email", "phone", "social", "web"}
    described = query(session, _url(emulator, "sys_dictionary"), "name=sys_choice^element=label")
    assert [d["internal_type"] for d in described] == ["string"]


def test_the_dictionary_lists_only_the_tables_served() -> None:
    config = EmulatorConfig(tables=(LOAN, "sys_dictionary"))
    with start_emulator(config) as emulator:
        names = {record["name"] for record in emulator.store.records("sys_dictionary")}
    ancestors = {"sn_bom_loan_base", "sn_bom_case", "sn_customerservice_case", "task"}
    assert names == {LOAN, *ancestors, "sys_dictionary"}


def test_the_table_hierarchy_walks_up_by_super_class(emulator: RunningEmulator, session: requests.Session) -> None:
    url, chain, name = _url(emulator, "sys_db_object"), [], LOAN
    while name:
        [row] = query(session, url, f"name={name}", sysparm_fields="name,super_class",
                      sysparm_exclude_reference_link="true")
        chain.append(row["name"])
        parent = row["super_class"]
        name = query(session, url, f"sys_id={parent}", sysparm_fields="name")[0]["name"] if parent else ""
    assert chain == [LOAN, "sn_bom_loan_base", "sn_bom_case", "sn_customerservice_case", "task"]


def test_choice_lists_are_defined_on_the_ancestor_that_owns_them(
    emulator: RunningEmulator, session: requests.Session
) -> None:
    rows = query(session, _url(emulator, "sys_choice"), "element=state^inactive=false",
                 sysparm_fields="name,value,label")
    assert {row["name"] for row in rows} == {"sn_customerservice_case"}
    assert {row["value"]: row["label"] for row in rows}["18"] == "Awaiting Info"
    assert query(session, _url(emulator, "sys_choice"), f"name={LOAN}") == []


def test_without_seed_the_reference_tables_are_empty() -> None:
    with start_emulator(EmulatorConfig(reference_data=False)) as emulator:
        assert emulator.stats()["records"]["csm_consumer"] == 0
        assert emulator.stats()["records"]["sys_dictionary"] == 0
        assert emulator.stats()["records"]["sys_choice"] == 0


def test_stats_count_requests_by_table(emulator: RunningEmulator, session: requests.Session) -> None:
    query(session, _url(emulator, "csm_consumer"), "numberINC-0001")
    query(session, _url(emulator, "sys_user_group"), "name=Collections")
    query(session, _url(emulator, "sys_user_group"), "name=Card Services")

    assert emulator.stats()["by_table"] == {"csm_consumer": {"GET": 1}, "sys_user_group": {"GET": 2}}


def test_random_faults_can_be_limited_to_some_tables(emulator: RunningEmulator, session: requests.Session) -> None:
    emulator.set_faults(error_503=1.0, tables=["sys_user_group"])

    assert session.get(_url(emulator, "sys_user_group")).status_code == 503
    assert session.get(_url(emulator, "csm_consumer")).status_code == 200
    assert emulator.faults.to_dict()["tables"] == ["sys_user_group"]
