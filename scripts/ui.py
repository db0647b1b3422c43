"""`make ui`: the Airflow UI on loopback with the project's DAG, the ServiceNow emulator and a seeded SQLite source.

Runs until Ctrl-C or SIGTERM, then stops every process it started. See ``ticketsync_dev.standalone`` for what runs and
why; everything lives under ``.airflow/`` (git-ignored). Options: ``--help``.
"""

from __future__ import annotations

import argparse
import signal
import sqlite3
import sys
import time
from collections import Counter
from pathlib import Path
from types import FrameType

from ticketsync_dev.local import DAG_ID, REPO
from ticketsync_dev.standalone import ADMIN_USER, LocalStack, StackError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="api-server port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--home", type=Path, default=REPO / ".airflow", help="AIRFLOW_HOME (default: .airflow)")
    parser.add_argument("--rows", type=int, default=50, help="sample requests seeded into a fresh source (50)")
    parser.add_argument("--invalid-every", type=int, default=10, help="every Nth sample breaks a rule (10; 0: none)")
    parser.add_argument("--keyed-rows", type=int, default=20,
                        help="requests naming consumer, account and group by business key (20; every 5th key is "
                        "unknown, ambiguous or given with its sys_id)")
    parser.add_argument("--keep-source", action="store_true", help="keep the source rows of the last session")
    parser.add_argument("--schedule", action="store_true", help="let the scheduler start the 5-minute runs too")
    parser.add_argument("--no-provider", dest="provider", action="store_false",
                        help="do not install the wheel: ticketsync from plugins/ only, no 'servicenow' connection type")
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def banner(stack: LocalStack) -> str:
    home = stack.home.relative_to(REPO) if stack.home.is_relative_to(REPO) else stack.home
    try:
        statuses = Counter(row["status"] for row in stack.source_rows().values())
    except sqlite3.OperationalError:  # --rows 0: no table until the first run creates it
        statuses = Counter()
    rows = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items())) or "empty"
    if stack.invalid_every and statuses.get("pending"):
        rows += f"; every {stack.invalid_every}th sample breaks a rule, so the first run rejects some"
    schedule = "on (every 5 minutes)" if stack.schedule else "off: trigger runs from the UI (▶ Trigger)"
    provider = (f"installed from a fresh wheel in {stack.provider_site}: Admin → Connections → Add offers the "
                "'ServiceNow' type (Test enabled)" if stack.provider else "not installed (--no-provider)")
    return "\n".join([
        "",
        f"Airflow UI      {stack.url}   (DAG: {stack.url}/dags/{DAG_ID})",
        f"login           user '{ADMIN_USER}', password in {stack.password_file}",
        f"                (cat {home}/{stack.password_file.name})",
        f"ServiceNow      emulator on {stack.emulator.url} (records: {stack.emulator.url}/_emulator/records/"
        "sn_bom_loan_service; consumers, accounts, groups: …/records/csm_consumer, sn_bom_financial_account, "
        "sys_user_group)",
        f"source          SQLite {stack.source_path} ({rows})",
        f"schedule        {schedule}",
        f"provider        {provider}",
        f"logs            {stack.work / 'logs'} (components), {stack.home / 'logs'} (tasks)",
        "",
        "Ctrl-C stops everything.",
    ])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stack = LocalStack(home=args.home, api_port=args.port, rows=args.rows, invalid_every=args.invalid_every,
                       keyed_rows=args.keyed_rows, schedule=args.schedule, provider=args.provider)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, _raise_interrupt)  # also when started with SIGINT ignored (a background job)
    print(f"Starting Airflow (api-server, scheduler, dag-processor, triggerer) in {stack.home}; "
          "the first start takes a minute…", flush=True)
    started = time.monotonic()
    try:
        stack.start(reseed=not args.keep_source)
        print(f"Ready in {time.monotonic() - started:.0f} s.{banner(stack)}", flush=True)
        while True:
            stack.check_alive()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nStopping…", flush=True)
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
