"""No secret leaks: real DAG runs (``airflow dags test``) that hit every kind of failure (401, 403 with
ServiceNow's message, 5xx, HTML pages, cut connections, client timeouts, rejected rows; basic auth and OAuth with
short-lived tokens), with a distinctive password, client secret and the access tokens the emulator issued; then
every file under the Airflow home (the metadata database included), the runs' output (where ``dags test`` writes
every task's log), the source table's ``error`` column and the rendering of the hook's exceptions (each fault, both
auth types, a refused OAuth client) are searched for any of them, for ``user:password`` in base64, and for an
``Authorization`` or ``Bearer`` header."""

from __future__ import annotations

import base64
import json
import sqlite3
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ticketsync.hooks.servicenow import ServiceNowError, ServiceNowHook
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.faults import RANDOM_FAULTS
from ticketsync_dev.local import LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

USER = "leakcheck.user"
PASSWORD = "Pw-LEAKCHECK-7f3a9c"
CLIENT_ID = "leakcheck-client"
CLIENT_SECRET = "CS-LEAKCHECK-51e0d2"
TABLE = "sn_bom_loan_service"
MIXED_FAULTS: dict[str, Any] = {
    "error_403": 0.08, "error_500": 0.08, "error_503": 0.05, "html_200": 0.05, "cut_after_commit": 0.05,
    "slow_after_commit": 0.05, "slow_after_commit_ms": 2500, "methods": ["POST"], "seed": 5,
}


def connection(port: int, *, password: str = PASSWORD, **extra: Any) -> str:
    return json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": USER,
        "password": password, "extra": {"timeout": [2, 1], **extra},
    })


def oauth_connection(port: int, auth_type: str, client_secret: str = CLIENT_SECRET) -> str:
    return connection(port, auth_type=auth_type, client_id=CLIENT_ID, client_secret=client_secret)


def forbidden(tokens: list[str]) -> dict[str, bytes]:
    """Every string that must never be written anywhere, by name."""
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    found = {
        "password": PASSWORD, "client secret": CLIENT_SECRET, "basic credentials (base64)": basic,
        "basic credentials (urlsafe base64)": base64.urlsafe_b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
        "Authorization header": "Authorization:", "Authorization header (repr)": "'Authorization'",
        "bearer header": "Bearer ",
    }
    found.update({f"access token {token[:6]}…": token for token in tokens})
    return {name: value.encode() for name, value in found.items()}


def leaks_in(paths: list[Path], needles: dict[str, bytes]) -> list[str]:
    leaks = []
    for path in paths:
        data = path.read_bytes()
        leaks += [f"{name} in {path}" for name, needle in needles.items() if needle in data]
    return leaks


@pytest.fixture(scope="module")
def emulator() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(user=USER, password=PASSWORD, oauth_client_id=CLIENT_ID,
                            oauth_client_secret=CLIENT_SECRET, oauth_token_lifetime=3)
    with start_emulator(config) as running:
        yield running


def test_no_secret_in_logs_database_errors_or_exceptions(emulator: RunningEmulator, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         fresh_airflow_home: Path) -> None:
    home = fresh_airflow_home
    db_path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(db_path), Dialect.SQLITE)
    source.ensure_schema()
    runs: list[tuple[str, str, dict[str, Any], list[dict[str, Any]]]] = [
        # name, servicenow_default, faults, new rows. Each `airflow dags test` costs 40-90 s here, so three runs
        # cover the kinds; the hook's exceptions below cover every fault on both auth types.
        ("basic-mixed-faults", connection(emulator.port), MIXED_FAULTS,
         list(sample_requests(60, invalid_every=10, prefix="BAS"))),
        ("oauth-password-faults", oauth_connection(emulator.port, "oauth_password"), MIXED_FAULTS,
         list(sample_requests(40, invalid_every=8, prefix="OAP"))),
        ("basic-wrong-password", connection(emulator.port, password="Wrong-" + PASSWORD[::-1]), {},
         list(sample_requests(5, prefix="WPW"))),
    ]
    outputs = []
    for name, servicenow, faults, rows in runs:
        emulator.set_faults(**{**dict.fromkeys(RANDOM_FAULTS, 0.0), **faults})
        source.insert_requests(rows)
        airflow = LocalAirflow(home=home, connections={"ticket_source": sqlite_connection(db_path),
                                                       "servicenow_default": servicenow})
        log = tmp_path / f"{name}.log"
        # settle_seconds: the emulator's slowest write (2.5 s) stands in for ServiceNow's 60 s transaction quota.
        airflow.run_dag(log, conf={"max_attempts": 2, "settle_seconds": 3})
        outputs.append(log)

    # With no alert channel configured, a task that fails for good only logs its alert (the wrong password: 401).
    wrong_password = outputs[-1].read_text()
    assert "ticketsync alert task_failed: {'webhook': 'not configured'}" in wrong_password
    assert "401 User Not Authenticated" in wrong_password

    # The runs really failed in all those ways (or this test would prove nothing).
    stats = emulator.stats()
    assert stats["oauth"]["tokens_issued"] >= 1
    faults_seen = {kind for kind, count in stats["faults"].items() if count}
    assert {"error_403", "error_500", "error_503", "html_200", "cut_after_commit", "slow_after_commit"} <= faults_seen
    assert stats["by_status"].get("401", 0) >= 1
    with source._transaction() as cursor:
        cursor.execute("SELECT status, error FROM ticket_requests")
        states = cursor.fetchall()
    errors = [error for _, error in states if error]
    assert {"created", "rejected", "failed", "pending"} <= {status for status, _ in states}
    assert any("403 Operation Failed" in error for error in errors)

    # Exceptions as the hook raises them, rendered as a log would: message, repr, traceback with causes.
    rendered = []
    monkeypatch.setenv("AIRFLOW_CONN_SN_RENDER", connection(emulator.port))
    monkeypatch.setenv("AIRFLOW_CONN_SN_RENDER_OAUTH", oauth_connection(emulator.port, "oauth_password"))
    for conn_id in ("sn_render", "sn_render_oauth"):
        hook = ServiceNowHook(conn_id)
        for fault in ("error_403", "error_500", "html_200", "cut_before_commit", "slow_after_commit", "fail_auth"):
            emulator.set_faults(**{**dict.fromkeys(RANDOM_FAULTS, 0.0), "methods": ["POST"], "seed": None,
                                   "slow_after_commit_ms": 2500, "fail_auth": fault == "fail_auth",
                                   **({} if fault == "fail_auth" else {fault: 1.0})})
            with pytest.raises(ServiceNowError) as caught:
                hook.create_record(TABLE, {"correlation_id": "R-1", "short_description": "x"})
            rendered.append("".join(traceback.format_exception(caught.value)) + repr(caught.value))
        hook.close()
    emulator.set_faults(**dict.fromkeys(RANDOM_FAULTS, 0.0), fail_auth=False)
    monkeypatch.setenv("AIRFLOW_CONN_SN_RENDER_BAD", oauth_connection(emulator.port, "oauth_client_credentials",
                                                                      client_secret="x" + CLIENT_SECRET[1:]))
    with pytest.raises(ServiceNowError) as refused:
        ServiceNowHook("sn_render_bad").create_record(TABLE, {"correlation_id": "R-1", "short_description": "x"})
    assert "OAuth token request refused" in str(refused.value)
    rendered.append("".join(traceback.format_exception(refused.value)) + repr(refused.value))
    rendered_file = tmp_path / "rendered-exceptions.txt"
    rendered_file.write_text("\n".join(rendered))
    errors_file = tmp_path / "error-column.txt"
    errors_file.write_text("\n".join(errors))

    needles = forbidden(emulator.issued_tokens())
    files = [path for path in home.rglob("*") if path.is_file()]
    assert home / "airflow.db" in files  # the metadata database: rendered fields, XComs, task failures
    # `airflow dags test` runs the tasks in its own process and writes their logs to its output, not to files
    # under logs/: every task's log is in the output searched here.
    for output in outputs:
        text = output.read_text()
        assert all(f"starting task_id={task}" in text for task in ("extract", "transform", "load", "report"))
        assert "claimed" in text
    leaks = leaks_in([*files, *outputs, rendered_file, errors_file], needles)
    assert not leaks, "\n".join(leaks)
    # the search itself finds what is there
    assert leaks_in([rendered_file], {"x": b"401"}) == ["x in " + str(rendered_file)]
