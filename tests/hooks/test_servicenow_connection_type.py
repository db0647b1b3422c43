"""The ``servicenow`` connection type: https by default, the "Test" button's answers (ok, 401, TLS, down), and
the ``http`` type working as before."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.support.tls import make_server_cert
from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowInvalidConnection
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator


def set_connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: Any) -> ServiceNowHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(fields))
    return ServiceNowHook(conn_id)


EMULATOR_PASSWORD = "s3cret-emulator"  # the conftest emulator's


def emulator_connection(emulator: RunningEmulator, password: str = EMULATOR_PASSWORD) -> dict[str, Any]:
    return {"conn_type": "servicenow", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
            "login": "admin", "password": password, "extra": {"connect_timeout": 2, "read_timeout": 5}}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(
    ("fields", "base_url"),
    [
        ({"conn_type": "servicenow", "host": "acme.service-now.com"}, "https://acme.service-now.com"),
        ({"conn_type": "servicenow", "host": "acme.service-now.com", "port": 8443}, "https://acme.service-now.com:8443"),
        ({"conn_type": "servicenow", "host": "127.0.0.1", "port": 8765, "schema": "http"}, "http://127.0.0.1:8765"),
        ({"conn_type": "servicenow", "host": "http://127.0.0.1:8765"}, "http://127.0.0.1:8765"),
        ({"conn_type": "http", "host": "acme.service-now.com", "schema": "https"}, "https://acme.service-now.com"),
        ({"conn_type": "http", "host": "127.0.0.1", "port": 8765}, "http://127.0.0.1:8765"),
    ],
)
def test_a_servicenow_connection_is_https_unless_it_says_otherwise(
    monkeypatch: pytest.MonkeyPatch, fields: dict[str, Any], base_url: str
) -> None:
    hook = set_connection(monkeypatch, "sn_scheme", **fields)
    hook.get_conn()
    assert hook.base_url == base_url


def test_an_http_connection_without_schema_is_still_refused_for_a_remote_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ``http`` type behaves as before: its schema defaults to http, which the hook refuses for a real host."""
    hook = set_connection(monkeypatch, "sn_http_noschema", conn_type="http", host="acme.service-now.com")
    with pytest.raises(ServiceNowInvalidConnection, match="must travel over HTTPS"):
        hook.get_conn()


def test_the_form_fields_are_read_from_the_extras(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    bundle = tmp_path / "bank-ca.pem"
    bundle.write_text("not read before a request")
    hook = set_connection(monkeypatch, "sn_form", conn_type="servicenow", host="acme.service-now.com", extra={
        "auth_type": "basic", "client_id": "", "client_secret": "", "verify": True, "ca_bundle": str(bundle),
        "cert": "", "rate_limit": 4, "connect_timeout": 3, "read_timeout": 30, "allow_insecure_http": False,
    })
    session = hook.get_conn()
    assert session.verify == str(bundle)
    assert hook.extras().timeouts == (3.0, 30.0)
    assert hook.rate_limit() == 4.0


def test_test_connection_succeeds_against_the_instance(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = emulator.stats()["requests_total"]
    hook = set_connection(monkeypatch, "sn_test_ok", **emulator_connection(emulator))
    ok, message = hook.test_connection()
    assert ok, message
    assert message == (
        f"Connection successfully tested: http://127.0.0.1:{emulator.port} answered a Table API read of "
        "sn_bom_loan_service"
    )
    assert emulator.stats()["requests_total"] == before + 1  # one cheap read, nothing written
    assert emulator.store.records("sn_bom_loan_service") == []


def test_test_connection_names_the_credentials_on_401(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = set_connection(monkeypatch, "sn_test_401", **emulator_connection(emulator, password="wrong"))
    ok, message = hook.test_connection()
    assert not ok
    assert message.startswith("Authentication failed: 401 User Not Authenticated: ServiceNow refused the "
                              "credentials of connection 'sn_test_401'; check its login and password")
    assert "retried" not in message  # advice for a task's log, not for the Test button
    assert "wrong" not in message


def test_test_connection_names_tls_trust(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    certs = make_server_cert(tmp_path)
    config = EmulatorConfig(password="p", tls_cert=str(certs.cert), tls_key=str(certs.key))
    with start_emulator(config) as https_emulator:
        hook = set_connection(monkeypatch, "sn_test_tls", conn_type="servicenow", host="127.0.0.1",
                              port=https_emulator.port, login="admin", password="p")
        ok, message = hook.test_connection()
        assert not ok
        assert message.startswith("TLS: TLS certificate verification failed for 127.0.0.1")
        assert "ca_bundle" in message
        hook = set_connection(monkeypatch, "sn_test_tls_ok", conn_type="servicenow", host="127.0.0.1",
                              port=https_emulator.port, login="admin", password="p",
                              extra={"ca_bundle": str(certs.ca_bundle)})
        assert hook.test_connection() == (
            True, f"Connection successfully tested: https://127.0.0.1:{https_emulator.port} answered a Table API "
            "read of sn_bom_loan_service",
        )


def test_test_connection_says_when_the_instance_is_down(monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    hook = set_connection(monkeypatch, "sn_test_down", conn_type="servicenow", host="127.0.0.1", port=port,
                          schema="http", login="admin", password="p", extra={"connect_timeout": 2})
    ok, message = hook.test_connection()
    assert not ok
    assert message.startswith(f"http://127.0.0.1:{port} cannot be reached or is not answering: GET connection failed")


def test_test_connection_reports_an_invalid_connection_instead_of_raising(monkeypatch: pytest.MonkeyPatch) -> None:
    hook = set_connection(monkeypatch, "sn_test_bad", conn_type="servicenow", host="acme.service-now.com",
                          extra={"auth_type": "oauth_client_credentials", "client_id": "c"})
    assert hook.test_connection() == (
        False, "Invalid connection: connection 'sn_test_bad' uses auth_type oauth_client_credentials but has no "
        "client_secret",
    )
