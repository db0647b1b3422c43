"""A worker for the kill loop, shaped like a Celery prefork worker: a parent process imports the code once, then
forks one child per DAG run; the child runs that run's tasks in order (extract, transform, load) with the DAG's own
operators, in its own process group, printing each task's name to its log as it starts.

``python -m tests.support.fault_worker``, then one command per line on stdin: ``RUN_ID TRY_NUMBER LOG_PATH`` (a try
number above 1 is a retry of that run, immediate: the operator's retry delay is 0). The parent answers
``pid N`` when the child started and ``exit N CODE`` when it ended (CODE -9 if it was SIGKILLed; 1 when the load
ended with rows still pending, what fails an Airflow task, which is then retried). Options: ``--lease-seconds``,
``--max-in-flight``, ``--chunk-size``. Connections come from ``AIRFLOW_CONN_TICKET_SOURCE`` and
``AIRFLOW_CONN_SERVICENOW_DEFAULT``.

Why not ``airflow dags test`` per run: each boots Airflow's in-process API server, 30-60 s on the shared CI box, and
the loop needs 40 runs or more. The soak and ``tests/e2e`` kill the real ``airflow dags test`` process group.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

from airflow.sdk.exceptions import AirflowException

from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.operators.validate import ValidateRequestsOperator

DAG_ID = "servicenow_ticket_sync"


def run_tasks(run_id: str, try_number: int, args: argparse.Namespace) -> int:
    ti = SimpleNamespace(dag_id=DAG_ID, run_id=run_id, try_number=try_number, xcom_push=lambda **_: None)
    context: Any = {"ti": ti}
    tasks = [
        ClaimRequestsOperator(task_id="extract", lease_seconds=args.lease_seconds),
        ValidateRequestsOperator(task_id="transform"),
        ServiceNowLoadOperator(task_id="load", lease_seconds=args.lease_seconds, max_in_flight=args.max_in_flight,
                               chunk_size=args.chunk_size, backoff_base=0.05,
                               settle_seconds=args.settle_seconds, retry_delay=timedelta(0)),
    ]
    for task in tasks:
        print(task.task_id, flush=True)
        try:
            result = task.execute(context)
        except AirflowException as exc:
            print(f"{task.task_id} failed: {exc}", flush=True)
            return 1
        print(f"{task.task_id} {result}", flush=True)
    return 0


def child(run_id: str, try_number: int, log_path: str, args: argparse.Namespace) -> None:
    os.setsid()
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    code = 2
    try:
        code = run_tasks(run_id, try_number, args)
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lease-seconds", type=float, default=900)
    parser.add_argument("--max-in-flight", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=100)
    parser.add_argument("--settle-seconds", type=float, default=60)
    args = parser.parse_args(argv)
    print("ready", flush=True)
    for line in sys.stdin:
        run_id, try_number, log_path = line.split()
        pid = os.fork()
        if pid == 0:
            child(run_id, int(try_number), log_path, args)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
