"""One loader as its own OS process, the way a Celery worker runs it: ``python -m tests.support.loader_process``.

It builds its own operators (and so its own ``ServiceNowHook`` and ``SourceTable``) from the ``AIRFLOW_CONN_*``
variables it inherits, waits for a start signal so that several processes really run at the same time, and writes
what it did as JSON. Two modes:

* ``shard``: loader ``--index`` of ``--count`` of one run (token), like one instance of the mapped ``load``;
* ``runs``: run after run (each its own token) of ``extract`` + ``load``, claiming ``--limit`` rows at a time,
  until a claim comes back empty, like separate DAG runs (or deployments) competing for one backlog.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.operators.load import ServiceNowLoadOperator

DAG_ID = "servicenow_ticket_sync"
# settle_seconds: the emulator's writes are done before it answers; 2 s stands in for ServiceNow's 60 s quota.
LOAD_OPTIONS: dict[str, Any] = {"chunk_size": 25, "max_in_flight": 4, "backoff_base": 0.05, "lease_seconds": 300,
                                "settle_seconds": 2}


class TaskInstance:
    """What the operators read from the task instance: the run's identity (the claim token), and XCom push."""

    def __init__(self, run_id: str) -> None:
        self.dag_id, self.run_id = DAG_ID, run_id
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value


def context(run_id: str) -> Any:
    return {"ti": TaskInstance(run_id)}


def load_shard(run_id: str, index: int, count: int) -> dict[str, Any]:
    load = ServiceNowLoadOperator(task_id="load", shard_index=index, shard_count=count, **LOAD_OPTIONS)
    return {"counts": load.execute(context(run_id))}


def compete(prefix: str, limit: int) -> dict[str, Any]:
    runs = []
    for number in range(1, 1000):
        run_id = f"{prefix}-{number}"
        ctx = context(run_id)
        ClaimRequestsOperator(task_id="extract", limit=limit, chunk_size=limit).execute(ctx)
        claimed = int(ctx["ti"].pushed["claimed"])
        if not claimed:
            break
        counts = ServiceNowLoadOperator(task_id="load", **LOAD_OPTIONS).execute(ctx)
        runs.append({"run_id": run_id, "claimed": claimed, "counts": counts})
    return {"runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=("shard", "runs"))
    parser.add_argument("--run-id", default="scale-run")
    parser.add_argument("--index", type=int, default=0)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--go", type=Path, required=True, help="start when this file exists")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    args.out.with_suffix(".ready").touch()
    deadline = time.monotonic() + 300
    while not args.go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no start signal")
        time.sleep(0.02)
    started = time.time()
    if args.mode == "shard":
        result = load_shard(args.run_id, args.index, args.count)
    else:
        result = compete(args.run_id, args.limit)
    result.update(started=started, finished=time.time())
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
