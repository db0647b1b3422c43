"""`make scaleout`: one DAG run on the real CeleryExecutor, its mapped loaders spread over two Celery workers.

Everything is throw-away and on loopback: two PostgreSQL databases (Airflow's metadata, with the Celery result
backend, and the source), a temporary AIRFLOW_HOME, a private Celery queue on the local Redis, the ServiceNow
emulator as its own process, then `airflow scheduler`, `airflow dag-processor`, `airflow api-server` (the execution
API the workers report to) and two `airflow celery worker` processes with distinct host names. It seeds a backlog,
triggers `servicenow_ticket_sync` with `loaders` mapped load tasks, waits for the run, and checks that

* the run succeeded and its mapped loaders ran on both workers (task instance host names, metadata database),
* every valid row became exactly one record in the emulator, written back with its sys_id, and every invalid row
  was rejected and never sent.

It prints a summary (which host ran which map index, counts, timings) and a last line `RESULT {json}`, stops every
process group it started (also on failure, Ctrl-C or SIGTERM), drops the databases, and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import requests

from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import BIN, DAG_ID, REPO, EmulatorProcess
from ticketsync_dev.samples import sample_requests

PG_ADMIN_DSN = os.environ.get("TICKETSYNC_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
REDIS_URL = os.environ.get("TICKETSYNC_SCALEOUT_REDIS", "redis://127.0.0.1:6379/13")
TABLE = "sn_bom_loan_service"
INVALID_EVERY = 15
# Each worker reports this as its host name (Airflow's [core] hostname_callable), as separate machines would.
HOSTNAME_MODULE = '''import os, socket


def hostname() -> str:
    return os.environ.get("TICKETSYNC_SCALEOUT_HOSTNAME") or socket.getfqdn()
'''


class CheckFailed(Exception):
    """A scale-out check did not hold; the message says which."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, *, poll: float = 0.5) -> float:
    """Wait until ``predicate()`` holds; return the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise CheckFailed(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(poll)
    return time.monotonic() - started


@dataclass
class Services:
    """The processes this script started, each in its own process group, stopped together."""

    logs: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        out = (self.logs / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            [str(BIN / "airflow"), *args], env=env or self.env, stdout=out, stderr=subprocess.STDOUT,
            cwd=self.logs, start_new_session=True,
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.processes.items() if p.poll() is not None}
        if dead:
            name = next(iter(dead))
            raise CheckFailed(f"{name} exited with {dead[name]}; end of its log:\n{self.log(name)[-3000:]}")

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every group (workers finish warm), then SIGKILL what is left after ``timeout``."""
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # the group's children too, if any outlived their parent
            process.wait()
        self.processes.clear()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


@contextmanager
def databases(*names: str) -> Iterator[dict[str, str]]:
    """Throw-away PostgreSQL databases, dropped on the way out; yields name -> libpq DSN."""
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True, connect_timeout=5)
    params = psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN)
    created = []
    try:
        for name in names:
            admin.execute(f'CREATE DATABASE "{name}"')
            created.append(name)
        yield {name: psycopg.conninfo.make_conninfo("", **{**params, "dbname": name}) for name in names}
    finally:
        for name in created:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def sqlalchemy_url(dsn: str, driver: str) -> str:
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    auth = str(p.get("user", "postgres")) + (f":{p['password']}" if p.get("password") else "")
    return f"{driver}://{auth}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}"


def airflow_env(home: Path, meta_dsn: str, api_port: int, queue: str, connections: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.update({
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
        "AIRFLOW__CORE__HOSTNAME_CALLABLE": "scaleout_hostname.hostname",
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        # Only the run this script triggers: no scheduled run may claim the backlog first.
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sqlalchemy_url(meta_dsn, "postgresql+psycopg2"),
        "AIRFLOW__CELERY__BROKER_URL": REDIS_URL,
        "AIRFLOW__CELERY__RESULT_BACKEND": sqlalchemy_url(meta_dsn, "db+postgresql"),
        "AIRFLOW__OPERATORS__DEFAULT_QUEUE": queue,  # a private queue: other Celery users of this Redis see nothing
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "PYTHONPATH": os.pathsep.join([str(REPO / "plugins"), str(home)]),
        "TICKETSYNC_RETRY_DELAY_SECONDS": "2",
    })
    env.update({f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in connections.items()})
    return env


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return list(conn.execute(sql, params).fetchall())


@dataclass
class Config:
    rows: int
    loaders: int
    workers: int
    concurrency: int
    max_in_flight: int
    latency_ms: int
    timeout: float
    keep: bool


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="backlog size (every 15th row invalid)")
    parser.add_argument("--loaders", type=int, default=4, help="mapped load tasks (DAG param loaders)")
    parser.add_argument("--workers", type=int, default=2, help="airflow celery worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="task slots per worker")
    parser.add_argument("--max-in-flight", type=int, default=8, help="requests in flight per loader")
    parser.add_argument("--latency-ms", type=int, default=20, help="emulator latency per request")
    parser.add_argument("--timeout", type=float, default=600, help="seconds the whole run may take")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    args = parser.parse_args(argv)
    if args.loaders < 2 or args.workers < 2:
        parser.error("a scale-out needs --loaders >= 2 and --workers >= 2")
    return Config(args.rows, args.loaders, args.workers, args.concurrency, args.max_in_flight, args.latency_ms,
                  args.timeout, args.keep)


class ScaleOut:
    def __init__(self, config: Config, workdir: Path, dsns: dict[str, str], meta: str, src: str) -> None:
        self.config = config
        self.workdir = workdir
        self.meta_dsn = dsns[meta]
        self.source = SourceTable(lambda: psycopg.connect(dsns[src]), Dialect.POSTGRES)
        self.source_conn = json.dumps({**_conn_fields(dsns[src]), "conn_type": "postgres"})
        self.queue = f"ticketsync-scaleout-{uuid.uuid4().hex[:8]}"
        self.api_port = free_port()
        self.timings: dict[str, float] = {}
        self.notes: list[str] = []
        self.emulator: EmulatorProcess | None = None
        self.services: Services | None = None
        self.run_id = f"scaleout__{uuid.uuid4().hex[:8]}"
        self.api_password = secrets.token_urlsafe(16)

    # -- setting up --------------------------------------------------------------------------------------------

    def seed(self) -> list[dict[str, Any]]:
        self.source.ensure_schema()
        requests_ = list(sample_requests(self.config.rows, invalid_every=INVALID_EVERY, prefix="SCALE"))
        self.source.insert_requests(requests_)
        return requests_

    def start(self) -> None:
        cfg = self.config
        # The instance's API semaphores: exactly what the loaders may keep in flight together, no more.
        self.emulator = EmulatorProcess(
            self.workdir / "emulator", "--latency-ms", str(cfg.latency_ms),
            "--concurrency-limit", str(cfg.loaders * cfg.max_in_flight),
        ).start()
        home = self.workdir / "airflow"
        home.mkdir()
        (home / "scaleout_hostname.py").write_text(HOSTNAME_MODULE)
        env = airflow_env(home, self.meta_dsn, self.api_port, self.queue, {
            "ticket_source": self.source_conn, "servicenow_default": self.emulator.connection(timeout=10),
        })
        # The REST API's one user (SimpleAuthManager), with a password of ours instead of a generated one.
        passwords = home / "api-passwords.json"
        passwords.write_text(json.dumps({"admin": self.api_password}))
        env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
        logs = self.workdir / "logs"
        logs.mkdir()
        self.services = services = Services(logs, env)
        started = time.monotonic()
        migrate = subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=env, capture_output=True, text=True,
                                 check=False, timeout=600)
        if migrate.returncode:
            raise CheckFailed(f"airflow db migrate failed:\n{(migrate.stdout + migrate.stderr)[-3000:]}")
        self.timings["db migrate"] = time.monotonic() - started

        started = time.monotonic()
        services.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port), "-w", "1")
        services.start("scheduler", "scheduler")
        services.start("dag-processor", "dag-processor")
        for number in range(cfg.workers):
            name = f"worker-{chr(ord('a') + number)}"
            services.start(name, "celery", "worker", "--celery-hostname", name, "--concurrency",
                           str(cfg.concurrency), "--queues", self.queue, "--skip-serve-logs",
                           "--pid", str(logs / f"{name}.pid"), env={**env, "TICKETSYNC_SCALEOUT_HOSTNAME": name})
        self._wait_ready()
        self.timings["services ready"] = time.monotonic() - started

    def _wait_ready(self) -> None:
        assert self.services is not None
        services = self.services

        def ready() -> bool:
            services.check_alive()
            workers_up = all(" ready." in services.log(name) for name in services.processes if name[:7] == "worker-")
            return workers_up and self._api_healthy() and bool(
                query(self.meta_dsn, "SELECT 1 FROM serialized_dag WHERE dag_id = %s", DAG_ID)
            )

        wait_for(ready, 300, "the api-server, the DAG and the workers to be ready", poll=1.0)

    def _api_healthy(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.api_port}/api/v2/monitor/health", timeout=2).ok
        except requests.RequestException:
            return False

    # -- the run -----------------------------------------------------------------------------------------------

    def trigger_and_wait(self) -> str:
        assert self.services is not None
        cfg = self.config
        conf = {"loaders": cfg.loaders, "max_in_flight": cfg.max_in_flight, "limit": cfg.rows}
        api = f"http://127.0.0.1:{self.api_port}"
        login = requests.post(f"{api}/auth/token", json={"username": "admin", "password": self.api_password},
                              timeout=30)
        if not login.ok:
            raise CheckFailed(f"could not log in to the REST API: {login.status_code} {login.text[:300]}")
        trigger = requests.post(
            f"{api}/api/v2/dags/{DAG_ID}/dagRuns", timeout=30,
            headers={"Authorization": f"Bearer {login.json()['access_token']}"},
            json={"dag_run_id": self.run_id, "logical_date": None, "conf": conf},
        )
        if not trigger.ok:
            raise CheckFailed(f"triggering the run failed: {trigger.status_code} {trigger.text[:500]}")

        def finished() -> bool:
            self.services.check_alive()  # type: ignore[union-attr]
            rows = query(self.meta_dsn, "SELECT state FROM dag_run WHERE dag_id = %s AND run_id = %s",
                         DAG_ID, self.run_id)
            return bool(rows) and rows[0][0] in ("success", "failed")

        wait_for(finished, cfg.timeout, f"run {self.run_id} to finish", poll=1.0)
        ((state, queued, run_start, run_end),) = query(
            self.meta_dsn, "SELECT state, queued_at, start_date, end_date FROM dag_run WHERE dag_id = %s "
            "AND run_id = %s", DAG_ID, self.run_id)
        self.timings["run: queued to end"] = (run_end - queued).total_seconds()
        self.timings["run: start to end"] = (run_end - run_start).total_seconds()
        return str(state)

    def task_instances(self) -> list[dict[str, Any]]:
        """The run's task instances (who ran where, when), with each loader's counts from its XCom."""
        columns = ("task_id", "map_index", "hostname", "state", "try_number", "start_date", "end_date")
        rows = query(self.meta_dsn, f"SELECT {', '.join(columns)} FROM task_instance WHERE dag_id = %s AND "
                     "run_id = %s ORDER BY start_date, task_id, map_index", DAG_ID, self.run_id)
        xcoms = query(self.meta_dsn, "SELECT map_index, value FROM xcom WHERE dag_id = %s AND run_id = %s AND "
                      "task_id = 'load' AND key = 'return_value'", DAG_ID, self.run_id)
        counts = {index: value if isinstance(value, dict) else json.loads(value) for index, value in xcoms}
        tis = [dict(zip(columns, row, strict=True)) for row in rows]
        for ti in tis:
            ti["counts"] = counts.get(ti["map_index"]) if ti["task_id"] == "load" else None
        return tis

    # -- checks ------------------------------------------------------------------------------------------------

    def check_exactly_once(self, requests_: list[dict[str, Any]]) -> dict[str, Any]:
        assert self.emulator is not None
        records = self.emulator.records(TABLE)
        per_correlation = Counter(record["correlation_id"] for record in records)
        by_sys_id = {record["sys_id"]: record for record in records}
        with self.source._transaction() as cursor:
            cursor.execute("SELECT request_id, status, sys_id, number FROM ticket_requests")
            state = {row[0]: row[1:] for row in cursor.fetchall()}
        invalid = {r["request_id"] for i, r in enumerate(requests_, start=1) if i % INVALID_EVERY == 0}
        problems = [f"{key}: {n} records" for key, n in per_correlation.items() if n > 1]
        for request in requests_:
            request_id = request["request_id"]
            status, sys_id, number = state[request_id]
            if request_id in invalid:
                if status != "rejected" or request_id in per_correlation:
                    problems.append(f"{request_id}: invalid but {status}, {per_correlation[request_id]} records")
            elif status != "created" or by_sys_id.get(sys_id, {}).get("correlation_id") != request_id or (
                by_sys_id[sys_id]["number"] != number
            ):
                problems.append(f"{request_id}: {status}, sys_id {sys_id} does not match a record of it")
        if set(per_correlation) - (set(state) - invalid):
            problems.append("records exist for correlation ids that are not valid rows")
        if problems:
            raise CheckFailed(f"not exactly once ({len(problems)} problems): {problems[:10]}")
        stats = self.emulator.stats()
        return {"records": len(records), "valid": len(requests_) - len(invalid), "rejected": len(invalid),
                "duplicates": sum(n - 1 for n in per_correlation.values()), "requests": stats["requests_total"],
                "throttled_429": stats["throttled"]}


def _conn_fields(dsn: str) -> dict[str, Any]:
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    fields = {"host": p.get("host", "127.0.0.1"), "port": int(str(p.get("port", 5432))),
              "login": p.get("user", "postgres"), "schema": p["dbname"]}
    if p.get("password"):
        fields["password"] = p["password"]
    return fields


def summarize(config: Config, state: str, tis: list[dict[str, Any]], outcome: dict[str, Any],
              timings: dict[str, float]) -> dict[str, Any]:
    loads = [ti for ti in tis if ti["task_id"] == "load"]
    hosts: dict[str, list[int]] = {}
    for ti in loads:
        hosts.setdefault(str(ti["hostname"]), []).append(int(ti["map_index"]))
    starts = [ti["start_date"] for ti in loads if ti["start_date"]]
    ends = [ti["end_date"] for ti in loads if ti["end_date"]]
    load_span = (max(ends) - min(starts)).total_seconds() if starts and ends else float("nan")
    print(f"\nscale-out on the CeleryExecutor: {config.rows} rows ({outcome['rejected']} invalid), "
          f"loaders={config.loaders} x max_in_flight={config.max_in_flight} (emulator semaphores "
          f"{config.loaders * config.max_in_flight}, latency {config.latency_ms} ms), "
          f"{config.workers} workers x concurrency {config.concurrency}")
    print(f"run state: {state}\n")
    print(f"  {'task':<10} {'map':>3}  {'host':<10} {'state':<8} {'try':>3} {'seconds':>7}  loader counts")
    for ti in tis:
        seconds = (ti["end_date"] - ti["start_date"]).total_seconds() if ti["start_date"] and ti["end_date"] else 0
        index = "" if ti["map_index"] < 0 else ti["map_index"]
        counts = ti.get("counts") or {}
        shown = ", ".join(f"{k} {counts[k]}" for k in ("taken", "created", "adopted", "posts") if k in counts)
        print(f"  {ti['task_id']:<10} {index:>3}  {ti['hostname'] or '-':<10} {ti['state']:<8} "
              f"{ti['try_number']:>3} {seconds:7.1f}  {shown}")
    print("\nload map indexes per host: " + "; ".join(f"{h}: {sorted(ix)}" for h, ix in sorted(hosts.items())))
    created = outcome["valid"]
    print(f"emulator: {outcome['records']} records for {created} valid rows, {outcome['duplicates']} duplicates, "
          f"{outcome['rejected']} "
          f"rejected rows never sent; {outcome['requests']} API requests, {outcome['throttled_429']} answered 429")
    timings = {**timings, "load span (first loader start to last end)": load_span}
    print("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
    print(f"throughput: {created / load_span:.0f} cases/s over the load span, "
          f"{created / timings['run: start to end']:.0f} cases/s over the whole run")
    return {"state": state, "hosts": hosts, "outcome": outcome, "timings": timings}


def run(config: Config) -> dict[str, Any]:
    suffix = uuid.uuid4().hex[:8]
    meta, src = f"ticketsync_scaleout_meta_{suffix}", f"ticketsync_scaleout_src_{suffix}"
    workdir = Path(tempfile.mkdtemp(prefix="ticketsync-scaleout-"))
    print(f"work directory {workdir} (logs under logs/), queue on {REDIS_URL}", flush=True)
    redis_before = _redis_keys()
    with databases(meta, src) as dsns:
        scale = ScaleOut(config, workdir, dsns, meta, src)
        try:
            requests_ = scale.seed()
            scale.start()
            print(f"services ready ({', '.join(f'{k} {v:.1f} s' for k, v in scale.timings.items())}); "
                  f"triggering {scale.run_id} with loaders={config.loaders}", flush=True)
            state = scale.trigger_and_wait()
            tis = scale.task_instances()
            outcome = scale.check_exactly_once(requests_)
            result = summarize(config, state, tis, outcome, scale.timings)
            result["notes"] = scale.notes
            if state != "success":
                raise CheckFailed(f"the run ended {state}")
            if len(result["hosts"]) < 2 or sum(len(ix) for ix in result["hosts"].values()) != config.loaders:
                raise CheckFailed(f"the {config.loaders} loaders did not run on at least two workers: "
                                  f"{result['hosts']}")
            return result
        except BaseException:
            print(f"\nfailed; logs kept in {workdir / 'logs'}", file=sys.stderr)
            config.keep = True
            raise
        finally:
            if scale.services is not None:
                scale.services.stop()
            if scale.emulator is not None:
                scale.emulator.stop()
            scale.source.close()
            _forget_redis_keys(redis_before)
            if not config.keep:
                _remove(workdir)


def _redis_keys() -> set[bytes]:
    import redis

    with redis.Redis.from_url(REDIS_URL) as client:
        return set(client.scan_iter())


def _forget_redis_keys(before: set[bytes]) -> None:
    """Delete the Redis keys this run created (its private queue, kombu bindings), leaving older ones alone."""
    import redis

    try:
        with redis.Redis.from_url(REDIS_URL) as client:
            created = set(client.scan_iter()) - before
            if created:
                client.delete(*created)
    except redis.RedisError as exc:
        print(f"could not clean Redis ({exc})", file=sys.stderr)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # cleanup runs in `finally`, as for Ctrl-C
    started = time.monotonic()
    try:
        result = run(config)
    except CheckFailed as exc:
        print(f"\nSCALE-OUT CHECK FAILED: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; everything started was stopped", file=sys.stderr)
        return 130
    print(f"total {time.monotonic() - started:.1f} s (all processes stopped, databases dropped)")
    print("RESULT " + json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
