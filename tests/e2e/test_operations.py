"""Operating the sync, end to end through real DAG runs (`airflow dags test`): OpenLineage events with the file
transport (the PostgreSQL source's are checked in tests/e2e/test_dag_run.py), alerts received by a real SMTP server
and a real webhook receiver on loopback (with none configured: tests/e2e/test_secrets.py), dry runs that write
nothing, replays, and the "ServiceNow records" extra link."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
import requests

from tests.support.receivers import SmtpReceiver, WebhookReceiver, wait_until
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import BIN, EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
UI_BASE = "http://airflow.bank.example:8080"


@pytest.fixture
def sqlite_source(tmp_path: Path) -> Iterator[tuple[SourceTable, str]]:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    yield source, sqlite_connection(path)
    source.close()


def airflow(home: Path, source_conn: str, emulator: EmulatorProcess, **extra: str) -> LocalAirflow:
    connections = {"ticket_source": source_conn, "servicenow_default": emulator.connection()}
    connections.update({key[5:]: value for key, value in extra.items() if key.startswith("conn_")})
    env = {"AIRFLOW__API__BASE_URL": UI_BASE}
    env.update({key[4:]: value for key, value in extra.items() if key.startswith("env_")})
    return LocalAirflow(home=home, connections=connections, extra_env=env)


def run_ok(af: LocalAirflow, log: Path, conf: dict[str, Any] | None = None) -> None:
    code = af.run_dag(log, conf=conf)
    assert code == 0, log.read_text()[-6000:]


def latest_xcom(home: Path, task_id: str, key: str = "return_value") -> Any:
    with sqlite3.connect(home / "airflow.db") as db:
        row = db.execute(
            "SELECT value FROM xcom WHERE dag_id = 'servicenow_ticket_sync' AND task_id = ? AND key = ? "
            "ORDER BY timestamp DESC LIMIT 1", (task_id, key),
        ).fetchone()
    assert row is not None, f"no XCom {key} for {task_id}"
    value = json.loads(row[0])
    return json.loads(value) if isinstance(value, str) and value[:1] in "[{" else value


def dump(source: SourceTable) -> list[tuple[Any, ...]]:
    """Every column of every row, and the replay audit table: the whole state a run could change."""
    with source._transaction() as cursor:
        cursor.execute(f"SELECT * FROM {source.table} ORDER BY id")
        rows = [tuple(row) for row in cursor.fetchall()]
        cursor.execute(f"SELECT * FROM {source.replays_table} ORDER BY id")
        return rows + [("replays", *row) for row in cursor.fetchall()]


def statuses(source: SourceTable) -> dict[str, tuple[str, str | None, str | None]]:
    with source._transaction() as cursor:
        cursor.execute(f"SELECT request_id, status, sync_action, sys_id FROM {source.table}")
        return {row[0]: (row[1], row[2], row[3]) for row in cursor.fetchall()}


def posts(emulator: EmulatorProcess) -> int:
    return int(emulator.stats()["by_method"].get("POST", 0))


# ----------------------------------------------------------------------------------------------------------------
# lineage and the extra link
# ----------------------------------------------------------------------------------------------------------------


def load_events(path: Path) -> list[dict[str, Any]]:
    events = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in events if e["job"]["name"] == "servicenow_ticket_sync.load" and e["eventType"] == "COMPLETE"]


def test_sqlite_lineage_and_the_servicenow_records_link(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = sqlite_source
    source.insert_requests(sample_requests(12))
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        existing = requests.post(f"{emulator.url}/api/now/table/{TABLE}", auth=("admin", emulator.password), json={
            "correlation_id": "REQ-0000003", "short_description": "made earlier"}, timeout=5).json()["result"]
        events_file = tmp_path / "openlineage.jsonl"
        transport = json.dumps({"type": "file", "log_file_path": str(events_file), "append": True})
        run_ok(airflow(airflow_home, conn, emulator, env_AIRFLOW__OPENLINEAGE__TRANSPORT=transport),
               tmp_path / "run.log")
        [event] = load_events(events_file)
        assert event["inputs"][0]["namespace"].startswith("file://")
        assert event["inputs"][0]["name"] == f"{tmp_path / 'source.db'}.ticket_requests"
        facet = event["run"]["facets"]["ticketsync"]
        assert (facet["created"], facet["adopted"]) == (11, 1)

        link = latest_xcom(airflow_home, "load", "_link_ServiceNowRecordsLink")
        parsed = urlparse(link)
        assert f"{parsed.scheme}://{parsed.netloc}{parsed.path}" == f"{emulator.url}/{TABLE}_list.do"
        query = parse_qs(parsed.query)["sysparm_query"][0]
        assert query.startswith("correlation_idIN")
        ids = query.removeprefix("correlation_idIN").split("^")[0].split(",")
        assert sorted(ids) == [f"REQ-{i:07d}" for i in range(1, 13)]  # the adopted one too
        # The same filter, asked of the Table API, returns exactly this run's records.
        listed = requests.get(f"{emulator.url}/api/now/table/{TABLE}", params={"sysparm_query": query},
                              auth=("admin", emulator.password), timeout=5).json()["result"]
        assert len(listed) == 12
        assert existing["sys_id"] in {record["sys_id"] for record in listed}


def test_the_plugin_registers_the_link(tmp_path: Path) -> None:
    env = LocalAirflow(home=tmp_path / "airflow").env()
    out = subprocess.run([str(BIN / "airflow"), "plugins", "-o", "json"], env=env, capture_output=True, text=True,
                         check=True, timeout=120).stdout
    plugins = {plugin["name"]: plugin for plugin in json.loads(out[out.index("["):])}
    assert plugins["ticketsync"]["source"].endswith("ticketsync_plugin.py")
    assert any("ServiceNowRecordsLink" in link for link in plugins["ticketsync"]["operator_extra_links"])


# ----------------------------------------------------------------------------------------------------------------
# alerting
# ----------------------------------------------------------------------------------------------------------------


def test_a_failed_load_alerts_once_by_email_and_webhook(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    """ServiceNow answers 401 (wrong password): the load fails for good, one alert goes out on each channel."""
    source, conn = sqlite_source
    source.insert_requests(sample_requests(10, invalid_every=5))
    with (EmulatorProcess(tmp_path / "emulator") as emulator, SmtpReceiver() as smtp,
          WebhookReceiver() as webhook):
        wrong = json.loads(emulator.connection())
        wrong["password"] = "wrong-password-s3cret"
        af = airflow(
            airflow_home, conn, emulator, conn_smtp_default=smtp.connection(),
            conn_ticketsync_alert_webhook=webhook.connection(),
            env_AIRFLOW_VAR_TICKETSYNC_ALERT_EMAILS="ops@bank.example, oncall@bank.example",
        )
        af.connections["servicenow_default"] = json.dumps(wrong)
        code = af.run_dag(tmp_path / "run.log")
        assert code != 0
        assert wait_until(lambda: smtp.messages and webhook.posts)
        assert posts(emulator) == 0
    log = (tmp_path / "run.log").read_text()
    assert len(smtp.messages) == 1, [m.subject for m in smtp.messages]  # the report's failure does not alert again
    assert len(webhook.posts) == 1
    mail = smtp.messages[0]
    assert sorted(mail.recipients) == ["oncall@bank.example", "ops@bank.example"]
    assert mail.sender == "airflow-alerts@bank.example"
    assert mail.subject == "[ticketsync] servicenow_ticket_sync: load failed"
    run_id = webhook.posts[0].body["ticketsync"]["run_id"]
    assert run_id in log
    for text in (mail.body, webhook.posts[0].body["text"]):
        assert f"DAG servicenow_ticket_sync, task load, run {run_id}, try 1" in text
        assert "401 User Not Authenticated" in text
        assert "Rows of this run: claimed 10, created 0, adopted 0, rejected 2, failed 0, still pending 8" in text
        assert "rejected REQ-0000005: " in text
        assert f"Run: {UI_BASE}/dags/servicenow_ticket_sync/runs/" in text
        assert f"Task log: {UI_BASE}/dags/servicenow_ticket_sync/runs/" in text
        assert "s3cret" not in text
        assert emulator.password not in text
    post = webhook.posts[0]
    assert post.path == "/services/T0/B0/hook"
    assert post.body["ticketsync"]["kind"] == "task_failed"
    assert post.body["ticketsync"]["counts"]["claimed"] == 10
    print("\nalert e-mail:\nSubject:", mail.subject, "\n" + mail.body)
    print("\nwebhook JSON:\n" + json.dumps(post.body, indent=2))


def test_the_report_alerts_on_a_high_reject_share_and_a_stuck_backlog(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = sqlite_source
    source.insert_requests(sample_requests(12, invalid_every=3))  # 4 of 12 invalid
    with source._transaction() as cursor:  # the producer wrote them two hours ago
        cursor.execute("UPDATE ticket_requests SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-2 hours')")
    with (EmulatorProcess(tmp_path / "emulator") as emulator, SmtpReceiver() as smtp,
          WebhookReceiver() as webhook):
        af = airflow(
            airflow_home, conn, emulator, conn_alerts_smtp=smtp.connection(),
            conn_ticketsync_alert_webhook=webhook.connection("/hooks/teams"),
            env_AIRFLOW_VAR_TICKETSYNC_ALERT_EMAILS="ops@bank.example",
            env_AIRFLOW_VAR_TICKETSYNC_ALERT_SMTP_CONN_ID="alerts_smtp",
            env_AIRFLOW_VAR_TICKETSYNC_ALERT_MAX_BAD_SHARE="0.2",
            env_AIRFLOW_VAR_TICKETSYNC_ALERT_MAX_PENDING_AGE_MINUTES="90",
        )
        run_ok(af, tmp_path / "run.log", conf={"limit": 9})  # 3 of 9 rejected; 3 rows stay pending, 2 h old
        assert wait_until(lambda: len(smtp.messages) >= 2 and len(webhook.posts) >= 2)
    subjects = sorted(m.subject for m in smtp.messages)
    assert subjects[0] == "[ticketsync] servicenow_ticket_sync: 3 of 9 rows rejected or failed"
    # two hours old when inserted, plus however long the run took
    assert re.fullmatch(r"\[ticketsync\] servicenow_ticket_sync: oldest pending request is 12\d minutes old",
                        subjects[1]), subjects
    kinds = {post.body["ticketsync"]["kind"]: post.body for post in webhook.posts}
    assert set(kinds) == {"bad_share", "stuck_backlog"}
    share = kinds["bad_share"]["text"]
    assert "33% of this run's rows were rejected or failed (alert above 20%" in share
    assert "task report" in share
    assert "Rows of this run: claimed 9, created 6, adopted 0, rejected 3, failed 0, still pending 0" in share
    assert "rejected REQ-0000003: " in share
    assert "above 90 minutes" in kinds["stuck_backlog"]["text"]
    assert all(post.path == "/hooks/teams" for post in webhook.posts)
    print("\nthreshold alerts:\n" + "\n\n".join(post.body["text"] for post in webhook.posts))


# ----------------------------------------------------------------------------------------------------------------
# manual runs: dry run and replay
# ----------------------------------------------------------------------------------------------------------------


def test_a_dry_run_writes_nothing_and_reports_what_would_happen(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = sqlite_source
    source.insert_requests(sample_requests(10, invalid_every=5))
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        requests.post(f"{emulator.url}/api/now/table/{TABLE}", auth=("admin", emulator.password), json={
            "correlation_id": "REQ-0000002", "short_description": "made earlier"}, timeout=5).raise_for_status()
        before, records_before, posts_before = dump(source), len(emulator.records(TABLE)), posts(emulator)
        run_ok(airflow(airflow_home, conn, emulator), tmp_path / "dry.log", conf={"dry_run": True})
        assert dump(source) == before
        assert len(emulator.records(TABLE)) == records_before == 1
        assert posts(emulator) == posts_before
        assert emulator.stats()["by_method"].get("GET", 0) >= 1  # it did look up
    plan = latest_xcom(airflow_home, "report")
    assert plan["dry_run"] is True
    assert (plan["would_create"], plan["would_adopt"], plan["would_reject"]) == (7, 1, 2)
    assert plan["adopt"][0][0] == "REQ-0000002"
    assert sorted(request_id for request_id, _ in plan["reject"]) == ["REQ-0000005", "REQ-0000010"]
    assert "REQ-0000001" in plan["create_ids"]
    log = (tmp_path / "dry.log").read_text()
    assert "DRY RUN: nothing was written" in log
    assert "would create   7" in log


def test_replaying_a_fixed_rejected_row_creates_exactly_one_case_and_a_created_row_none(
    airflow_home: Path, sqlite_source: tuple[SourceTable, str], tmp_path: Path
) -> None:
    source, conn = sqlite_source
    source.insert_requests(sample_requests(6, invalid_every=3))  # REQ-3 and REQ-6 are invalid
    with EmulatorProcess(tmp_path / "emulator") as emulator:
        af = airflow(airflow_home, conn, emulator)
        run_ok(af, tmp_path / "run1.log")
        state = statuses(source)
        assert state["REQ-0000003"][0] == "rejected"
        assert state["REQ-0000001"][:2] == ("created", "created")
        posts_after_first = posts(emulator)

        fixed = dict(next(r for r in sample_requests(3) if r["request_id"] == "REQ-0000003"))
        with source._transaction() as cursor:  # the producer fixes the bad data (the row keeps status rejected)
            cursor.execute("UPDATE ticket_requests SET consumer = ?, short_description = ?, contact_type = ?, "
                           "category = ?, sold_product = ?, notes = ?, target_table = ? WHERE request_id = ?",
                           (fixed["consumer"], fixed["short_description"], fixed["contact_type"], fixed["category"],
                            fixed["sold_product"], fixed["notes"], fixed["target_table"], "REQ-0000003"))

        run_ok(af, tmp_path / "replay.log", conf={"request_ids": ["REQ-0000003", "REQ-0000001"]})
        state = statuses(source)
        assert state["REQ-0000003"][:2] == ("created", "created")
        assert state["REQ-0000001"][:2] == ("created", "adopted")  # looked up and found: no second case
        assert state["REQ-0000006"][0] == "rejected"  # not named, not touched
        assert posts(emulator) == posts_after_first + 1
        per_correlation = Counter(record["correlation_id"] for record in emulator.records(TABLE))
        assert per_correlation["REQ-0000003"] == 1
        assert per_correlation["REQ-0000001"] == 1
        assert max(per_correlation.values()) == 1
        with source._transaction() as cursor:
            cursor.execute("SELECT request_id, previous_status, previous_sync_action, previous_error "
                           "FROM ticket_requests_replays ORDER BY id")
            audit = cursor.fetchall()
        assert [(r[0], r[1], r[2]) for r in audit] == [("REQ-0000001", "created", "created"),
                                                       ("REQ-0000003", "rejected", None)]
        assert audit[1][3].startswith("short_description: ")  # the reason it was rejected, kept

        # Replaying an unknown request id fails the extract at once, naming it, and changes nothing.
        before = dump(source)
        code = af.run_dag(tmp_path / "unknown.log", conf={"request_ids": ["REQ-9999999"]})
        assert code != 0
        assert "request_ids not found in ticket_requests: REQ-9999999" in (tmp_path / "unknown.log").read_text()
        assert dump(source) == before
