"""ServiceNowHook over real HTTP against the emulator: Table API calls, and how each answer is classified."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
import requests

from ticketsync.hooks.servicenow import (
    ServiceNowAuthError,
    ServiceNowConnectionLost,
    ServiceNowHook,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTransientError,
)
from ticketsync.hooks.servicenow.transport import Answer
from ticketsync_dev.emulator import RunningEmulator

TABLE = "sn_bom_loan_service"
BODY = {"correlation_id": "REQ-1", "short_description": "Request for loan forgiveness", "work_notes": "Prêt 💸"}


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "http", **fields}))


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    set_connection(
        monkeypatch, "servicenow_test", host="127.0.0.1", port=emulator.port, schema="http",
        login="admin", password="s3cret-emulator", extra={"timeout": 2, "X-Not-A-Header": "leak"},
    )
    hook = ServiceNowHook("servicenow_test", pool_size=4)
    yield hook
    hook.close()


def test_hook_declares_its_connection_contract() -> None:
    assert ServiceNowHook.conn_type == "servicenow"
    assert ServiceNowHook.default_conn_name == "servicenow_default"
    assert ServiceNowHook.conn_name_attr == "servicenow_conn_id"


def test_create_then_find_by_correlation(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    created = hook.create_record(TABLE, BODY)
    assert len(created.sys_id) == 32
    assert created.number
    found = hook.find_by_correlation(TABLE, ["REQ-1", "REQ-2"])
    assert list(found) == ["REQ-1"]
    assert found["REQ-1"][0].sys_id == created.sys_id
    (record,) = emulator.store.records(TABLE)
    assert record["correlation_id"] == "REQ-1"


def test_find_by_correlation_keys_records_by_their_own_id_even_when_they_match_only_by_case(
    hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    """The instance compares without case: the answer to `REQ-1` may hold `req-1`; the hook keeps it, keyed by the
    record's own id, and leaves the decision to the loader instead of calling the answer untrustworthy."""
    other = emulator.store.create(TABLE, {"correlation_id": "req-1", "short_description": "x"}, "admin")
    found = hook.find_by_correlation(TABLE, ["REQ-1", "REQ-2"])
    assert list(found) == ["req-1"]
    assert found["req-1"][0].sys_id == other["sys_id"]


def test_create_record_echoes_the_fields_asked_for_as_stored(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    emulator.set_faults(truncate={"short_description": 12})
    created = hook.create_record(TABLE, BODY, echo=("correlation_id", "short_description"))
    assert created.values == {"correlation_id": "REQ-1", "short_description": "Request for "}
    assert hook.create_record(TABLE, BODY).values == {}


def test_one_session_is_reused_and_extras_never_become_headers(hook: ServiceNowHook) -> None:
    session = hook.get_conn()
    assert hook.get_conn() is session
    assert "X-Not-A-Header" not in session.headers
    assert session.headers["Accept"] == "application/json"


def test_find_by_correlation_pages_past_one_thousand(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    ids = [f"R-{i}" for i in range(1100)]
    for correlation in ids:
        emulator.store.create(TABLE, {"correlation_id": correlation, "short_description": "x"}, "admin")
    found = hook.find_by_correlation(TABLE, ids)
    assert len(found) == 1100
    assert emulator.stats()["by_method"]["GET"] == 2


def test_duplicates_come_back_oldest_first(hook: ServiceNowHook) -> None:
    first = hook.create_record(TABLE, BODY)
    hook.create_record(TABLE, BODY)
    found = hook.find_by_correlation(TABLE, ["REQ-1"])["REQ-1"]
    assert len(found) == 2
    assert found[0].sys_id == first.sys_id


def test_401_is_an_auth_error(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    emulator.set_faults(fail_auth=True)
    with pytest.raises(ServiceNowAuthError, match=r"401 User Not Authenticated.*servicenow_test"):
        hook.create_record(TABLE, BODY)


def test_wrong_password_is_an_auth_error(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "sn_bad", host="127.0.0.1", port=emulator.port, login="admin", password="wrong")
    with pytest.raises(ServiceNowAuthError) as caught:
        ServiceNowHook("sn_bad").create_record(TABLE, BODY)
    assert "wrong" not in str(caught.value)


def test_unknown_table_is_a_request_error_with_servicenow_message(hook: ServiceNowHook) -> None:
    with pytest.raises(ServiceNowRequestError) as caught:
        hook.create_record("sn_no_such_table", BODY)
    assert caught.value.status == 400
    assert "Invalid table sn_no_such_table" in str(caught.value)


def test_429_carries_retry_after(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    emulator.set_faults(rate_limit_per_second=0.01, rate_limit_burst=1)
    hook.create_record(TABLE, BODY)
    with pytest.raises(ServiceNowRateLimited) as caught:
        hook.create_record(TABLE, BODY)
    assert caught.value.retry_after is not None
    assert caught.value.retry_after >= 1


def test_an_exhausted_hourly_window_asks_for_the_rest_of_it(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    emulator.set_faults(rate_limit_per_window=1, rate_limit_window_seconds=600)
    hook.create_record(TABLE, BODY)
    with pytest.raises(ServiceNowRateLimited) as caught:
        hook.create_record(TABLE, BODY)
    assert caught.value.retry_after is not None
    assert 590 <= caught.value.retry_after <= 600
    assert caught.value.limit_per_hour == 6


@pytest.mark.parametrize(("headers", "low", "high"), [
    ({"X-RateLimit-Reset": "{reset}"}, 1190, 1200),  # no Retry-After: the wait is until the window resets
    ({"Retry-After": "30", "X-RateLimit-Reset": "{reset}"}, 30, 30),  # Retry-After wins
    ({"X-RateLimit-Reset": "soon"}, None, None),
])
def test_a_429_without_retry_after_waits_until_the_rate_limit_reset(
    headers: dict[str, str], low: float | None, high: float | None
) -> None:
    reset = str(int(time.time()) + 1200)
    answer = Answer(429, "Too Many Requests", {k: v.format(reset=reset) for k, v in headers.items()}, b"{}")
    with pytest.raises(ServiceNowRateLimited) as caught:
        ServiceNowHook()._raise_for_status(answer)
    wait = caught.value.retry_after
    if low is None or high is None:
        assert wait is None
    else:
        assert wait is not None
        assert low <= wait <= high


@pytest.mark.parametrize(("fault", "retry_after"), [("error_429", 0.5), ("error_429_busy", None)])
def test_a_429_storm_answer_is_rate_limited_with_or_without_retry_after(
    hook: ServiceNowHook, emulator: RunningEmulator, fault: str, retry_after: float | None
) -> None:
    emulator.set_faults(**{fault: 1.0}, retry_after_seconds=0.5)
    with pytest.raises(ServiceNowRateLimited) as caught:
        hook.create_record(TABLE, BODY)
    assert caught.value.retry_after == retry_after
    assert caught.value.limit_per_hour is None


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("error_500", "500"),
        ("error_502", "502"),
        ("error_503", "503"),
        ("error_504", "504"),
        ("html_200", "instead of JSON"),
        ("cut_before_commit", "connection lost without an answer"),
        ("cut_after_commit", "connection lost without an answer"),
        ("cut_then_commit", "connection lost without an answer"),
        ("malformed_json", "malformed JSON"),
        ("garbled_json", "malformed JSON"),
        ("missing_sys_id", "without a sys_id"),
    ],
)
def test_unknown_outcomes_are_transient(hook: ServiceNowHook, emulator: RunningEmulator, fault: str,
                                        expected: str) -> None:
    emulator.set_faults(**{fault: 1.0})
    with pytest.raises(ServiceNowTransientError, match=expected):
        hook.create_record(TABLE, BODY)


def test_a_lost_connection_is_in_doubt_and_a_refused_one_is_not(
    hook: ServiceNowHook, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection lost after the request was sent may still be committed (the loader settles before its look-up);
    a connection that could not be opened sent nothing."""
    emulator.set_faults(cut_then_commit=1.0, slow_before_commit_ms=300, methods=("POST",))
    with pytest.raises(ServiceNowConnectionLost):
        hook.create_record(TABLE, BODY)
    emulator.set_faults(cut_then_commit=0.0)
    time.sleep(0.6)
    assert len(emulator.store.records(TABLE)) == 1  # it was committed after the client lost the connection
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]  # bound, not listening: connecting is refused
        monkeypatch.setenv("AIRFLOW_CONN_REFUSED", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": "a", "password": "b",
        }))
        refused = ServiceNowHook("refused", pool_size=1)
        try:
            with pytest.raises(ServiceNowTransientError, match="connection failed") as caught:
                refused.create_record(TABLE, BODY)
        finally:
            refused.close()
    assert not isinstance(caught.value, ServiceNowConnectionLost)


def test_a_timeout_after_commit_is_transient_and_the_record_exists(hook: ServiceNowHook,
                                                                     emulator: RunningEmulator) -> None:
    emulator.set_faults(slow_after_commit=1.0, slow_after_commit_ms=3000)
    with pytest.raises(ServiceNowTransientError, match="timed out"):
        hook.create_record(TABLE, BODY)
    emulator.set_faults(slow_after_commit=0.0)
    assert "REQ-1" in hook.find_by_correlation(TABLE, ["REQ-1"])


def test_a_refused_connection_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "sn_down", host="127.0.0.1", port=9, login="a", password="b")
    with pytest.raises(ServiceNowTransientError, match="connection failed"):
        ServiceNowHook("sn_down").create_record(TABLE, BODY)


def test_plain_http_to_a_remote_host_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "sn_remote", host="example.service-now.com", schema="http", login="a", password="b")
    with pytest.raises(ValueError, match="must travel over HTTPS"):
        ServiceNowHook("sn_remote").get_conn()


def test_https_and_explicitly_allowed_http_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "sn_tls", host="example.service-now.com", schema="https", login="a", password="b",
                   extra={"verify": "/etc/ssl/certs/ca-certificates.crt"})
    hook = ServiceNowHook("sn_tls")
    assert hook.get_conn().verify == "/etc/ssl/certs/ca-certificates.crt"
    assert hook.base_url == "https://example.service-now.com"
    set_connection(monkeypatch, "sn_lab", host="sn.lab", schema="http", login="a", password="b",
                   extra={"allow_insecure_http": True})
    assert ServiceNowHook("sn_lab").get_conn().verify is True


def test_verify_false_string_is_a_boolean_not_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, "sn_nv", host="x.service-now.com", schema="https", extra={"verify": "false"})
    assert ServiceNowHook("sn_nv").get_conn().verify is False


def test_error_text_never_contains_the_password(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    for fault in ("error_500", "html_200", "cut_after_commit"):
        emulator.set_faults(**{fault: 1.0})
        with pytest.raises(ServiceNowTransientError) as caught:
            hook.create_record(TABLE, BODY)
        assert "s3cret-emulator" not in str(caught.value)
        emulator.set_faults(**{fault: 0.0})


def test_body_is_sent_as_utf8_json_and_journal_stored_byte_for_byte(hook: ServiceNowHook,
                                                                     emulator: RunningEmulator) -> None:
    created = hook.create_record(TABLE, BODY)
    session = requests.Session()
    session.auth = ("admin", "s3cret-emulator")
    entries = session.get(
        f"{emulator.url}/api/now/table/sys_journal_field",
        params={"sysparm_query": f"element_id={created.sys_id}"},
        timeout=5,
    ).json()["result"]
    assert [(e["element"], e["value"]) for e in entries] == [("work_notes", "Prêt 💸")]


def test_session_cookies_are_kept_and_sent_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real instance sets session cookies (JSESSIONID, glide_user_route); the hook sends them back, as requests'
    Session would, although it sends over the session's connection pool directly."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    seen: list[str | None] = []

    class Instance(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Cookie"))
            body = json.dumps({"result": {"sys_id": "a" * 32, "number": "LSC0001001"}}).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Set-Cookie", "JSESSIONID=abc123; Path=/; HttpOnly")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Instance)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        set_connection(monkeypatch, "sn_cookies", host="127.0.0.1", port=server.server_port, schema="http",
                       login="a", password="b")
        hook = ServiceNowHook("sn_cookies")
        assert hook.create_record(TABLE, BODY).sys_id == "a" * 32
        hook.create_record(TABLE, BODY)
        hook.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [None, "JSESSIONID=abc123"]
