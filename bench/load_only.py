"""The load alone, without Airflow: a PostgreSQL source in a throw-away database, the emulator as a process, one
CaseLoader over the real hook. For profiling (``py-spy record -- python bench/load_only.py``) and CPU per row.

    PYTHONPATH=plugins:dev .venv/bin/python bench/load_only.py --rows 5000 --latency-ms 20 --concurrency 16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psycopg

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.loader import CaseLoader, LoadSettings
from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import EmulatorProcess
from ticketsync_dev.samples import sample_requests

PG_ADMIN_DSN = os.environ.get("TICKETSYNC_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU of one process so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=20)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rate-limit", type=float, default=0)
    parser.add_argument("--chunk-size", type=int, default=100)
    args = parser.parse_args()
    admin = psycopg.connect(PG_ADMIN_DSN, autocommit=True)
    dbname = f"ticketsync_bench_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{dbname}"')
    params = {**psycopg.conninfo.conninfo_to_dict(PG_ADMIN_DSN), "dbname": dbname}
    emulator_args = ["--latency-ms", str(args.latency_ms), "--concurrency-limit", str(args.concurrency)]
    if args.rate_limit:
        emulator_args += ["--rate-limit", str(args.rate_limit)]
    try:
        with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(Path(tmp), *emulator_args) as emulator:
            os.environ["AIRFLOW_CONN_SERVICENOW_DEFAULT"] = emulator.connection(timeout=30)
            source = SourceTable(lambda: psycopg.connect(**params), Dialect.POSTGRES)
            source.ensure_schema()
            source.insert_requests(sample_requests(args.rows, prefix="LO"))
            source.claim("bench", limit=args.rows, chunk_size=1000, lease_seconds=900)
            settings = LoadSettings(chunk_size=args.chunk_size, max_in_flight=args.concurrency)
            hook = ServiceNowHook(pool_size=args.concurrency)
            # The hook connects on first use: reading the Airflow connection imports part of the Task SDK, a
            # one-time cost (0.16-0.28 s of CPU on a busy 2-core box) that is not per row: measured on its own.
            connect0 = resource.getrusage(resource.RUSAGE_SELF)
            hook.get_conn()
            connect1 = resource.getrusage(resource.RUSAGE_SELF)
            connect_cpu = (connect1.ru_utime - connect0.ru_utime) + (connect1.ru_stime - connect0.ru_stime)
            assert emulator.process is not None
            emu_pid = emulator.process.pid
            emu0 = process_cpu_seconds(emu_pid)
            cpu0, wall0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            counts = CaseLoader(hook, source, "bench", settings).run()
            wall, cpu1 = time.perf_counter() - wall0, resource.getrusage(resource.RUSAGE_SELF)
            emu_cpu = process_cpu_seconds(emu_pid) - emu0
            hook.close()
            source.close()
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            ceiling = args.concurrency / (args.latency_ms / 1000)
            print(json.dumps({
                "rows": args.rows, "seconds": round(wall, 2), "rows_per_s": round(args.rows / wall, 1),
                "ratio": round(args.rows / wall / ceiling, 3),
                "loader_cpu_ms_per_row": round(cpu / args.rows * 1000, 3),
                "hook_connect_cpu_ms": round(connect_cpu * 1000, 1),
                "emulator_cpu_ms_per_row": round(emu_cpu / args.rows * 1000, 3),
                "counts": counts.as_dict(), "emulator": {k: v for k, v in emulator.stats().items()
                                                          if k in ("by_status", "max_in_flight")},
            }))
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
