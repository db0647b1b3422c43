"""Admin endpoints, the Python control surface, the command line and TLS."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER, create
from tests.support.tls import make_server_cert
from ticketsync_dev.emulator import EmulatorConfig, FaultConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.__main__ import build_parser, config_from_args

DEV = Path(__file__).resolve().parents[2] / "dev"
pytestmark = pytest.mark.integration


def test_health_needs_no_auth(emulator: RunningEmulator) -> None:
    response = requests.get(f"{emulator.url}/_emulator/health", timeout=5)

    assert response.json() == {"status": "ok"}


def test_stats_count_requests_statuses_faults_and_records(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    create(session, table_url, work_notes="note")
    session.get(table_url)
    session.get(f"{table_url}/{'0' * 32}")
    requests.get(table_url, timeout=5)
    emulator.set_faults(error_503=1.0)
    session.delete(f"{table_url}/{'0' * 32}")

    stats = requests.get(f"{emulator.url}/_emulator/stats", timeout=5).json()

    assert stats["requests_total"] == 5
    assert stats["by_method"] == {"POST": 1, "GET": 3, "DELETE": 1}
    assert stats["by_status"] == {"200": 1, "201": 1, "401": 1, "404": 1, "503": 1}
    assert stats["faults"]["error_503"] == 1
    assert stats["throttled"] == 0
    assert stats["max_in_flight"] >= 1
    assert stats["in_flight"] == 0
    assert stats["records"] == {
        LOAN: 1,
        "sn_bom_credit_card_service": 0,
        "sn_bom_payment_inquiry": 0,
        "sn_bom_loan_b2b_service": 0,
        "sys_journal_field": 1,
        "csm_consumer": 12,
        "sn_bom_financial_account": 26,
        "sys_user_group": 6,
        "sn_bom_service_definition": 5,
        "cmdb_model": 2,
        "sys_dictionary": stats["records"]["sys_dictionary"],
        "sys_db_object": 19,  # the served tables and the case tables' ancestors
        "sys_choice": 18,
    }
    assert stats["by_table"] == {LOAN: {"POST": 1, "GET": 3, "DELETE": 1}}
    assert stats == emulator.stats() | {"uptime_seconds": stats["uptime_seconds"]}


def test_faults_can_be_read_and_changed_over_http(emulator: RunningEmulator) -> None:
    url = f"{emulator.url}/_emulator/faults"

    changed = requests.put(url, json={"error_502": 0.25, "methods": ["post"], "latency_ms": 5}, timeout=5)
    refused = requests.put(url, json={"no_such_fault": 1}, timeout=5)

    assert changed.status_code == 200
    assert requests.get(url, timeout=5).json() == changed.json()
    assert changed.json()["error_502"] == 0.25
    assert emulator.faults == FaultConfig(error_502=0.25, methods=("POST",), latency_ms=5)
    assert refused.status_code == 400
    assert "no_such_fault" in refused.json()["error"]["detail"]


def test_reset_clears_records_and_counters_and_keeps_faults_unless_asked(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    create(session, table_url)
    emulator.set_faults(latency_ms=1)

    kept = requests.post(f"{emulator.url}/_emulator/reset", timeout=5)
    assert kept.json()["faults"]["latency_ms"] == 1
    assert emulator.stats()["records"][LOAN] == 0
    assert emulator.stats()["requests_total"] == 0
    assert create(session, table_url)["number"] == "LSC0001001"

    requests.post(f"{emulator.url}/_emulator/reset", json={"reset_faults": True}, timeout=5)
    assert emulator.faults == FaultConfig()


def test_records_endpoint_shows_records_as_stored(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    case = create(session, table_url, consumer="a" * 32, comments="hello")

    cases = requests.get(f"{emulator.url}/_emulator/records/{LOAN}", timeout=5).json()
    journal = requests.get(f"{emulator.url}/_emulator/records/sys_journal_field", timeout=5).json()
    unknown = requests.get(f"{emulator.url}/_emulator/records/nope", timeout=5)

    assert cases["result"] == [case]
    assert cases["result"][0]["consumer"] == "a" * 32
    assert [(e["element_id"], e["element"], e["value"]) for e in journal["result"]] == [
        (case["sys_id"], "comments", "hello")
    ]
    assert unknown.status_code == 404
    assert emulator.store.records(LOAN) == [case]


def test_unknown_paths_answer_404(emulator: RunningEmulator) -> None:
    assert requests.get(f"{emulator.url}/nothing/here", timeout=5).status_code == 404
    assert requests.get(f"{emulator.url}/_emulator/nothing", timeout=5).status_code == 404


def test_running_emulator_reports_its_address() -> None:
    with start_emulator() as emulator:
        assert emulator.host == "127.0.0.1"
        assert emulator.port > 0
        assert emulator.url == f"http://127.0.0.1:{emulator.port}"
        assert requests.get(f"{emulator.url}/_emulator/health", timeout=5).ok
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{emulator.url}/_emulator/health", timeout=5)


def test_cli_serves_until_sigterm_and_exits_cleanly(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    secret = "from-the-environment"
    env = {**os.environ, "PYTHONPATH": str(DEV), "TICKETSYNC_EMULATOR_PASSWORD": secret}
    command = [sys.executable, "-m", "ticketsync_dev.emulator", "--port", "0", "--port-file", str(port_file)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline() if process.stdout else ""
        port = int(port_file.read_text())
        url = f"http://127.0.0.1:{port}"
        assert line == f"ServiceNow emulator listening on {url}\n"
        assert requests.get(f"{url}/api/now/table/{LOAN}", auth=(USER, secret), timeout=5).status_code == 200
        assert requests.get(f"{url}/api/now/table/{LOAN}", auth=(USER, "admin"), timeout=5).status_code == 401
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert stdout == ""
    assert secret not in stderr


def test_cli_refuses_bad_fault_settings() -> None:
    env = {**os.environ, "PYTHONPATH": str(DEV)}
    command = [sys.executable, "-m", "ticketsync_dev.emulator", "--error-500", "0.7", "--error-503", "0.7"]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10, check=False)

    assert result.returncode == 2
    assert "more than 1" in result.stderr


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_tls_when_a_certificate_and_key_are_given(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    config = EmulatorConfig(user=USER, password=PASSWORD, tls_cert=str(cert), tls_key=str(key))

    with start_emulator(config) as emulator, requests.Session() as session:
        session.auth = (USER, PASSWORD)
        started = time.monotonic()
        # verify per request: a REQUESTS_CA_BUNDLE in the environment would override session.verify
        url = f"{emulator.url}/api/now/table/{LOAN}"
        response = session.post(url, json={"correlation_id": "tls"}, verify=str(cert))

        assert emulator.url.startswith("https://")
        assert response.status_code == 201
        assert response.headers["Location"].startswith("https://")
        assert time.monotonic() - started < 5


def test_mutual_tls_requires_a_client_certificate_the_ca_signed(tmp_path: Path) -> None:
    """servicenow.md: mutual TLS exists (a client certificate instead of a password)."""
    tls = make_server_cert(tmp_path)
    config = EmulatorConfig(user=USER, password=PASSWORD, tls_cert=str(tls.cert), tls_key=str(tls.key),
                            tls_client_ca=str(tls.ca_bundle))
    with start_emulator(config) as emulator:
        url = f"{emulator.url}/api/now/table/{LOAN}"
        with_cert = requests.post(url, json={"correlation_id": "mtls"}, auth=(USER, PASSWORD),
                                  verify=str(tls.ca_bundle), cert=str(tls.client_pem), timeout=10)
        with pytest.raises(requests.ConnectionError):
            requests.post(url, json={"correlation_id": "no-cert"}, auth=(USER, PASSWORD),
                          verify=str(tls.ca_bundle), timeout=10)
        records = [r["correlation_id"] for r in emulator.store.records(LOAN)]

    assert with_cert.status_code == 201
    assert records == ["mtls"]
    args = build_parser().parse_args(["--tls-client-ca", "ca.pem"])
    assert config_from_args(args, {}).tls_client_ca == "ca.pem"
