"""servicenow_ticket_sync: wiring only. The logic lives in the ``ticketsync`` package under ``plugins/``."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.operators.report import SyncReportOperator
from ticketsync.operators.validate import ValidateRequestsOperator

DOC = """
### ServiceNow ticket sync

Pending rows of `ticket_requests` (connection `ticket_source`) become one `sn_bom_loan_service` case each in
ServiceNow (connection `servicenow_default`), or are rejected with a reason naming each bad column.

| task | does |
| --- | --- |
| `extract` | creates the table if missing, claims up to `limit` pending rows for this run under a lease |
| `transform` | validates the claimed rows; invalid ones become `rejected` with the reason, and are never sent |
| `load` | looks up each chunk by `correlation_id` (= `request_id`), adopts existing records, creates the rest |
| `report` | logs claimed / created / adopted / rejected / failed / still pending; fails the run if a row failed |

Clearing and rerunning any task is safe: rows are claimed under this run's token, every create is preceded by a
look-up on `correlation_id`, and outcomes are written back as they arrive. See the README for the status lifecycle.
"""

# Seconds between task retries; tests and the demo shorten it. Read from the environment: no I/O at parse time.
RETRY_DELAY = timedelta(seconds=float(os.environ.get("TICKETSYNC_RETRY_DELAY_SECONDS", "30")))

with DAG(
    dag_id="servicenow_ticket_sync",
    description="Pending ticket requests -> ServiceNow FSO loan service cases, exactly once",
    doc_md=DOC,
    schedule=timedelta(minutes=5),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["servicenow", "ticketsync", "fso"],
    render_template_as_native_obj=True,
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
    },
    params={
        "limit": Param(10_000, type="integer", minimum=1, description="Most rows one run claims"),
        "max_in_flight": Param(8, type="integer", minimum=1, maximum=64, description="Requests in flight at once"),
        "chunk_size": Param(100, type="integer", minimum=1, maximum=1000, description="Rows per look-up query"),
        "max_attempts": Param(5, type="integer", minimum=1, description="POST attempts before a row is failed"),
        "lease_seconds": Param(900, type="integer", minimum=10, description="How long a claim holds a row"),
        "settle_seconds": Param(
            60, type="number", minimum=0,
            description="How long ServiceNow may still write a POST that timed out (its transaction quota); such a "
            "row is looked up again only after that",
        ),
    },
) as dag:
    extract = ClaimRequestsOperator(
        task_id="extract", limit="{{ params.limit }}", lease_seconds="{{ params.lease_seconds }}"
    )
    transform = ValidateRequestsOperator(task_id="transform")
    load = ServiceNowLoadOperator(
        task_id="load",
        chunk_size="{{ params.chunk_size }}",
        max_in_flight="{{ params.max_in_flight }}",
        max_attempts="{{ params.max_attempts }}",
        lease_seconds="{{ params.lease_seconds }}",
        settle_seconds="{{ params.settle_seconds }}",
    )
    report = SyncReportOperator(task_id="report", load_task_id="load")

    extract >> transform >> load >> report
