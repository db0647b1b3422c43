"""The Table API of the emulator, over real HTTP: auth, create, read, query, update, delete, error envelopes."""

from __future__ import annotations

import datetime
import re

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER, assert_envelope, create, query
from ticketsync_dev.emulator import RunningEmulator

SYS_ID = re.compile(r"[0-9a-f]{32}")
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
CONSUMER = "0123456789abcdef0123456789abcdef"
pytestmark = pytest.mark.integration
SOLD_PRODUCT = "fedcba9876543210fedcba9876543210"


@pytest.mark.parametrize(
    "auth", [None, (USER, "wrong"), ("someone", PASSWORD)], ids=["missing", "wrong-password", "wrong-user"]
)
def test_bad_or_missing_credentials_get_401(table_url: str, auth: tuple[str, str] | None) -> None:
    response = requests.get(table_url, auth=auth, timeout=5)
    assert_envelope(response, 401, "User Not Authenticated", "Required to provide Auth information")
    assert response.headers["WWW-Authenticate"] == 'BASIC realm="Service-now"'


def test_create_answers_201_with_location_and_generated_fields(session: requests.Session, table_url: str) -> None:
    response = session.post(table_url, json={"short_description": "Request for loan forgiveness"})

    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    record = response.json()["result"]
    assert SYS_ID.fullmatch(record["sys_id"])
    assert response.headers["Location"] == f"{table_url}/{record['sys_id']}"
    assert record["number"] == "LSC0001001"
    assert TIMESTAMP.fullmatch(record["sys_created_on"])
    created_on = datetime.datetime.strptime(record["sys_created_on"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=datetime.UTC)
    assert abs((datetime.datetime.now(datetime.UTC) - created_on).total_seconds()) < 5  # UTC, not local time
    assert record["sys_updated_on"] == record["sys_created_on"]
    assert record["sys_created_by"] == record["sys_updated_by"] == USER
    assert record["sys_mod_count"] == "0"
    assert record["sys_class_name"] == LOAN
    assert (record["category"], record["priority"], record["state"], record["active"]) == ("1", "4", "1", "true")
    assert create(session, table_url)["number"] == "LSC0001002"


def test_sys_fields_and_unknown_fields_are_ignored_and_values_become_strings(
    session: requests.Session, table_url: str
) -> None:
    record = create(
        session, table_url, sys_id="f" * 32, sys_created_by="mallory", no_such_field="x", priority=2, active=False
    )

    assert record["sys_id"] != "f" * 32
    assert record["sys_created_by"] == USER
    assert "no_such_field" not in record
    assert (record["priority"], record["active"]) == ("2", "false")


def test_mandatory_fields_dangling_references_and_overlong_strings_are_not_refused(
    session: requests.Session, emulator: RunningEmulator
) -> None:
    """servicenow.md, "the instance does not protect you": validate on our side, the Table API will not."""
    groups = f"{emulator.url}/api/now/table/sys_user_group"
    no_name = session.post(groups, json={"description": "no name"})  # `name` is mandatory in the dictionary
    mandatory = query(session, f"{emulator.url}/api/now/table/sys_dictionary", "name=sys_user_group^element=name")
    case = create(session, f"{emulator.url}/api/now/table/{LOAN}", consumer="d" * 32, short_description="x" * 5000)

    assert mandatory[0]["mandatory"] == "true"
    assert no_name.status_code == 201
    assert emulator.store.get("csm_consumer", "d" * 32) is None  # nothing it refers to
    assert case["consumer"] == "d" * 32
    assert len(case["short_description"]) == 5000  # not an error (the `truncate` fault stores it cut)


def test_array_body_uses_only_the_first_object(session: requests.Session, table_url: str) -> None:
    response = session.post(table_url, json=[{"correlation_id": "first"}, {"correlation_id": "second"}])

    assert response.status_code == 201
    assert [r["correlation_id"] for r in query(session, table_url, "")] == ["first"]
    sys_id = response.json()["result"]["sys_id"]
    patched = session.patch(f"{table_url}/{sys_id}", json=[{"state": "10"}, {"state": "3"}])
    assert patched.json()["result"]["state"] == "10"


def test_invalid_json_body_is_400(session: requests.Session, table_url: str) -> None:
    response = session.post(table_url, data=b'{"short_description": ', headers={"Content-Type": "application/json"})

    assert_envelope(response, 400, "Exception while reading request", "The payload is not valid JSON.")


def test_a_body_not_declared_as_json_is_415_and_an_accept_without_json_is_406(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    """servicenow.md: requests carry `Accept` and `Content-Type: application/json` (REST API HTTP response codes)."""
    body = b'{"correlation_id": "REQ-1"}'
    as_text = session.post(table_url, data=body, headers={"Content-Type": "text/plain"})
    undeclared = session.post(table_url, data=body, headers={"Content-Type": ""})
    html_only = session.get(table_url, headers={"Accept": "text/html"})

    assert_envelope(as_text, 415, "Unsupported media type")
    assert_envelope(undeclared, 415, "Unsupported media type")
    assert_envelope(html_only, 406, "Not acceptable")
    assert emulator.stats()["records"][LOAN] == 0
    declared = session.post(table_url, data=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert declared.status_code == 201  # the control
    assert session.get(table_url, headers={"Accept": "*/*"}).status_code == 200


def test_unknown_table_is_400(session: requests.Session, emulator: RunningEmulator) -> None:
    response = session.get(f"{emulator.url}/api/now/table/no_such_table")

    assert_envelope(response, 400, "Invalid table no_such_table")


def test_get_one_record_and_404_envelope(session: requests.Session, table_url: str) -> None:
    sys_id = create(session, table_url, correlation_id="REQ-1")["sys_id"]

    found = session.get(f"{table_url}/{sys_id}", params={"sysparm_fields": "sys_id,correlation_id"})
    missing = session.get(f"{table_url}/{'0' * 32}")

    assert found.json() == {"result": {"sys_id": sys_id, "correlation_id": "REQ-1"}}
    assert_envelope(missing, 404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")


def test_reference_fields_read_as_link_objects_unless_excluded(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    created = session.post(table_url, json={"consumer": CONSUMER, "sold_product": SOLD_PRODUCT}).json()["result"]
    plain = session.get(f"{table_url}/{created['sys_id']}", params={"sysparm_exclude_reference_link": "true"}).json()[
        "result"
    ]

    assert created["consumer"] == {"link": f"{emulator.url}/api/now/table/csm_consumer/{CONSUMER}", "value": CONSUMER}
    assert created["sold_product"]["link"].endswith(f"/api/now/table/sn_install_base_sold_product/{SOLD_PRODUCT}")
    assert created["account"] == ""
    assert (plain["consumer"], plain["sold_product"]) == (CONSUMER, SOLD_PRODUCT)


def test_journal_entries_are_stored_byte_for_byte(session: requests.Session, emulator: RunningEmulator) -> None:
    note = "Überprüfung: prêt n° 42 — « différé » 💶\r\nline two\twith tab  \u00a0"
    comment = "客户要求延期 ✓"
    case = create(session, f"{emulator.url}/api/now/table/{LOAN}", work_notes=note, comments=comment)

    entries = query(
        session, f"{emulator.url}/api/now/table/sys_journal_field", f"element_id={case['sys_id']}^ORDERBYelement"
    )

    assert (case["work_notes"], case["comments"]) == ("", "")
    assert [(e["element"], e["value"], e["name"]) for e in entries] == [
        ("comments", comment, LOAN),
        ("work_notes", note, LOAN),
    ]
    assert all(SYS_ID.fullmatch(e["sys_id"]) and e["sys_created_by"] == USER for e in entries)


def test_empty_journal_values_make_no_entries(session: requests.Session, emulator: RunningEmulator) -> None:
    create(session, f"{emulator.url}/api/now/table/{LOAN}", work_notes="", short_description="x")

    assert emulator.stats()["records"]["sys_journal_field"] == 0


def test_encoded_queries_equals_in_and_or(session: requests.Session, table_url: str) -> None:
    for index in range(6):
        create(session, table_url, correlation_id=f"REQ-{index}", priority=str(index % 3 + 1), contact_type="web")

    def ids(encoded: str) -> list[str]:
        return [r["correlation_id"] for r in query(session, table_url, encoded)]

    assert ids("correlation_id=REQ-4") == ["REQ-4"]
    assert ids("correlation_idINREQ-5,REQ-1,REQ-9") == ["REQ-1", "REQ-5"]
    assert ids("priority=1^contact_type=web") == ["REQ-0", "REQ-3"]
    assert ids("priority=1^ORpriority=2^correlation_idINREQ-0,REQ-1,REQ-2") == ["REQ-0", "REQ-1"]
    assert ids("correlation_id=REQ-0^NQcorrelation_id=REQ-5") == ["REQ-0", "REQ-5"]
    assert ids("no_such_field=1^correlation_id=REQ-2") == ["REQ-2"]  # the invalid term is dropped
    assert ids("correlation_id~~garbage^correlation_id=REQ-3") == ["REQ-3"]
    assert len(ids("no_such_field=1")) == 6  # nothing left: everything matches
    assert ids("correlation_idINREQ-1,REQ-3^ORDERBYDESCcorrelation_id") == ["REQ-3", "REQ-1"]


def test_other_query_operators(session: requests.Session, table_url: str) -> None:
    create(session, table_url, correlation_id="ABC-1", short_description="Loan forgiveness", description="d")
    create(session, table_url, correlation_id="ABC-2", short_description="Deferment")
    create(session, table_url, correlation_id="XYZ-3", short_description="loan restructure")

    def ids(encoded: str) -> list[str]:
        return [r["correlation_id"] for r in query(session, table_url, encoded)]

    assert ids("correlation_idSTARTSWITHABC") == ["ABC-1", "ABC-2"]
    assert ids("correlation_idENDSWITH-3") == ["XYZ-3"]
    assert ids("short_descriptionLIKEloan") == ["ABC-1", "XYZ-3"]
    assert ids("short_descriptionNOT LIKEloan") == ["ABC-2"]
    assert ids("descriptionISEMPTY") == ["ABC-2", "XYZ-3"]
    assert ids("descriptionISNOTEMPTY") == ["ABC-1"]
    assert ids("correlation_id!=ABC-2") == ["ABC-1", "XYZ-3"]
    assert ids("correlation_idNOT INABC-1,ABC-2") == ["XYZ-3"]
    assert ids("numberSTARTSWITHLSC^ORDERBYDESCnumber")[0] == "XYZ-3"


def test_fields_limit_offset_total_count_and_link(session: requests.Session, table_url: str) -> None:
    for index in range(5):
        create(session, table_url, correlation_id=f"REQ-{index}", short_description="page")

    response = session.get(
        table_url,
        params={
            "sysparm_query": "short_description=page",
            "sysparm_fields": "correlation_id",
            "sysparm_limit": "2",
            "sysparm_offset": "2",
        },
    )

    assert response.status_code == 200
    assert response.json() == {"result": [{"correlation_id": "REQ-2"}, {"correlation_id": "REQ-3"}]}
    assert response.headers["X-Total-Count"] == "5"
    links = {rel: value["url"] for rel, value in response.links.items()}
    assert set(links) == {"first", "prev", "next", "last"}
    assert "sysparm_offset=0" in links["first"]
    assert "sysparm_offset=0" in links["prev"]
    assert "sysparm_offset=4" in links["next"]
    assert "sysparm_offset=4" in links["last"]
    assert "sysparm_query=short_description%3Dpage" in links["next"]
    following = session.get(links["next"]).json()["result"]
    assert following == [{"correlation_id": "REQ-4"}]


def test_a_list_without_sysparm_limit_gets_at_most_10000_records(
    session: requests.Session, emulator: RunningEmulator, table_url: str
) -> None:
    for index in range(10_001):
        emulator.store.create(LOAN, {"correlation_id": f"REQ-{index}"}, USER)

    response = session.get(table_url, params={"sysparm_fields": "correlation_id"})

    assert response.status_code == 200
    result = response.json()["result"]
    assert (len(result), result[-1]["correlation_id"]) == (10_000, "REQ-9999")
    assert response.headers["X-Total-Count"] == "10001"
    assert "sysparm_offset=10000" in response.links["next"]["url"]


def test_unpaginated_list_has_no_link_header(session: requests.Session, table_url: str) -> None:
    create(session, table_url)

    response = session.get(table_url)

    assert response.headers["X-Total-Count"] == "1"
    assert "Link" not in response.headers


@pytest.mark.parametrize(("prefix", "status"), [("/api/now/table", 200), ("/api/now/v2/table", 200)])
def test_empty_list_is_200_with_empty_result(
    session: requests.Session, emulator: RunningEmulator, prefix: str, status: int
) -> None:
    response = session.get(f"{emulator.url}{prefix}/{LOAN}", params={"sysparm_query": "correlation_id=none"})

    assert response.status_code == status
    assert response.json() == {"result": []}
    assert response.headers["X-Total-Count"] == "0"


def test_empty_list_is_404_on_v1(session: requests.Session, emulator: RunningEmulator) -> None:
    response = session.get(f"{emulator.url}/api/now/v1/table/{LOAN}", params={"sysparm_query": "correlation_id=x"})

    assert_envelope(response, 404, "No Record found")


def test_patch_and_put_update_fields_and_bump_mod_count(session: requests.Session, table_url: str) -> None:
    record = create(session, table_url, correlation_id="REQ-1", state="1")

    patched = session.patch(f"{table_url}/{record['sys_id']}", json={"state": "2", "sys_mod_count": "99", "bogus": 1})
    put = session.put(f"{table_url}/{record['sys_id']}", json={"work_notes": "via PUT"})

    assert patched.status_code == 200
    assert (patched.json()["result"]["state"], patched.json()["result"]["sys_mod_count"]) == ("2", "1")
    assert put.status_code == 200
    assert put.json()["result"]["sys_mod_count"] == "2"
    assert put.json()["result"]["work_notes"] == ""
    assert query(session, table_url, "correlation_id=REQ-1")[0]["state"] == "2"
    assert query(session, table_url, "state=1") == []  # the field index follows the update


def test_patch_of_a_missing_record_is_404(session: requests.Session, table_url: str) -> None:
    response = session.patch(f"{table_url}/{'0' * 32}", json={"state": "2"})

    assert_envelope(response, 404, "No Record found")


def test_delete_answers_204_then_404(session: requests.Session, table_url: str) -> None:
    sys_id = create(session, table_url, correlation_id="gone")["sys_id"]

    deleted = session.delete(f"{table_url}/{sys_id}")
    again = session.get(f"{table_url}/{sys_id}")

    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_envelope(again, 404, "No Record found")
    assert query(session, table_url, "correlation_id=gone") == []


def test_sysparm_fields_trims_the_create_answer(session: requests.Session, table_url: str) -> None:
    response = session.post(table_url, params={"sysparm_fields": "sys_id,number"}, json={"correlation_id": "x"})

    assert set(response.json()["result"]) == {"sys_id", "number"}


def test_method_not_supported_on_a_collection(session: requests.Session, table_url: str) -> None:
    response = session.delete(table_url)

    assert_envelope(response, 405, "Method not Supported")


def test_keep_alive_connection_serves_many_requests(session: requests.Session, table_url: str) -> None:
    for _ in range(20):
        assert session.get(table_url, params={"sysparm_limit": "1"}).status_code == 200
    assert session.get(table_url).headers.get("Connection", "").lower() != "close"


def test_string_conditions_compare_without_case_as_the_instance_does(
    session: requests.Session, table_url: str
) -> None:
    """servicenow.md: `correlation_idINabc` finds `ABC`; `=`, `!=`, `IN`, `STARTSWITH`, `LIKE` ignore case."""
    create(session, table_url, correlation_id="CASE-a1", short_description="Loan Forgiveness")
    create(session, table_url, correlation_id="case-B2", short_description="deferment")

    def ids(encoded: str) -> list[str]:
        return [r["correlation_id"] for r in query(session, table_url, encoded)]

    assert ids("correlation_idINcase-A1") == ["CASE-a1"]
    assert ids("correlation_idINCASE-A1,CASE-B2") == ["CASE-a1", "case-B2"]
    assert ids("correlation_id=case-a1") == ["CASE-a1"]
    assert ids("correlation_id!=CASE-A1") == ["case-B2"]
    assert ids("correlation_idNOT INCASE-A1") == ["case-B2"]
    assert ids("correlation_idSTARTSWITHCase-") == ["CASE-a1", "case-B2"]
    assert ids("short_descriptionLIKEFORGIVE") == ["CASE-a1"]
    assert ids("short_descriptionENDSWITHMENT") == ["case-B2"]
    assert ids("correlation_id=case-a1^ORcorrelation_id=CASE-b2") == ["CASE-a1", "case-B2"]


def test_the_index_follows_updates_without_case(session: requests.Session, table_url: str) -> None:
    record = create(session, table_url, correlation_id="Upd-1", short_description="x")
    assert [r["sys_id"] for r in query(session, table_url, "correlation_id=UPD-1")] == [record["sys_id"]]
    response = session.patch(f"{table_url}/{record['sys_id']}", json={"correlation_id": "Upd-2"})
    assert response.status_code == 200, response.text
    assert query(session, table_url, "correlation_idINupd-1") == []
    assert [r["correlation_id"] for r in query(session, table_url, "correlation_idINUPD-2")] == ["Upd-2"]
