"""`make soak`: sync a large backlog through the real DAG under injected faults and two worker kills, then check it.

1. creates a throw-away PostgreSQL database with ``--rows`` sample requests (1 in 25 invalid);
2. starts the ServiceNow emulator as a process with about 10 % of requests faulted (mixed kinds) and a rate limit;
3. runs the DAG (`airflow dags test`, one run claims everything) and SIGKILLs its whole process group mid-load, twice
   (at about 20 % and 55 % of the backlog written back);
4. runs the DAG again until no row is pending (at most ``--max-runs`` runs); a run after a kill is started so that
   its claim comes after the dead run's leases ran out (half the first run's start-up before they do);
5. checks: 0 duplicates (records per correlation id in the emulator, read through the Table API), 0 lost (every
   source row created / rejected / failed, or pending with a reason; every created row linked to its own record),
   and prints peak memory (RSS of the DAG run's process group), runtime, API requests and faults injected.

Exit code 0 when every check passed. ``--rows 5000 --lease-seconds 15`` is the CI version
(tests/faults/test_soak.py).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import psycopg
import requests

from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.emulator.faults import RANDOM_FAULTS
from ticketsync_dev.local import EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import sample_requests

TABLE = "sn_bom_loan_service"
INVALID_EVERY = 25
# About 10 % of all API requests faulted, of every kind the emulator injects, plus a rate limit that answers 429
# with Retry-After and X-RateLimit-Limit. Random 429 storms are left to the fault matrix (each one pauses every
# request in flight; tests/test_throttle.py covers how the pace recovers).
FAULTS = (
    "--error-500", "0.01", "--error-502", "0.005", "--error-503", "0.01", "--error-504", "0.005",
    "--html-200", "0.005", "--cut-before-commit", "0.01", "--cut-after-commit", "0.015",
    "--malformed-json", "0.01", "--garbled-json", "0.005", "--missing-sys-id", "0.01",
    "--slow-after-commit", "0.005", "--slow-before-commit", "0.005", "--slow-after-commit-ms", "2500",
    "--slow-before-commit-ms", "2500",
    "--rate-limit", "600", "--rate-limit-burst", "50", "--latency-ms", "2",
)
CLIENT_TIMEOUT = 2.0
LEASE_SECONDS = 30  # the default; above settle_seconds (5), as docs/configuration.md asks
KILL_AT = (0.20, 0.55)
NO_FAULTS = {name: 0.0 for name in RANDOM_FAULTS} | {"rate_limit_per_second": 0.0}


@dataclass
class Figures:
    rows: int
    invalid: int
    started: float = field(default_factory=time.monotonic)
    runs: list[dict[str, Any]] = field(default_factory=list)
    peak_rss_group: int = 0
    peak_rss_process: int = 0
    claim_after: float = 0.0  # seconds from the first run's start to its claim (Airflow starting, the extract)


class MemoryWatch(threading.Thread):
    """Samples the RSS of a process and all its descendants every 0.5 s; keeps the peaks."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak_group = 0
        self.peak_process = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                root = psutil.Process(self.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                continue
            sizes = []
            for process in processes:
                try:
                    sizes.append(process.memory_info().rss)
                except psutil.Error:
                    continue
            if sizes:
                self.peak_group = max(self.peak_group, sum(sizes))
                self.peak_process = max(self.peak_process, *sizes)


def status_counts(conn: psycopg.Connection[Any]) -> Counter[str]:
    rows = conn.execute("SELECT status, count(*) FROM ticket_requests GROUP BY status").fetchall()
    return Counter({str(status): int(count) for status, count in rows})


def lease_left(conn: psycopg.Connection[Any]) -> float:
    """Seconds until the last live lease on a pending row runs out (0 when none is live)."""
    row = conn.execute("SELECT EXTRACT(EPOCH FROM max(lease_expires_at) - now()) FROM ticket_requests "
                       "WHERE status = 'pending' AND lease_expires_at > now()").fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def run_dag(airflow: LocalAirflow, log: Path, figures: Figures, conf: dict[str, Any], *,
            kill_when: int | None, conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """One DAG run; SIGKILL its process group once ``kill_when`` rows are written back as created, if given. The
    first run also measures how long after its start it claimed rows (``figures.claim_after``)."""
    started = time.monotonic()
    process = airflow.start_dag_run(log, conf)
    watch = MemoryWatch(process.pid)
    watch.start()
    killed = False
    while process.poll() is None:
        if not figures.runs and not figures.claim_after and lease_left(conn) > 0:
            figures.claim_after = time.monotonic() - started
        if kill_when is not None and status_counts(conn)["created"] >= kill_when:
            os.killpg(process.pid, signal.SIGKILL)
            killed = True
            break
        time.sleep(0.5)
    code = process.wait()
    watch.stop.set()
    watch.join()
    figures.peak_rss_group = max(figures.peak_rss_group, watch.peak_group)
    figures.peak_rss_process = max(figures.peak_rss_process, watch.peak_process)
    run = {"log": log.name, "exit": code, "killed": killed, "seconds": round(time.monotonic() - started, 1),
           "table": dict(status_counts(conn)), "peak_rss_mb": round(watch.peak_group / 2**20),
           "lease_left": round(lease_left(conn), 1)}
    figures.runs.append(run)
    print(f"  run {len(figures.runs)}: {'SIGKILLed' if killed else f'exit {code}'} after {run['seconds']} s; "
          f"table {run['table']}; peak RSS {run['peak_rss_mb']} MB", flush=True)
    return run


def emulator_records(emulator: EmulatorProcess) -> list[dict[str, str]]:
    """Every loan service case, read through the Table API in pages (as a person would check)."""
    records: list[dict[str, str]] = []
    with requests.Session() as http:
        http.auth = ("admin", emulator.password)
        while True:
            response = http.get(f"{emulator.url}/api/now/table/{TABLE}", timeout=120, params={
                "sysparm_fields": "sys_id,number,correlation_id", "sysparm_limit": "10000",
                "sysparm_offset": str(len(records)), "sysparm_query": "ORDERBYsys_created_on",
            })
            response.raise_for_status()
            page = response.json()["result"]
            records += page
            if len(page) < 10000:
                return records


def check(conn: psycopg.Connection[Any], records: list[dict[str, str]], invalid_ids: set[str]) -> dict[str, Any]:
    per_correlation = Counter(record.get("correlation_id") for record in records)
    by_sys_id = {record.get("sys_id"): record for record in records}
    rows = conn.execute("SELECT request_id, status, sys_id, number, error, sync_action FROM ticket_requests").fetchall()
    lost, wrong_link, pending_with_reason, invalid_sent = [], [], 0, []
    outcome: Counter[str] = Counter()
    for request_id, status, sys_id, number, error, action in rows:
        outcome[f"{status}_{action}" if action else status] += 1
        if status == "created":
            record = by_sys_id.get(sys_id)
            if record is None or record.get("correlation_id") != request_id or record.get("number") != number:
                wrong_link.append(request_id)
        elif status == "pending":
            if error:
                pending_with_reason += 1
            else:
                lost.append(request_id)
        elif status not in ("rejected", "failed"):
            lost.append(request_id)
        if request_id in invalid_ids and request_id in per_correlation:
            invalid_sent.append(request_id)
    valid_without_record = [rid for rid, status, *_ in rows
                            if rid not in invalid_ids and status == "created" and rid not in per_correlation]
    return {
        "outcome": dict(sorted(outcome.items())),
        "records": len(records),
        "duplicates": sum(n - 1 for n in per_correlation.values() if n > 1),
        "lost": len(lost) + len(valid_without_record),
        "wrong_link": len(wrong_link),
        "invalid_sent": len(invalid_sent),
        "pending_with_reason": pending_with_reason,
        "examples": {"lost": lost[:5], "wrong_link": wrong_link[:5], "invalid_sent": invalid_sent[:5]},
    }


def seed(dsn: str, rows: int) -> tuple[dict[str, Any], set[str]]:
    """A fresh database holding the sample backlog; returns its connection parameters and the invalid ids."""
    name = f"ticketsync_soak_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    params = {**psycopg.conninfo.conninfo_to_dict(dsn), "dbname": name}
    with SourceTable(lambda: psycopg.connect(**params), Dialect.POSTGRES) as source:
        source.ensure_schema()
        batch: list[dict[str, Any]] = []
        for request in sample_requests(rows, invalid_every=INVALID_EVERY, prefix="SOAK"):
            batch.append(request)
            if len(batch) == 5000:
                source.insert_requests(batch)
                batch = []
        source.insert_requests(batch)
    invalid = {f"SOAK-{i:07d}" for i in range(1, rows + 1) if i % INVALID_EVERY == 0}
    return params, invalid


def connection_json(params: dict[str, Any]) -> str:
    return json.dumps({"conn_type": "postgres", "host": params.get("host", "127.0.0.1"),
                       "port": int(params.get("port", 5432)), "login": params.get("user", "postgres"),
                       "schema": params["dbname"]})


def summary(figures: Figures, result: dict[str, Any], stats: dict[str, Any], emulator_rss: int) -> str:
    minutes, seconds = divmod(time.monotonic() - figures.started, 60)
    injected = {kind: n for kind, n in stats["faults"].items() if n}
    share = sum(injected.values()) / max(1, stats["requests_total"])
    kills = sum(1 for run in figures.runs if run["killed"])
    lines = [
        "",
        f"ticketsync soak: {figures.rows:,} requests ({figures.invalid:,} invalid), PostgreSQL source, "
        f"{kills} worker kills (SIGKILL of the `airflow dags test` process group), {len(figures.runs)} DAG runs",
        f"  runtime            {int(minutes)} min {seconds:.0f} s (including the kills and the lease waits)",
        f"  outcome            {result['outcome']}",
        f"  duplicates         {result['duplicates']}   (records sharing a correlation_id, of {result['records']:,})",
        f"  lost               {result['lost']}   (rows in no final state and pending without a reason, or created "
        "without a record)",
        f"  wrong links        {result['wrong_link']}   invalid rows sent: {result['invalid_sent']}",
        f"  still pending      {result['pending_with_reason']}   (retryable, each with its reason)",
        f"  peak memory        {figures.peak_rss_group / 2**20:.0f} MB RSS for a DAG run's whole process group, "
        f"{figures.peak_rss_process / 2**20:.0f} MB for its largest process; emulator {emulator_rss / 2**20:.0f} MB",
        f"  API requests       {stats['requests_total']:,} {stats['by_method']}; 429 answers: {stats['throttled']:,}",
        f"  faults injected    {sum(injected.values()):,} ({share:.1%} of requests): {injected}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--max-runs", type=int, default=8, help="normal runs after the kills, at most")
    parser.add_argument("--lease-seconds", type=int, default=LEASE_SECONDS,
                        help=f"the runs' lease, waited out after each kill (default {LEASE_SECONDS}; at least 10)")
    parser.add_argument("--pg-dsn", default=os.environ.get("TICKETSYNC_TEST_PG_DSN",
                                                           "host=127.0.0.1 port=5432 user=postgres dbname=postgres"))
    parser.add_argument("--workdir", type=Path, help="where logs go (default: a temporary directory, kept)")
    parser.add_argument("--keep-database", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--airflow-home", type=Path,
                        help="AIRFLOW_HOME to run in (default: a new one in the work directory, migrated)")
    args = parser.parse_args(argv)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ticketsync-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {args.rows:,} requests; logs in {work}", flush=True)
    figures = Figures(rows=args.rows, invalid=0)
    params, invalid = seed(args.pg_dsn, args.rows)
    figures.invalid = len(invalid)
    print(f"  seeded database {params['dbname']} in {time.monotonic() - figures.started:.0f} s", flush=True)
    airflow = LocalAirflow(home=args.airflow_home or work / "airflow")
    airflow.migrate()
    # settle_seconds: the emulator's slowest write (2.5 s) stands in for ServiceNow's 60 s transaction quota.
    conf = {"limit": args.rows + 1, "lease_seconds": args.lease_seconds, "settle_seconds": 5}
    try:
        with EmulatorProcess(work / "emulator", *FAULTS, "--seed", "20261128") as emulator, \
                psycopg.connect(**params, autocommit=True) as conn:
            airflow.connections = {"ticket_source": connection_json(params),
                                   "servicenow_default": emulator.connection(timeout=CLIENT_TIMEOUT)}
            valid = args.rows - len(invalid)
            for number, share in enumerate(KILL_AT, start=1):
                run_dag(airflow, work / f"killed-{number}.log", figures, conf, kill_when=int(valid * share), conn=conn)
                # The dead run's rows come back when its lease runs out. The next run claims about claim_after
                # seconds after its start (Airflow starting): start it half of that before the last lease ends. Its
                # claim takes only rows whose lease has run out, whenever it comes; a later run takes any left.
                time.sleep(max(0.0, lease_left(conn) + 1 - figures.claim_after / 2))
            for number in range(1, args.max_runs + 1):
                run = run_dag(airflow, work / f"run-{number}.log", figures, conf, kill_when=None, conn=conn)
                if run["exit"] == 0 and not status_counts(conn)["pending"]:
                    break
            stats = emulator.stats()
            emulator_rss = psutil.Process(emulator.process.pid).memory_info().rss if emulator.process else 0
            emulator.set_faults(**NO_FAULTS)  # the check reads through the Table API; the sync is over
            records = emulator_records(emulator)
            result = check(conn, records, invalid)
    finally:
        if not args.keep_database:
            with psycopg.connect(args.pg_dsn, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{params["dbname"]}" WITH (FORCE)')
    print(summary(figures, result, stats, emulator_rss))
    if args.json:
        args.json.write_text(json.dumps({**result, "runs": figures.runs, "stats": stats,
                                         "claim_after": round(figures.claim_after, 1),
                                         "peak_rss_group": figures.peak_rss_group,
                                         "peak_rss_process": figures.peak_rss_process,
                                         "seconds": round(time.monotonic() - figures.started, 1)}, indent=1))
    kills = sum(1 for run in figures.runs if run["killed"])
    failed = [name for name, bad in (("duplicates", result["duplicates"]), ("lost", result["lost"]),
                                     ("wrong links", result["wrong_link"]), ("invalid sent", result["invalid_sent"]),
                                     ("fewer than 2 kills", kills < len(KILL_AT))) if bad]
    print("soak checks: " + ("PASSED" if not failed else f"FAILED ({', '.join(failed)})"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
