"""`make bench`: how fast the sync runs against an instance that serves C requests at once, each taking L ms.

One emulator process (``--latency-ms L --concurrency-limit C``; the ceiling is C / L requests a second), with its
session synchroniser on (one transaction at a time per session, as on a real instance), serves, in one run:

1. the project's DAG through Airflow (``airflow dags test``, PostgreSQL source in a throw-away database) on an empty
   table (Airflow's fixed start-up cost) and on N rows, with ``max_in_flight`` = C: rows/s end to end, excluding the
   start-up, and in the load task alone (from its log); CPU (user + sys) per row of the DAG run and of the emulator;
2. a sequential ``requests`` loop doing the same POSTs, on fewer rows;
3. the naive DAG (``bench/dags/naive_http_mapped.py``: one mapped ``HttpOperator`` task per row), on a few rows;
4. the peak RSS of the DAG run at N and at 10 x N rows: ``ru_maxrss`` of the rusage ``wait4`` returns for the
   ``airflow dags test`` process (the largest single process of its tree; ``dags test`` runs the tasks in it);
5. the DAG again with the emulator's rate limit set below what this box can serve (``--rate-limit``, 200/s: about
   half of what the bare client below reaches at L = 20 ms, so the run measures the pacing, not the box), for a
   minute at that limit: the 429s it answered and the rate it served over the load task;
6. a bare C-lane client (C threads, each its own session, POST only, no database): the physical limit of this box;
   and the same C threads sharing one session cookie: the control, which the session synchroniser serialises;
7. the DAG again at ``--slow-latency-ms`` (100 ms): its rate against that ceiling, and the bare client's there.
The main run also reports the ServiceNow sessions the loader made the instance create.

It prints one table and writes it, with the date and the commit measured, between the markers of docs/performance.md.

    make bench                                  # the full table (about 10 minutes on a quiet 2-core machine)
    PYTHONPATH=plugins:dev .venv/bin/python bench/bench.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import requests

from ticketsync.models import PreparedCase, SourceRow
from ticketsync.source import Dialect, SourceTable
from ticketsync.transform import prepare
from ticketsync_dev.local import BIN, REPO, EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import sample_requests

PG_ADMIN_DSN = os.environ.get("TICKETSYNC_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
TABLE = "sn_bom_loan_service"
PAGE = REPO / "docs" / "performance.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z")


@dataclass
class RunResult:
    """One ``airflow dags test`` run."""

    rows: int
    seconds: float
    cpu_seconds: float
    max_rss_mb: float
    load_seconds: float | None
    counts: dict[str, int] = field(default_factory=dict)
    emulator: dict[str, Any] = field(default_factory=dict)


@dataclass
class Row:
    what: str
    value: str
    target: str = ""
    met: bool | None = None

    def cells(self) -> list[str]:
        verdict = "" if self.met is None else ("yes" if self.met else "**no**")
        return [self.what, self.value, self.target, verdict]


# --------------------------------------------------------------------------------------------------------------
# a throw-away PostgreSQL source
# --------------------------------------------------------------------------------------------------------------


@contextmanager
def pg_source(rows: int, prefix: str) -> Iterator[tuple[SourceTable, str]]:
    """A fresh database with ``rows`` valid pending requests; yields the table and its Airflow connection JSON."""
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    name = f"ticketsync_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    params: dict[str, Any] = {**psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN), "dbname": name}
    source = SourceTable(lambda: psycopg.connect(**params), Dialect.POSTGRES)
    try:
        source.ensure_schema()
        for start in range(0, rows, 10_000):
            source.insert_requests(sample_requests(min(10_000, rows - start), prefix=f"{prefix}{start // 10_000}-"))
        conn = {"conn_type": "postgres", "host": params.get("host", "127.0.0.1"), "port": int(params.get("port", 5432)),
                "login": params.get("user", "postgres"), "schema": name}
        if params.get("password"):
            conn["password"] = params["password"]
        yield source, json.dumps(conn)
    finally:
        source.close()
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def status_counts(source: SourceTable) -> dict[str, int]:
    return source.backlog()


# --------------------------------------------------------------------------------------------------------------
# measuring one process
# --------------------------------------------------------------------------------------------------------------


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one live process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, Any]:
    """Run a command to the end; its exit code, wall seconds, and the rusage wait4 returns for it."""
    with log.open("wb") as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                os.killpg(process.pid, 9)
                raise TimeoutError(f"{' '.join(command[:4])} ran longer than {timeout:.0f} s; see {log}")
            time.sleep(0.05)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, seconds, usage


def task_seconds(log: Path, task_id: str = "load") -> float | None:
    """From a DAG run's log: the first start of the task to its last end (all its mapped instances)."""
    started = ended = None
    for line in log.read_text(errors="replace").splitlines():
        match = TIMESTAMP.match(line)
        if not match:
            continue
        if f"[DAG TEST] starting task_id={task_id} " in line:
            started = started or datetime.fromisoformat(match[1])
        elif f"[DAG TEST] end task task_id={task_id} " in line:
            ended = datetime.fromisoformat(match[1])
    if started is None or ended is None:
        return None
    return (ended - started).total_seconds()


# --------------------------------------------------------------------------------------------------------------
# the runs
# --------------------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.ceiling = args.concurrency / (args.latency_ms / 1000)
        self.emulator = EmulatorProcess(
            work / "emulator", "--latency-ms", str(args.latency_ms), "--concurrency-limit", str(args.concurrency)
        )
        self.airflow = LocalAirflow(home=work / "airflow")
        self.runs = 0

    def log(self, text: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {text}", flush=True)

    def dag_run(self, rows: int, *, conf: dict[str, Any] | None = None, prefix: str = "B") -> RunResult:
        """The project's DAG on a fresh source of ``rows`` requests; checks every row was created once."""
        self.runs += 1
        with pg_source(rows, f"{prefix}{self.runs}-") as (source, source_conn):
            self.airflow.connections = {
                "ticket_source": source_conn,
                "servicenow_default": self.emulator.connection(timeout=60),
            }
            self.airflow.migrate()
            before = self.emulator.stats()
            assert self.emulator.process is not None
            emulator_cpu = process_cpu_seconds(self.emulator.process.pid)
            log = self.work / f"dag-{self.runs}-{rows}.log"
            conf = {"limit": max(rows, 1), "max_in_flight": self.args.concurrency, **(conf or {})}
            code, seconds, usage = run_measured(
                self.airflow.dags_test_command(conf), self.airflow.env(), log, timeout=self.args.timeout
            )
            emulator_cpu = process_cpu_seconds(self.emulator.process.pid) - emulator_cpu
            after = self.emulator.stats()
            backlog = status_counts(source)
        if code != 0 or backlog.get("created", 0) != rows:
            raise RuntimeError(f"the DAG run on {rows} rows ended with exit code {code} and {backlog}; see {log}")
        return RunResult(
            rows=rows,
            seconds=seconds,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            max_rss_mb=usage.ru_maxrss / 1024,
            load_seconds=task_seconds(log),
            counts=backlog,
            emulator={"cpu_seconds": emulator_cpu, **_delta(before, after)},
        )

    def sequential(self, rows: int) -> float:
        """A plain script: one ``requests`` POST after another, the same bodies; rows/s."""
        bodies = []
        for i, request in enumerate(sample_requests(rows, prefix=f"SEQ{uuid.uuid4().hex[:6]}-")):
            case = prepare(SourceRow(id=i + 1, **request))
            if isinstance(case, PreparedCase):
                bodies.append(case.body.to_json())
        session = requests.Session()
        session.auth = ("admin", self.emulator.password)
        url = f"{self.emulator.url}/api/now/table/{TABLE}"
        started = time.perf_counter()
        for body in bodies:
            response = session.post(url, json=body, headers={"Accept": "application/json"}, timeout=60)
            response.raise_for_status()
        seconds = time.perf_counter() - started
        session.close()
        return len(bodies) / seconds

    def naive(self, rows: int) -> tuple[float, float | None]:
        """The naive mapped DAG on ``rows`` requests: wall seconds, and the mapped tasks' span from its log."""
        with pg_source(rows, "NAIVE-") as (_source, source_conn):
            naive_conn = json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.emulator.port,
                                     "schema": "http", "login": "admin", "password": self.emulator.password})
            env = self.airflow.env()
            env.update({
                "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "bench" / "dags"),
                "AIRFLOW_CONN_TICKET_SOURCE": source_conn,
                "AIRFLOW_CONN_NAIVE_SERVICENOW": naive_conn,
            })
            before = self.emulator.stats()
            log = self.work / f"naive-{rows}.log"
            command = [str(BIN / "airflow"), "dags", "test", "naive_http_mapped", "--conf", json.dumps({"limit": rows})]
            code, seconds, _ = run_measured(command, env, log, timeout=self.args.timeout)
            created = _delta(before, self.emulator.stats())["by_status"].get("201", 0)
        if code != 0 or created != rows:
            raise RuntimeError(f"the naive DAG on {rows} rows: exit code {code}, {created} created; see {log}")
        return seconds, task_seconds(log, "create_case")

    def bare(self, rows: int, *, shared_session: bool) -> dict[str, float]:
        """C threads POSTing the same bodies, no database: each thread with a session of its own (the physical
        limit of this box), or all sharing one session cookie (the control). Rows/s and sessions created."""
        bodies = []
        for i, request in enumerate(sample_requests(rows, prefix=f"BARE{uuid.uuid4().hex[:6]}-")):
            case = prepare(SourceRow(id=i + 1, **request))
            if isinstance(case, PreparedCase):
                bodies.append(case.body.to_json())
        lanes = self.args.concurrency
        shared = requests.Session()
        shared.auth = ("admin", self.emulator.password)
        url = f"{self.emulator.url}/api/now/table/{TABLE}"
        refused: list[int] = []  # 429s: one session's requests beyond the instance's "max waiters"

        def lane(index: int) -> None:
            session = shared if shared_session else requests.Session()
            session.auth = ("admin", self.emulator.password)
            for body in bodies[index::lanes]:
                while True:
                    response = session.post(url, json=body, headers={"Accept": "application/json"}, timeout=60)
                    if response.status_code != 429:
                        break
                    refused.append(1)
                    time.sleep(0.05)
                response.raise_for_status()

        before = self.emulator.stats()
        if shared_session:  # open the one session before the threads start, or each would start its own
            shared.get(url, params={"sysparm_limit": "1"}, headers={"Accept": "application/json"}, timeout=60)
        started = time.perf_counter()
        with ThreadPoolExecutor(lanes) as pool:
            list(pool.map(lane, range(lanes)))
        seconds = time.perf_counter() - started
        sessions = _delta(before, self.emulator.stats())["sessions_created"]
        return {"rows_per_second": len(bodies) / seconds, "sessions_created": sessions, "refused_429": len(refused)}

    @contextmanager
    def _slow_latency(self) -> Iterator[None]:
        """The emulator at ``--slow-latency-ms`` for what runs inside, then back at L."""
        self.emulator.set_faults(latency_ms=self.args.slow_latency_ms)
        try:
            yield
        finally:
            self.emulator.set_faults(latency_ms=self.args.latency_ms)

    def bare_slow(self, rows: int) -> dict[str, float]:
        """The bare C-lane client at the slow latency: the physical limit of this box there."""
        with self._slow_latency():
            return self.bare(rows, shared_session=False)

    def slow(self, rows: int) -> RunResult:
        """The DAG at the slow latency (the emulator's latency changed for this run only)."""
        with self._slow_latency():
            return self.dag_run(rows, prefix="SLOW")

    def rate_limited(self, rows: int) -> RunResult:
        """The DAG with the emulator's rate limit below the ceiling (burst: one window of C requests)."""
        self.emulator.set_faults(rate_limit_per_second=self.args.rate_limit, rate_limit_burst=self.args.concurrency)
        try:
            return self.dag_run(rows, prefix="RL")
        finally:
            self.emulator.set_faults(rate_limit_per_second=0, rate_limit_burst=0)


def _delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the emulator answered between two stats snapshots."""
    statuses = set(before["by_status"]) | set(after["by_status"])
    by_status = {s: after["by_status"].get(s, 0) - before["by_status"].get(s, 0) for s in sorted(statuses)}
    return {"by_status": {s: n for s, n in by_status.items() if n}, "requests": sum(by_status.values()),
            "sessions_created": after.get("sessions_created", 0) - before.get("sessions_created", 0)}


# --------------------------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------------------------


def build_table(args: argparse.Namespace, ceiling: float, results: dict[str, Any]) -> list[Row]:
    empty: RunResult = results["empty"]
    main: RunResult = results["main"]
    big: RunResult = results["big"]
    limited: RunResult = results["limited"]
    n = main.rows
    net = main.seconds - empty.seconds
    rate = n / net
    rows = [
        Row("Airflow start-up (empty run, 0 rows)", f"{empty.seconds:.1f} s"),
        Row(f"DAG, {n:,} rows, end to end", f"{n / main.seconds:.0f} rows/s ({main.seconds:.1f} s)"),
        Row(f"DAG, {n:,} rows, excluding start-up", f"{rate:.0f} rows/s = {rate / ceiling:.2f} of the ceiling",
            "≥ 0.90", rate / ceiling >= 0.9),
    ]
    if main.load_seconds:
        load_rate = n / main.load_seconds
        rows.append(Row("load task alone (from its log)", f"{load_rate:.0f} rows/s = {load_rate / ceiling:.2f} of "
                        f"the ceiling ({main.load_seconds:.1f} s)"))
    cpu_dag = (main.cpu_seconds - empty.cpu_seconds) / n * 1000
    cpu_emulator = main.emulator["cpu_seconds"] / n * 1000
    rows.append(Row("CPU per row (user + sys): DAG run / emulator", f"{cpu_dag:.2f} ms / {cpu_emulator:.2f} ms",
                    "DAG ≤ 0.5 ms", cpu_dag <= 0.5))
    sessions = main.emulator.get("sessions_created", 0)
    rows.append(Row(f"ServiceNow sessions the loader created ({n:,} rows)", f"{sessions}",
                    f"≤ 2 × max_in_flight = {2 * args.concurrency}", sessions <= 2 * args.concurrency))
    bare, control = results.get("bare"), results.get("shared_cookie")
    if bare:
        bare_rate = bare["rows_per_second"]
        rows.append(Row(f"bare {args.concurrency}-lane client (a session each, POST only, {args.bare_rows} rows)",
                        f"{bare_rate:.0f} rows/s = {bare_rate / ceiling:.2f} of the ceiling"))
        rows.append(Row(f"DAG at L = {args.latency_ms:g} ms against the bare client", f"{rate / bare_rate:.2f}",
                        "≥ 0.85", rate / bare_rate >= 0.85))
    if control:
        rows.append(Row(f"control: {args.concurrency} threads sharing one session cookie",
                        f"{control['rows_per_second']:.0f} rows/s = {control['rows_per_second'] / ceiling:.2f} of the "
                        f"ceiling ({control['sessions_created']} session, {control.get('refused_429', 0)} × 429 for "
                        "too many waiting)"))
    slow: RunResult | None = results.get("slow")
    if slow:
        slow_ceiling = args.concurrency / (args.slow_latency_ms / 1000)
        slow_rate = slow.rows / (slow.seconds - empty.seconds)
        rows.append(Row(f"DAG at L = {args.slow_latency_ms:g} ms, {slow.rows:,} rows, excluding start-up",
                        f"{slow_rate:.0f} rows/s = {slow_rate / slow_ceiling:.2f} of its ceiling "
                        f"({slow_ceiling:.0f}/s)", "≥ 0.93", slow_rate / slow_ceiling >= 0.93))
        bare_slow = results.get("bare_slow")
        if bare_slow:
            bare_slow_rate = bare_slow["rows_per_second"]
            rows.append(Row(f"bare {args.concurrency}-lane client at L = {args.slow_latency_ms:g} ms "
                            f"({args.bare_slow_rows:,} rows)",
                            f"{bare_slow_rate:.0f} rows/s = {bare_slow_rate / slow_ceiling:.2f} of its ceiling; "
                            f"DAG is {slow_rate / bare_slow_rate:.2f} of it"))
    seq = results["sequential"]
    rows.append(Row(f"sequential `requests` loop ({args.seq_rows} rows)", f"{seq:.1f} rows/s; DAG is {rate / seq:.0f}x",
                    "≥ 15x", rate / seq >= 15))
    naive_seconds, naive_span = results["naive_seconds"], results["naive_span"]
    if naive_span:  # the mapped tasks alone, from the first start to the last end: no start-up in it
        naive_rate, how = args.naive_rows / naive_span, f"mapped tasks {naive_span:.0f} s of {naive_seconds:.0f} s"
    else:
        naive_rate, how = args.naive_rows / naive_seconds, f"end to end, {naive_seconds:.0f} s"
    rows.append(Row(f"naive mapped `HttpOperator` DAG ({args.naive_rows} rows, excl. start-up)",
                    f"{naive_rate:.2f} rows/s ({how}); DAG is {rate / naive_rate:.0f}x",
                    "≥ 100x", rate / naive_rate >= 100))
    growth = big.max_rss_mb - main.max_rss_mb
    rows.append(Row(f"peak RSS of the DAG run: {main.rows:,} / {big.rows:,} rows",
                    f"{main.max_rss_mb:.0f} MB / {big.max_rss_mb:.0f} MB ({growth:+.0f} MB)", "≤ +50 MB", growth <= 50))
    rows.append(Row(f"DAG, {big.rows:,} rows, excluding start-up",
                    f"{big.rows / (big.seconds - empty.seconds):.0f} rows/s ({big.seconds:.0f} s)"))
    served = limited.emulator["by_status"]
    throttled = served.get("429", 0)
    ok_requests = sum(n for s, n in served.items() if s.startswith("2"))
    window = limited.load_seconds or (limited.seconds - empty.seconds)
    achieved = ok_requests / window
    off = abs(achieved - args.rate_limit) / args.rate_limit
    rows.append(Row(f"rate limit {args.rate_limit:.0f}/s ({limited.rows:,} rows): achieved rate, 429s",
                    f"{achieved:.0f} req/s ({off:.0%} off the limit), {throttled} × 429",
                    "within 10 %, ≤ 16 × 429", off <= 0.10 and throttled <= 16))
    return rows


def render(rows: list[Row], args: argparse.Namespace, ceiling: float, total_seconds: float) -> str:
    head = ["measurement", "result", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "| " + " | ".join("---" for _ in head) + " |"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    load = [args.load_average] if getattr(args, "load_average", None) else os.getloadavg()
    measured_with = getattr(args, "measured_with", None)  # the arguments of the run a --table-from table comes from
    argv = measured_with if args.table_from else args.argv
    command = "bench/bench.py " + " ".join(argv) if argv else "make bench"
    note = (f"Emulator latency {args.latency_ms:g} ms, concurrency limit {args.concurrency} (ceiling "
            f"{ceiling:.0f} requests/s), max_in_flight {args.concurrency}; PostgreSQL source; "
            f"{os.cpu_count()} CPUs, load average {load[0]:.1f} at the end; the whole bench took "
            f"{total_seconds / 60:.1f} min ({args.measured_on}, commit `{args.commit}`, `{command}`).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def measured_commit() -> str:
    """The commit the bench measured (``+changes`` when the work tree differs from it), or ``unknown``."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def write_page(table: str) -> None:
    """Put the table between the markers of the performance page (appended under a heading if they are missing)."""
    text = PAGE.read_text(encoding="utf-8")
    block = f"{START}\n{table}{END}"
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## The benchmark\n\n" + block + "\n"
    PAGE.write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency-ms", "-L", type=float, default=20.0, help="emulator latency per request (20)")
    parser.add_argument("--concurrency", "-C", type=int, default=16, help="emulator concurrency limit (16)")
    parser.add_argument("--rows", "-N", type=int, default=10_000, help="rows of the main DAG run (10,000)")
    parser.add_argument("--big-rows", type=int, help="rows of the second RSS run (10 x N)")
    parser.add_argument("--seq-rows", type=int, default=500, help="rows of the sequential loop (500)")
    parser.add_argument("--naive-rows", type=int, default=60, help="rows of the naive mapped DAG (60)")
    parser.add_argument("--rate-limit", type=float, default=200.0,
                        help="the emulator's rate limit, req/s (200: well under what the box serves at L)")
    parser.add_argument("--rate-rows", type=int, help="rows of the rate-limited run (60 s at the limit)")
    parser.add_argument("--bare-rows", type=int, default=4000, help="rows of the bare C-lane client (4,000)")
    parser.add_argument("--slow-latency-ms", type=float, default=100.0, help="latency of the slow DAG run (100)")
    parser.add_argument("--slow-rows", type=int, help="rows of the slow DAG run (30 s at its ceiling)")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every measurement")
    parser.add_argument("--no-write", "--no-readme", dest="no_write", action="store_true",
                        help="print the table only (do not write docs/performance.md)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) and say where")
    parser.add_argument("--timeout", type=float, default=3600.0, help="longest one DAG run may take, s")
    parser.add_argument("--table-from", type=Path, metavar="RAW_JSON",
                        help="no measuring: render the table from the raw JSON a run printed (its 'raw:' line)")
    args = parser.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.rows, args.seq_rows, args.naive_rows = min(args.rows, 2000), min(args.seq_rows, 200), 10
        args.big_rows = args.big_rows or 4 * args.rows
        args.rate_rows = args.rate_rows or 2000
        args.bare_rows, args.slow_rows = min(args.bare_rows, 800), args.slow_rows or 400
    args.slow_rows = args.slow_rows or int(30 * args.concurrency / (args.slow_latency_ms / 1000))
    args.big_rows = args.big_rows or 10 * args.rows
    args.rate_rows = args.rate_rows or int(60 * args.rate_limit)
    args.bare_slow_rows = int(10 * args.concurrency / (args.slow_latency_ms / 1000)) if not args.quick else 160
    return args


def from_raw(path: Path) -> tuple[dict[str, Any], float]:
    raw = json.loads(path.read_text().removeprefix("raw: "))
    for key in ("empty", "main", "big", "limited", "slow"):
        if key in raw:
            raw[key] = RunResult(**raw[key])
    return raw, float(raw.pop("total_seconds", 0.0))


def _with_load(args: argparse.Namespace, results: dict[str, Any]) -> None:
    args.load_average = results.pop("load_average", None)
    args.commit = results.pop("commit", "unknown")
    args.measured_on = results.pop("measured_on", "date unknown")
    # raw JSON from before this field: the arguments are unknown, and the footer says `make bench`
    args.measured_with = results.pop("measured_with", None)


def publish(args: argparse.Namespace, ceiling: float, results: dict[str, Any], total_seconds: float) -> None:
    table = render(build_table(args, ceiling, results), args, ceiling, total_seconds)
    print("\n" + table)
    if not args.no_write:
        write_page(table)
        print(f"written to {PAGE.relative_to(REPO)} between {START} and {END}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.table_from:
        results, total_seconds = from_raw(args.table_from)
        _with_load(args, results)
        publish(args, args.concurrency / (args.latency_ms / 1000), results, total_seconds)
        return 0
    started = time.perf_counter()
    args.commit, args.measured_on = measured_commit(), time.strftime("%Y-%m-%d")
    work = Path(tempfile.mkdtemp(prefix="ticketsync-bench-"))
    bench = Bench(args, work)
    results: dict[str, Any] = {}
    try:
        bench.log(f"work directory {work}; preparing Airflow's metadata database")
        bench.airflow.migrate()
        with bench.emulator:
            bench.log(f"emulator on {bench.emulator.url}: L={args.latency_ms:g} ms, C={args.concurrency}, "
                      f"ceiling {bench.ceiling:.0f}/s")
            # The first run in a fresh Airflow home also serialises the DAG: the start-up is the faster of two.
            first, second = bench.dag_run(0), bench.dag_run(0)
            results["empty"] = min(first, second, key=lambda run: run.seconds)
            bench.log(f"empty runs: {first.seconds:.1f} s, {second.seconds:.1f} s")
            results["main"] = bench.dag_run(args.rows)
            bench.log(f"{args.rows} rows: {results['main'].seconds:.1f} s, load {results['main'].load_seconds} s")
            results["sequential"] = bench.sequential(args.seq_rows)
            bench.log(f"sequential loop: {results['sequential']:.1f} rows/s")
            results["bare"] = bench.bare(args.bare_rows, shared_session=False)
            bench.log(f"bare {args.concurrency}-lane client: {results['bare']}")
            results["shared_cookie"] = bench.bare(max(args.seq_rows, 2 * args.concurrency), shared_session=True)
            bench.log(f"shared-cookie control: {results['shared_cookie']}")
            results["slow"] = bench.slow(args.slow_rows)
            bench.log(f"L={args.slow_latency_ms:g} ms: {results['slow'].seconds:.1f} s for {args.slow_rows} rows")
            results["bare_slow"] = bench.bare_slow(args.bare_slow_rows)
            bench.log(f"bare client at L={args.slow_latency_ms:g} ms: {results['bare_slow']}")
            results["naive_seconds"], results["naive_span"] = bench.naive(args.naive_rows)
            bench.log(f"naive mapped DAG: {results['naive_seconds']:.1f} s for {args.naive_rows} rows")
            results["limited"] = bench.rate_limited(args.rate_rows)
            bench.log(f"rate-limited run: {results['limited'].emulator}")
            results["big"] = bench.dag_run(args.big_rows)
            big = results["big"]
            bench.log(f"{args.big_rows} rows: {big.seconds:.1f} s, peak RSS {big.max_rss_mb:.0f} MB")
        total_seconds = time.perf_counter() - started
        raw = {k: (v.__dict__ if isinstance(v, RunResult) else v) for k, v in results.items()}
        print("raw: " + json.dumps({**raw, "total_seconds": total_seconds, "load_average": os.getloadavg()[0],
                                    "commit": args.commit, "measured_on": args.measured_on,
                                    "measured_with": args.argv}))
        publish(args, bench.ceiling, results, total_seconds)
    finally:
        if args.keep:
            print(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
