"""TLS: the emulator serves HTTPS with a CA made at test time; the hook verifies by default, trusts a CA bundle
named in the connection, skips verification only when told, and a failed verification stops the task at once."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException

from tests.support.tls import ServerCert, make_server_cert
from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowTLSError, ServiceNowTransientError
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"
PASSWORD = "tls-s3cret"
BODY = {"correlation_id": "REQ-1", "short_description": "over TLS"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_emulator(certs: ServerCert) -> Iterator[RunningEmulator]:
    config = EmulatorConfig(password=PASSWORD, tls_cert=str(certs.cert), tls_key=str(certs.key))
    with start_emulator(config) as emulator:
        yield emulator


def connect(monkeypatch: pytest.MonkeyPatch, conn_id: str, port: int, host: str = "127.0.0.1",
            **extra: Any) -> ServiceNowHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "http", "host": host, "port": port, "schema": "https", "login": "admin",
        "password": PASSWORD, "extra": {"timeout": 5, **extra},
    }))
    return ServiceNowHook(conn_id)


def test_the_emulator_serves_https(https_emulator: RunningEmulator) -> None:
    assert https_emulator.url.startswith("https://127.0.0.1:")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_a_ca_bundle_in_the_connection_is_trusted(https_emulator: RunningEmulator, certs: ServerCert,
                                                  monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    # REQUESTS_CA_BUNDLE (set to the system bundle on many machines) must not replace the connection's choice.
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    hook = connect(monkeypatch, "sn_ca", https_emulator.port, host=host, verify=str(certs.ca_bundle))
    created = hook.create_record(TABLE, BODY)
    assert https_emulator.store.get(TABLE, created.sys_id) is not None


def test_default_verification_refuses_an_unknown_ca_with_a_clear_tls_error(
    https_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = https_emulator.stats()["requests_total"]
    hook = connect(monkeypatch, "sn_default", https_emulator.port)
    with pytest.raises(ServiceNowTLSError) as caught:
        hook.create_record(TABLE, BODY)
    message = str(caught.value)
    assert "TLS certificate verification failed for 127.0.0.1" in message
    assert "CERTIFICATE_VERIFY_FAILED" in message
    assert "extra 'verify'" in message  # says how to fix it
    assert PASSWORD not in message
    assert not isinstance(caught.value, ServiceNowTransientError)  # never retried as if the instance were down
    assert https_emulator.stats()["requests_total"] == before  # nothing reached the Table API


def test_a_certificate_for_another_host_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    other = make_server_cert(tmp_path / "other", names=("instance.example",))
    config = EmulatorConfig(password=PASSWORD, tls_cert=str(other.cert), tls_key=str(other.key))
    with start_emulator(config) as emulator:
        hook = connect(monkeypatch, "sn_mismatch", emulator.port, verify=str(other.ca_bundle))
        with pytest.raises(ServiceNowTLSError, match="CERTIFICATE_VERIFY_FAILED"):
            hook.create_record(TABLE, BODY)


def test_verification_is_skipped_only_when_explicitly_turned_off(
    https_emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value in (False, "false"):
        hook = connect(monkeypatch, "sn_noverify", https_emulator.port, verify=value)
        assert hook.create_record(TABLE, BODY).sys_id
        hook.close()
    for absent in (None, "", True, "true"):
        extra = {} if absent is None else {"verify": absent}
        hook = connect(monkeypatch, "sn_verify", https_emulator.port, **extra)
        with pytest.raises(ServiceNowTLSError):
            hook.create_record(TABLE, BODY)
        hook.close()


def test_a_missing_ca_bundle_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hook = connect(monkeypatch, "sn_nobundle", 443, host="x.service-now.com", verify=str(tmp_path / "nope.pem"))
    with pytest.raises(ValueError, match="CA bundle in extra 'verify' does not exist"):
        hook.get_conn()


@pytest.mark.parametrize("allow", [None, False, "false", "no"])
def test_plain_http_to_a_remote_host_stays_refused_unless_allowed(monkeypatch: pytest.MonkeyPatch,
                                                                  allow: object) -> None:
    extra = {} if allow is None else {"allow_insecure_http": allow}
    monkeypatch.setenv("AIRFLOW_CONN_SN_PLAIN", json.dumps({
        "conn_type": "http", "host": "acme.service-now.com", "schema": "http", "login": "a", "password": "b",
        "extra": extra,
    }))
    with pytest.raises(ValueError, match="must travel over HTTPS"):
        ServiceNowHook("sn_plain").get_conn()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "127.8.9.10"])
def test_plain_http_to_loopback_is_accepted(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SN_LOOP", json.dumps({
        "conn_type": "http", "host": f"[{host}]" if ":" in host else host, "schema": "http", "port": 8765,
    }))
    ServiceNowHook("sn_loop").get_conn()


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Iterator[tuple[SourceTable, Path]]:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(sample_requests(30))
    yield source, path
    source.close()


def test_a_certificate_failure_stops_the_load_without_retries(
    https_emulator: RunningEmulator, sqlite_source: tuple[SourceTable, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, _ = sqlite_source
    hook = connect(monkeypatch, "sn_load", https_emulator.port)
    source.claim("run-1", limit=100, chunk_size=50, lease_seconds=60)
    slept: list[float] = []
    loader = CaseLoader(hook, source, "run-1", LoadSettings(chunk_size=10), sleep=slept.append)
    with pytest.raises(ServiceNowTLSError):
        loader.run()
    assert loader.counts.lookups == 1
    assert slept == []  # no backoff: not treated as an instance that is down
    assert source.token_summary("run-1") == {"pending": 30}  # nothing lost, nothing marked


def test_the_load_task_fails_at_once_on_a_certificate_failure(
    https_emulator: RunningEmulator, sqlite_source: tuple[SourceTable, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    source, path = sqlite_source
    connect(monkeypatch, "servicenow_default", https_emulator.port)
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    source.claim("tls_dag:run", limit=100, chunk_size=50, lease_seconds=60)
    operator = ServiceNowLoadOperator(task_id="load")
    context: Any = {"ti": SimpleNamespace(dag_id="tls_dag", run_id="run")}
    with pytest.raises(AirflowFailException, match="TLS certificate verification failed"):
        operator.execute(context)


def test_the_cert_extra_presents_a_client_certificate_for_mutual_tls(
    certs: ServerCert, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = EmulatorConfig(password=PASSWORD, tls_cert=str(certs.cert), tls_key=str(certs.key),
                            tls_client_ca=str(certs.ca_bundle))
    with start_emulator(config) as emulator:
        hook = connect(monkeypatch, "sn_mtls", emulator.port, verify=str(certs.ca_bundle), cert=str(certs.client_pem))
        created = hook.create_record(TABLE, BODY)
        assert emulator.store.get(TABLE, created.sys_id) is not None
        without = connect(monkeypatch, "sn_no_client_cert", emulator.port, verify=str(certs.ca_bundle))
        # the control: without a client certificate the server refuses the handshake (the TLS 1.3 alert
        # "certificate required"); that is configuration, not a dropped connection to retry and settle
        with pytest.raises(ServiceNowTLSError, match=r"refused this worker's TLS client certificate: it requires one "
                           r"and none was presented .*the extra 'cert'.*not retried"):
            without.create_record(TABLE, {**BODY, "correlation_id": "REQ-2"})
        assert [r["correlation_id"] for r in emulator.store.records(TABLE)] == ["REQ-1"]


def test_a_load_without_the_client_certificate_mutual_tls_needs_stops_at_once(
    certs: ServerCert, sqlite_source: tuple[SourceTable, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole load, not one request: the first look-up is refused in the handshake, and the loader stops with the
    certificate error at once (no backoff, no settle wait), every row still pending and nothing created."""
    config = EmulatorConfig(password=PASSWORD, tls_cert=str(certs.cert), tls_key=str(certs.key),
                            tls_client_ca=str(certs.ca_bundle))
    source, _ = sqlite_source
    with start_emulator(config) as emulator:
        hook = connect(monkeypatch, "sn_mtls_missing", emulator.port, verify=str(certs.ca_bundle))
        source.claim("run-m", limit=100, chunk_size=50, lease_seconds=60)
        slept: list[float] = []
        loader = CaseLoader(hook, source, "run-m", LoadSettings(chunk_size=10), sleep=slept.append)
        with pytest.raises(ServiceNowTLSError, match="client certificate"):
            loader.run()
        assert loader.counts.lookups == 1
        assert slept == []  # neither a backoff nor a settle wait: not an instance that is down or a lost answer
        assert emulator.store.records(TABLE) == []
        assert source.token_summary("run-m") == {"pending": 30}
