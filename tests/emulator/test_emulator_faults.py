"""Injected faults, over real HTTP: each kind, what is committed, rate limits, the concurrency cap."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER, assert_envelope, query
from ticketsync_dev.emulator import FaultConfig, FaultConfigError, RunningEmulator
from ticketsync_dev.emulator.__main__ import build_parser, config_from_args
from ticketsync_dev.emulator.replies import RATE_LIMIT_RULE

pytestmark = pytest.mark.integration


def committed(emulator: RunningEmulator) -> int:
    count: int = emulator.stats()["records"][LOAN]
    return count


def test_error_500_answers_the_json_envelope_and_commits_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(error_500=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert_envelope(response, 500, "Transaction cancelled: maximum execution time exceeded")
    assert committed(emulator) == 0
    assert emulator.stats()["faults"]["error_500"] == 1


def test_error_403_is_a_data_policy_refusal_and_commits_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(error_403=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert_envelope(response, 403, "Operation Failed",
                    "Data Policy Exception: The following fields are mandatory: Assignment group")
    assert committed(emulator) == 0
    assert emulator.stats()["faults"]["error_403"] == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_answer_html_and_commit_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str, status: int
) -> None:
    emulator.set_faults(**{f"error_{status}": 1.0})

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert committed(emulator) == 0


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_errors_can_answer_an_empty_body(
    emulator: RunningEmulator, session: requests.Session, table_url: str, status: int
) -> None:
    emulator.set_faults(**{f"error_{status}": 1.0}, empty_gateway_bodies=True)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert (response.status_code, response.content) == (status, b"")
    assert committed(emulator) == 0
    emulator.set_faults(empty_gateway_bodies=False)  # the control: the HTML page again
    assert session.post(table_url, json={}).text.startswith("<!DOCTYPE html>")
    args = build_parser().parse_args(["--empty-gateway-bodies"])
    assert config_from_args(args, {}).faults.empty_gateway_bodies is True


def test_html_200_is_a_hibernating_page_and_commits_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(html_200=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Hibernating" in response.text
    assert committed(emulator) == 0


def test_cut_before_commit_drops_the_connection_and_commits_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(cut_before_commit=1.0)

    with pytest.raises(requests.ConnectionError):
        session.post(table_url, json={"correlation_id": "REQ-1"})

    assert committed(emulator) == 0
    assert emulator.stats()["no_response"] == 1


def test_cut_after_commit_drops_the_connection_but_the_record_exists(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(cut_after_commit=1.0)

    with pytest.raises(requests.ConnectionError):
        session.post(table_url, json={"correlation_id": "REQ-ambiguous"})

    emulator.set_faults(cut_after_commit=0.0)
    assert [r["correlation_id"] for r in query(session, table_url, "correlation_id=REQ-ambiguous")] == ["REQ-ambiguous"]


def test_cut_then_commit_loses_the_connection_at_once_and_commits_later(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    """A lost connection does not stop the transaction: a look-up made at once misses a record written later."""
    emulator.set_faults(cut_then_commit=1.0, slow_before_commit_ms=600, methods=("POST",))

    started = time.monotonic()
    with pytest.raises(requests.ConnectionError):
        session.post(table_url, json={"correlation_id": "REQ-late"})
    lost_after = time.monotonic() - started
    at_once = query(session, table_url, "correlation_id=REQ-late")
    time.sleep(0.9)
    later = query(session, table_url, "correlation_id=REQ-late")

    assert lost_after < 0.5
    assert at_once == []
    assert [r["correlation_id"] for r in later] == ["REQ-late"]
    assert emulator.stats()["faults"]["cut_then_commit"] == 1
    emulator.set_faults(transaction_quota_seconds=0.3)  # the control: past the quota it is cancelled, never written
    with pytest.raises(requests.ConnectionError):
        session.post(table_url, json={"correlation_id": "REQ-never"})
    time.sleep(0.9)
    assert query(session, table_url, "correlation_id=REQ-never") == []


def test_slow_after_commit_commits_then_answers_late(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(slow_after_commit=1.0, slow_after_commit_ms=300)

    with pytest.raises(requests.Timeout):
        session.post(table_url, json={"correlation_id": "REQ-slow"}, timeout=0.1)
    started = time.monotonic()
    response = session.post(table_url, json={"correlation_id": "REQ-slow-2"})

    assert response.status_code == 201
    assert time.monotonic() - started >= 0.3
    assert committed(emulator) == 2


def test_malformed_json_commits_and_answers_a_truncated_body(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(malformed_json=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert committed(emulator) == 1


def test_garbled_json_commits_and_answers_a_whole_body_that_is_not_json(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(garbled_json=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert response.status_code == 201
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.text.startswith("{'result': {")
    assert response.text.endswith("}}")
    with pytest.raises(requests.JSONDecodeError):
        response.json()
    assert committed(emulator) == 1


@pytest.mark.parametrize(
    ("fault", "message", "headers"),
    [
        ("error_429", "Rate limit exceeded", {"Retry-After": "0.25", "X-RateLimit-Rule": RATE_LIMIT_RULE}),
        ("error_429_busy", "Maximum number of concurrent requests exceeded", {}),
    ],
)
def test_429_storms_commit_nothing_with_and_without_retry_after(
    emulator: RunningEmulator, session: requests.Session, table_url: str, fault: str, message: str,
    headers: dict[str, str],
) -> None:
    emulator.set_faults(**{fault: 1.0}, retry_after_seconds=0.25)

    responses = [session.post(table_url, json={"correlation_id": f"REQ-{n}"}) for n in range(5)]

    for response in responses:
        assert_envelope(response, 429, message)
        for name in ("Retry-After", "X-RateLimit-Rule", "X-RateLimit-Limit"):
            assert response.headers.get(name) == headers.get(name)
    assert committed(emulator) == 0
    assert emulator.stats()["faults"][fault] == 5
    assert emulator.stats()["throttled"] == 5


def test_missing_sys_id_commits_and_answers_without_sys_id(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(missing_sys_id=1.0)

    response = session.post(table_url, json={"correlation_id": "REQ-1"})

    assert response.status_code == 201
    result = response.json()["result"]
    assert "sys_id" not in result
    assert result["correlation_id"] == "REQ-1"
    assert committed(emulator) == 1


def test_random_faults_only_hit_the_configured_methods(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(error_503=1.0, methods=("POST",))

    assert session.get(table_url).status_code == 200
    assert session.post(table_url, json={}).status_code == 503


def test_fail_auth_rejects_good_credentials(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(fail_auth=True)

    assert_envelope(session.get(table_url), 401, "User Not Authenticated")


def test_rate_limit_answers_429_with_retry_after_and_rate_limit_headers(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(rate_limit_per_second=0.5, rate_limit_burst=2)

    statuses = [session.get(table_url).status_code for _ in range(3)]
    response = session.post(table_url, json={"correlation_id": "REQ-throttled"})

    assert statuses == [200, 200, 429]
    assert_envelope(response, 429, "Rate limit exceeded")
    assert int(response.headers["Retry-After"]) >= 1
    assert response.headers["X-RateLimit-Limit"] == "1800"
    assert int(response.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert response.headers["X-RateLimit-Rule"]
    assert committed(emulator) == 0
    assert emulator.stats()["throttled"] == 2


def test_an_exhausted_hourly_window_answers_429_until_it_resets(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(rate_limit_per_window=3, rate_limit_window_seconds=4)

    statuses = [session.get(table_url).status_code for _ in range(3)]
    refused = session.post(table_url, json={"correlation_id": "REQ-window"})

    assert statuses == [200, 200, 200]
    assert_envelope(refused, 429, "Rate limit exceeded")
    # The wait is the rest of the window (whole seconds), given both ways; the limit is per hour (3 per 4 s).
    assert 1 <= int(refused.headers["Retry-After"]) <= 4
    assert 0 < int(refused.headers["X-RateLimit-Reset"]) - time.time() <= 4
    assert refused.headers["X-RateLimit-Limit"] == "2700"
    assert committed(emulator) == 0
    assert [entry["status"] for entry in emulator.requests()] == [200, 200, 200, 429]
    time.sleep(float(refused.headers["Retry-After"]) + 0.1)
    assert session.post(table_url, json={"correlation_id": "REQ-window"}).status_code == 201
    assert committed(emulator) == 1


def test_the_hourly_window_is_an_hour_by_default_and_off() -> None:
    config = FaultConfig()
    assert (config.rate_limit_per_window, config.rate_limit_window_seconds) == (0, 3600)
    with pytest.raises(FaultConfigError, match="rate_limit_per_window must be an integer"):
        config.with_changes({"rate_limit_per_window": 2.5})
    with pytest.raises(FaultConfigError, match="rate_limit_window_seconds must be positive"):
        config.with_changes({"rate_limit_window_seconds": 0})


def test_concurrency_limit_turns_away_excess_requests_without_rate_limit_headers(
    emulator: RunningEmulator, table_url: str
) -> None:
    emulator.set_faults(concurrency_limit=2, latency_ms=400)

    def call(_: int) -> requests.Response:
        return requests.get(table_url, auth=(USER, PASSWORD), timeout=10)

    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(call, range(6)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses.count(200) >= 2
    assert statuses.count(429) >= 1
    rejected = next(response for response in responses if response.status_code == 429)
    assert_envelope(rejected, 429, "Maximum number of concurrent requests exceeded")
    assert "Retry-After" not in rejected.headers
    assert "X-RateLimit-Limit" not in rejected.headers
    stats = emulator.stats()
    assert stats["faults"]["concurrency_limit"] == statuses.count(429)
    assert stats["max_in_flight"] >= 3


def test_latency_delays_every_api_request(emulator: RunningEmulator, session: requests.Session, table_url: str) -> None:
    emulator.set_faults(latency_ms=150)

    started = time.monotonic()
    session.get(table_url)

    assert time.monotonic() - started >= 0.15


def test_a_seed_makes_the_fault_draws_repeatable(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    def run() -> list[int]:
        emulator.set_faults(error_500=0.5, seed=1234)
        return [session.get(table_url).status_code for _ in range(20)]

    first, second = run(), run()

    assert first == second
    assert {200, 500} == set(first)


def test_invalid_fault_settings_are_refused(emulator: RunningEmulator) -> None:
    with pytest.raises(FaultConfigError, match="unknown fault fields"):
        emulator.set_faults(no_such_fault=1.0)
    with pytest.raises(FaultConfigError, match="between 0 and 1"):
        emulator.set_faults(error_500=1.5)
    with pytest.raises(FaultConfigError, match="more than 1"):
        emulator.set_faults(error_500=0.6, error_503=0.6)
    with pytest.raises(FaultConfigError, match="unknown methods"):
        FaultConfig(methods=("FETCH",))
    assert emulator.faults == FaultConfig()


@pytest.mark.parametrize("sent", [b"", b'{"correlation_id": "REQ-'], ids=["headers only", "half a body"])
def test_a_request_whose_client_dies_mid_body_creates_nothing(emulator: RunningEmulator, sent: bytes) -> None:
    """A killed client leaves a request cut short; the emulator, like a real server, must not process it."""
    import base64
    import socket

    auth = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    head = (f"POST /api/now/table/{LOAN} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n").encode()
    with socket.create_connection((emulator.host, emulator.port), timeout=5) as client:
        client.sendall(head + sent)
        client.shutdown(socket.SHUT_WR)
        client.recv(65536)
    assert committed(emulator) == 0


def test_a_rule_refuses_every_post_whose_field_holds_a_value_and_commits_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(rules=[
        {"contains": "POISON-500", "status": 500},
        {"contains": "POISON-403", "field": "correlation_display", "status": 403},
        {"contains": "POISON-400", "status": 400},
    ])

    for _ in range(3):  # every time, not at random
        response = session.post(table_url, json={"correlation_id": "A", "short_description": "x POISON-500 y"})
        assert_envelope(response, 500, "Transaction cancelled: maximum execution time exceeded")
    response = session.post(table_url, json={"correlation_id": "B", "correlation_display": "POISON-403"})
    assert_envelope(response, 403, "Operation Failed")
    response = session.post(table_url, json={"correlation_id": "C", "short_description": "POISON-400"})
    assert_envelope(response, 400, "Invalid request")
    assert committed(emulator) == 0
    assert session.post(table_url, json={"correlation_id": "D", "short_description": "fine"}).status_code == 201
    assert session.get(table_url, params={"sysparm_query": "short_descriptionLIKEPOISON"}).status_code == 200
    assert committed(emulator) == 1
    assert emulator.stats()["faults"]["rule"] == 5


def test_a_rule_on_the_query_refuses_every_look_up_that_names_a_value(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(rules=[{"contains": "REQ-BAD", "field": "sysparm_query", "methods": ["GET"], "status": 500}])
    response = session.get(table_url, params={"sysparm_query": "correlation_idINREQ-1,REQ-BAD,REQ-2"})
    assert response.status_code == 500
    assert query(session, table_url, "correlation_idINREQ-1,REQ-2") == []
    assert session.post(table_url, json={"correlation_id": "REQ-BAD"}).status_code == 201  # POSTs are not refused


def test_a_rule_answers_with_another_correlation_id_but_stores_the_right_one(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(rules=[{"contains": "REQ-MIX", "field": "correlation_id", "answer_correlation_id": "REQ-9"}])
    response = session.post(table_url, json={"correlation_id": "REQ-MIX", "short_description": "x"},
                            params={"sysparm_fields": "sys_id,correlation_id"})
    assert response.status_code == 201
    answered = response.json()["result"]
    assert answered["correlation_id"] == "REQ-9"
    stored = emulator.store.get(LOAN, answered["sys_id"])
    assert stored is not None
    assert stored["correlation_id"] == "REQ-MIX"


def test_truncate_stores_overlong_values_cut_to_the_field_length(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(truncate={"short_description": 10, "correlation_id": 5})
    response = session.post(table_url, json={"correlation_id": "REQ-123", "short_description": "a" * 30},
                            params={"sysparm_fields": "sys_id,correlation_id,short_description"})
    assert response.status_code == 201
    assert response.json()["result"] | {"sys_id": ""} == {
        "sys_id": "", "correlation_id": "REQ-1", "short_description": "a" * 10,
    }
    short = session.post(table_url, json={"correlation_id": "R", "short_description": "fits"})
    assert short.json()["result"]["short_description"] == "fits"
    assert emulator.stats()["faults"]["truncate"] == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"rules": [{"contains": "x"}]},
        {"rules": [{"contains": "x", "status": 500, "answer_correlation_id": "y"}]},
        {"rules": [{"contains": "", "status": 500}]},
        {"rules": [{"contains": "x", "status": 200}]},
        {"rules": [{"contains": "x", "status": 500, "colour": "red"}]},
        {"rules": {"contains": "x"}},
        {"truncate": {"short_description": "long"}},
        {"truncate": {"short_description": -1}},
    ],
)
def test_invalid_rules_and_truncation_are_refused(emulator: RunningEmulator, changes: dict) -> None:
    with pytest.raises(FaultConfigError):
        emulator.set_faults(**changes)


def test_rules_and_truncation_are_set_over_the_admin_api(emulator: RunningEmulator) -> None:
    response = requests.put(f"{emulator.url}/_emulator/faults", json={
        "rules": [{"contains": "P", "status": 403, "methods": "post"}], "truncate": {"correlation_id": 40},
    }, timeout=5)
    assert response.status_code == 200, response.text
    assert response.json()["rules"] == [{
        "contains": "P", "field": "short_description", "methods": ["POST"], "status": 403,
        "answer_correlation_id": None,
    }]
    assert response.json()["truncate"] == {"correlation_id": 40}
    bad = requests.put(f"{emulator.url}/_emulator/faults", json={"rules": [{"contains": "P"}]}, timeout=5)
    assert bad.status_code == 400
