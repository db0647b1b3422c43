"""`make demo`: the whole sync, end to end, on the embedded defaults.

Seeds a fresh SQLite source database with sample requests (some invalid), starts the ServiceNow emulator on
loopback (20 ms latency, a few injected faults), runs the real DAG through Airflow twice (`airflow dags test`),
prints the outcome per status; then an agent works some cases on the emulator (opens, closes, deletes one) and the
status DAG brings their state back into the source rows; then the bank adds a note to one request and changes the
description of another (status `update_pending`), and a third sync run PATCHes their cases: the note appended as one
journal entry, the fields changed in place, no case created. Stops what it started. Everything lives under `.demo/`.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path

from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import REPO, EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import keyed_requests, sample_requests

ROWS = 200
INVALID_EVERY = 12
KEYED_ROWS = 40  # requests naming consumer, loan account and group by business key only
BAD_KEY_EVERY = 8
FAULTS = ("--latency-ms", "20", "--error-503", "0.03", "--cut-after-commit", "0.03", "--html-200", "0.01",
          "--seed", "2026")


def seed(path: Path) -> None:
    path.unlink(missing_ok=True)
    with SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE) as source:
        source.ensure_schema()
        source.insert_requests(sample_requests(ROWS, invalid_every=INVALID_EVERY, prefix="DEMO"))
        source.insert_requests(keyed_requests(KEYED_ROWS, bad_every=BAD_KEY_EVERY, prefix="DEMO-KEY"))


def print_business_keys(path: Path) -> None:
    conn = sqlite3.connect(path)
    query = ("SELECT request_id, status, number, error, consumer_number, account_number, assignment_group_name, "
             "resolved_references FROM ticket_requests WHERE request_id LIKE 'DEMO-KEY-%' ORDER BY id")
    rows = conn.execute(query).fetchall()
    created = [r for r in rows if r[1] == "created"]
    rejected = [r for r in rows if r[1] == "rejected"]
    print(f"\nBusiness keys ({len(rows)} requests without sys_ids): {len(created)} created, {len(rejected)} rejected")
    for request_id, _status, number, _error, consumer, account, group, resolved in created[:2]:
        print(f"  {request_id}  created {number}: consumer_number {consumer}, account_number {account}, "
              f"assignment_group_name {group!r}")
        print(f"      resolved_references {resolved}")
    for request_id, _status, _number, error, *_rest in rejected:
        print(f"  {request_id}  rejected  {error}")


def print_outcome(path: Path, emulator: EmulatorProcess) -> None:
    conn = sqlite3.connect(path)
    query = "SELECT request_id, status, sync_action, number, error, attempts FROM ticket_requests"
    rows = conn.execute(query).fetchall()
    by_status = Counter((status, action) for _, status, action, *_ in rows)
    print("\nOutcome per status (source table .demo/source.db):")
    print(f"  {'status':<10} {'how':<9} rows")
    for (status, action), count in sorted(by_status.items(), key=lambda item: str(item[0])):
        print(f"  {status:<10} {action or '':<9} {count}")
    print("\nA few rows:")
    shown = [r for r in rows if r[1] == "created"][:3] + [r for r in rows if r[1] == "rejected"][:4]
    for request_id, status, action, number, error, attempts in shown:
        detail = f"{number} ({action}, attempts {attempts})" if status == "created" else error
        print(f"  {request_id}  {status:<8}  {detail}")
    records = emulator.records("sn_bom_loan_service")
    per_correlation = Counter(record["correlation_id"] for record in records)
    duplicates = sum(1 for n in per_correlation.values() if n > 1)
    stats = emulator.stats()
    injected = {kind: n for kind, n in stats["faults"].items() if n}
    print(f"\nServiceNow emulator: {len(records)} loan service cases, {duplicates} correlation ids with duplicates; "
          f"{stats['requests_total']} API requests, faults injected: {injected}")


STATUS_LINES = ("pages read", "list requests", "cases read", "rows changed", "rows unchanged", "cases not found")


def work_cases(path: Path, emulator: EmulatorProcess) -> list[str]:
    """An agent's day on the instance: two cases opened, one closed, one deleted. Returns their request ids."""
    conn = sqlite3.connect(path)
    created = conn.execute(
        "SELECT request_id, sys_id, number FROM ticket_requests WHERE status = 'created' ORDER BY id LIMIT 4"
    ).fetchall()
    conn.close()
    changes = [{"state": "10", "work_notes": "Taken by the loans team"}, {"state": "18", "comments": "Need a payslip"},
               {"state": "3", "comments": "Deferment granted"}]
    for (request_id, sys_id, number), change in zip(created, changes, strict=False):
        emulator.work("sn_bom_loan_service", sys_id, **change)
        print(f"  agent: {number} ({request_id}) -> state {change['state']}")
    request_id, sys_id, number = created[3]
    emulator.delete("sn_bom_loan_service", sys_id)
    print(f"  agent: {number} ({request_id}) deleted")
    return [row[0] for row in created]


def print_case_states(path: Path, request_ids: list[str]) -> None:
    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in request_ids)
    rows = conn.execute(
        f"SELECT request_id, status, case_state, case_state_label, case_updated_at, error FROM ticket_requests "
        f"WHERE request_id IN ({marks}) ORDER BY id", request_ids,
    ).fetchall()
    states = conn.execute("SELECT case_state_label, COUNT(*) FROM ticket_requests WHERE case_state IS NOT NULL "
                          "GROUP BY case_state_label ORDER BY 2 DESC").fetchall()
    conn.close()
    print("\nThe worked cases in the source table (case_state, case_state_label, case_updated_at):")
    for request_id, status, state, label, updated, error in rows:
        detail = f"{state} {label} (case updated {updated})" if not error else f"{state} {label}; error: {error[:90]}…"
        print(f"  {request_id}  {status:<8}  {detail}")
    print("All rows by case state: " + ", ".join(f"{label} {count}" for label, count in states))


def run_sync(airflow: LocalAirflow, work: Path, run: int) -> int:
    log = work / "logs" / f"run{run}.log"
    started = time.monotonic()
    print(f"\nRun {run}: airflow dags test servicenow_ticket_sync (log: {log.relative_to(REPO)})")
    # settle_seconds: the emulator's writes are done before it answers, so 3 s stands in for ServiceNow's 60 s quota
    # (a POST whose connection was cut is looked up only after it; on an instance keep the default).
    code = airflow.run_dag(log, conf={"settle_seconds": 3})
    print(f"  finished in {time.monotonic() - started:.1f} s: {'success' if code == 0 else 'FAILED'}")
    for line in log.read_text(errors="replace").splitlines():
        if "ticket sync" in line or line.startswith(("outcome", "-", "claimed", "created", "adopted", "rejected",
                                                     "failed", "still", "cases updated", "table now")):
            print("   ", _strip_log_decoration(line))
    return code


def run_status(airflow: LocalAirflow, work: Path) -> int:
    status = LocalAirflow(home=airflow.home, connections=airflow.connections, dag_id="servicenow_case_status")
    log = work / "logs" / "status.log"
    started = time.monotonic()
    print(f"\nairflow dags test servicenow_case_status (log: {log.relative_to(REPO)})")
    code = status.run_dag(log)
    print(f"  finished in {time.monotonic() - started:.1f} s: {'success' if code == 0 else 'FAILED'}")
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(STATUS_LINES):
            print("   ", _strip_log_decoration(line))
    return code


UPDATE_NOTE = "Customer sent the payslip by post"


def request_updates(path: Path, request_ids: list[str]) -> list[tuple[str, str]]:
    """The bank's system changes two requests whose cases are open: a new note on one, a new short description on
    the other, and sets them ``update_pending`` as a producer does. Returns (request_id, sys_id) of both."""
    conn = sqlite3.connect(path)
    marks = ", ".join("?" for _ in request_ids[:2])
    chosen = conn.execute(f"SELECT request_id, sys_id FROM ticket_requests WHERE request_id IN ({marks}) ORDER BY id",
                          request_ids[:2]).fetchall()
    (noted, _), (described, _) = chosen
    conn.execute("UPDATE ticket_requests SET notes = ?, status = 'update_pending' WHERE request_id = ?",
                 (UPDATE_NOTE, noted))
    conn.execute("UPDATE ticket_requests SET short_description = 'Loan deferment, 6 months instead of 3', "
                 "status = 'update_pending' WHERE request_id = ?", (described,))
    conn.commit()
    conn.close()
    print(f"  bank: {noted} gets a new note ({UPDATE_NOTE!r}); {described} a new short description; both "
          "update_pending")
    return [(str(request_id), str(sys_id)) for request_id, sys_id in chosen]


def print_updates(path: Path, emulator: EmulatorProcess, updated: list[tuple[str, str]], posts_before: int) -> None:
    conn = sqlite3.connect(path)
    rows = {request_id: conn.execute("SELECT status, error FROM ticket_requests WHERE request_id = ?",
                                     (request_id,)).fetchone() for request_id, _ in updated}
    conn.close()
    journal = emulator.records("sys_journal_field")
    cases = {record["sys_id"]: record for record in emulator.records("sn_bom_loan_service")}
    print("\nThe updated cases on the instance:")
    for request_id, sys_id in updated:
        case = cases[sys_id]
        notes = [entry["value"] for entry in journal if entry["element_id"] == sys_id]
        status, error = rows[request_id]
        print(f"  {case['number']} ({request_id}): row {status}{'; ' + error if error else ''}; short_description "
              f"{case['short_description']!r}; {len(notes)} journal entries, the new note {notes.count(UPDATE_NOTE)} "
              "time(s)")
        for note in notes:
            print(f"      journal: {note[:70]!r}")
    posts = emulator.stats()["by_method"].get("POST", 0) - posts_before
    print(f"  POSTs during the update run: {posts} (no case created)")


def _strip_log_decoration(line: str) -> str:
    """Airflow's log lines carry a timestamp and level in front and `[logger] loc=…` behind; keep the message."""
    if line[:4].isdigit() and "] " in line:
        line = line.split("] ", 1)[1]
    return re.sub(r"\s+\[[\w.]+\]\s+loc=\S+.*$", "", line).rstrip()


def main() -> int:
    work = REPO / ".demo"
    shutil.rmtree(work / "logs", ignore_errors=True)
    (work / "logs").mkdir(parents=True, exist_ok=True)
    source_db = work / "source.db"
    seed(source_db)
    print(f"Seeded {ROWS} requests ({ROWS // INVALID_EVERY} invalid) and {KEYED_ROWS} business-key requests "
          f"({KEYED_ROWS // BAD_KEY_EVERY} with a key that cannot be used) into {source_db.relative_to(REPO)}")
    airflow = LocalAirflow(home=work / "airflow")
    print("Preparing the local Airflow home (.demo/airflow, SQLite metadata)…")
    airflow.migrate()
    with EmulatorProcess(work, *FAULTS) as emulator:
        print(f"ServiceNow emulator on {emulator.url} (20 ms latency, ~7% injected faults)")
        airflow.connections = {
            "ticket_source": sqlite_connection(source_db),
            "servicenow_default": emulator.connection(),
        }
        codes = []
        for run in (1, 2):
            codes.append(run_sync(airflow, work, run))
        print_outcome(source_db, emulator)
        print_business_keys(source_db)
        print("\nRun 2 found nothing pending: every request was synced once, or rejected with a reason.")
        emulator.set_faults(error_503=0, cut_after_commit=0, html_200=0)
        print("\nCases worked on the instance:")
        worked = work_cases(source_db, emulator)
        codes.append(run_status(airflow, work))
        print_case_states(source_db, worked)
        print("\nRequests changed in the bank:")
        updated = request_updates(source_db, worked)
        posts_before = emulator.stats()["by_method"].get("POST", 0)
        codes.append(run_sync(airflow, work, 3))
        print_updates(source_db, emulator, updated, posts_before)
    print("\nEmulator stopped.")
    return 0 if all(code == 0 for code in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
