"""What a status pull and an update rely on: journal rows, update stamps, display values, ordered date windows,
paging, and an agent's work (state changes, deletes) through the admin endpoints."""

from __future__ import annotations

import time

import pytest
import requests

from tests.support.emulator import LOAN, create, query
from ticketsync_dev.emulator import RunningEmulator

pytestmark = pytest.mark.integration
JOURNAL = "sys_journal_field"


def _journal(session: requests.Session, emulator: RunningEmulator, sys_id: str) -> list[dict[str, str]]:
    url = f"{emulator.url}/api/now/table/{JOURNAL}"
    return query(session, url, f"element_id={sys_id}^ORDERBYsys_created_on")


def test_patching_a_note_appends_one_journal_row_each_time_and_reads_back_empty(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    case = create(session, table_url, correlation_id="REQ-1", work_notes="first")

    patched = session.patch(f"{table_url}/{case['sys_id']}", json={"work_notes": "second"})
    again = session.patch(f"{table_url}/{case['sys_id']}", json={"work_notes": "second"})

    assert patched.json()["result"]["work_notes"] == again.json()["result"]["work_notes"] == ""
    entries = _journal(session, emulator, case["sys_id"])
    assert [(e["element"], e["value"], e["name"]) for e in entries] == [
        ("work_notes", "first", LOAN),
        ("work_notes", "second", LOAN),
        ("work_notes", "second", LOAN),  # the instance appends a repeated note again: the client must not resend
    ]
    assert again.json()["result"]["sys_mod_count"] == "2"


def test_an_update_moves_sys_updated_on_and_an_unchanged_one_does_not(
    session: requests.Session, table_url: str
) -> None:
    case = create(session, table_url, correlation_id="REQ-1", short_description="a")
    time.sleep(1.05)

    same = session.patch(f"{table_url}/{case['sys_id']}", json={"short_description": "a"}).json()["result"]
    changed = session.patch(f"{table_url}/{case['sys_id']}", json={"short_description": "b"}).json()["result"]

    assert (same["sys_updated_on"], same["sys_mod_count"]) == (case["sys_updated_on"], "0")
    assert changed["sys_updated_on"] > case["sys_updated_on"]
    assert changed["sys_mod_count"] == "1"


def test_display_value_all_gives_value_and_label_for_every_field(session: requests.Session, table_url: str) -> None:
    case = create(session, table_url, correlation_id="REQ-1", state="10", consumer="a" * 32)

    record = session.get(
        f"{table_url}/{case['sys_id']}",
        params={"sysparm_display_value": "all", "sysparm_fields": "state,sys_updated_on,correlation_id,consumer"},
    ).json()["result"]
    shown = session.get(f"{table_url}/{case['sys_id']}", params={"sysparm_display_value": "true"}).json()["result"]

    assert record["state"] == {"display_value": "Open", "value": "10"}
    assert record["sys_updated_on"] == {"display_value": case["sys_updated_on"], "value": case["sys_updated_on"]}
    assert record["correlation_id"] == {"display_value": "REQ-1", "value": "REQ-1"}
    assert record["consumer"]["value"] == "a" * 32
    assert record["consumer"]["link"].endswith(f"/csm_consumer/{'a' * 32}")
    assert (shown["state"], shown["category"], shown["priority"]) == ("Open", "Issue", "4 - Low")


def test_a_state_outside_the_choice_list_shows_as_its_value(session: requests.Session, table_url: str) -> None:
    case = create(session, table_url, state="99")

    record = session.get(f"{table_url}/{case['sys_id']}", params={"sysparm_display_value": "all"}).json()["result"]

    assert record["state"] == {"display_value": "99", "value": "99"}


def test_date_window_ordered_by_update_with_paging(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    ids = [create(session, table_url, correlation_id=f"REQ-{n}")["sys_id"] for n in range(5)]
    create(session, table_url, short_description="not ours")  # no correlation_id
    for index, sys_id in enumerate(ids):
        emulator.work(LOAN, sys_id, updated_on=f"2030-01-01 10:00:0{4 - index}", state="10")
    encoded = "sys_updated_on>=2030-01-01 10:00:01^correlation_idISNOTEMPTY^ORDERBYsys_updated_on"

    first = session.get(table_url, params={"sysparm_query": encoded, "sysparm_limit": "2", "sysparm_fields": "sys_id"})
    rest = session.get(first.links["next"]["url"])

    assert first.headers["X-Total-Count"] == "4"
    got = [r["sys_id"] for r in first.json()["result"] + rest.json()["result"]]
    assert got == [ids[3], ids[2], ids[1], ids[0]]
    assert "next" not in rest.links


def test_agent_work_changes_state_closes_and_journals(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    case = create(session, table_url, correlation_id="REQ-1")

    answer = requests.post(
        f"{emulator.url}/_emulator/work/{LOAN}/{case['sys_id']}",
        json={"state": "3", "comments": "Closed after review", "sys_updated_on": "2030-01-01 00:00:00"},
        timeout=5,
    )

    assert answer.status_code == 200
    record = query(session, table_url, "correlation_id=REQ-1")[0]
    assert (record["state"], record["active"], record["sys_updated_on"]) == ("3", "false", "2030-01-01 00:00:00")
    assert record["sys_updated_by"] == "agent"
    entries = _journal(session, emulator, case["sys_id"])
    assert [(e["element"], e["value"], e["sys_created_by"]) for e in entries] == [
        ("comments", "Closed after review", "agent")
    ]


def test_agent_work_refuses_a_bad_stamp_and_a_missing_case(emulator: RunningEmulator) -> None:
    missing = requests.post(f"{emulator.url}/_emulator/work/{LOAN}/{'0' * 32}", json={"state": "3"}, timeout=5)
    bad = requests.post(
        f"{emulator.url}/_emulator/work/{LOAN}/{'0' * 32}", json={"sys_updated_on": "yesterday"}, timeout=5
    )

    assert missing.status_code == 404
    assert bad.status_code == 400


def test_admin_delete_removes_a_case(session: requests.Session, emulator: RunningEmulator, table_url: str) -> None:
    case = create(session, table_url, correlation_id="REQ-1")

    deleted = requests.delete(f"{emulator.url}/_emulator/records/{LOAN}/{case['sys_id']}", timeout=5)
    again = requests.delete(f"{emulator.url}/_emulator/records/{LOAN}/{case['sys_id']}", timeout=5)

    assert (deleted.status_code, again.status_code) == (204, 404)
    assert query(session, table_url, "correlation_id=REQ-1") == []


def test_dates_compare_to_the_second_in_utc_also_through_gs_date_generate(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    """servicenow.md: `sys_updated_on>=2026-12-01 10:00:00`, or `javascript:gs.dateGenerate(...)`, to the second."""
    stamps = ["2030-01-01 09:59:59", "2030-01-01 10:00:00", "2030-01-01 10:00:01"]
    for index, stamp in enumerate(stamps):
        sys_id = create(session, table_url, correlation_id=f"REQ-{index}")["sys_id"]
        emulator.work(LOAN, sys_id, updated_on=stamp, state="10")

    def ids(encoded: str) -> list[str]:
        return [r["correlation_id"] for r in query(session, table_url, f"{encoded}^ORDERBYsys_updated_on")]

    assert ids("sys_updated_on>=2030-01-01 10:00:00") == ["REQ-1", "REQ-2"]
    assert ids("sys_updated_on>2030-01-01 10:00:00") == ["REQ-2"]  # the same second is not after it
    assert ids("sys_updated_on<2030-01-01 10:00:00") == ["REQ-0"]
    assert ids("sys_updated_on>=javascript:gs.dateGenerate('2030-01-01','10:00:00')") == ["REQ-1", "REQ-2"]
    assert ids("sys_updated_on>javascript:gs.dateGenerate('2030-01-01','10:00:00')") == ["REQ-2"]
    assert ids("sys_updated_on<=javascript:gs.dateGenerate('2030-01-01','start')") == []
    assert ids("sys_updated_on<=javascript:gs.dateGenerate('2030-01-01','end')") == ["REQ-0", "REQ-1", "REQ-2"]
