"""servicenow_case_status: wiring only. The logic lives in the ``ticketsync`` package under ``plugins/``."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param

from ticketsync.alerts import TicketSyncFailureNotifier
from ticketsync.assets import servicenow_asset, source_asset
from ticketsync.operators.status import CaseStatusOperator

DOC = """
### ServiceNow case status

The state of the cases that `servicenow_ticket_sync` created flows back into their `ticket_requests` rows:
`case_state` (the value, e.g. `10`), `case_state_label` (e.g. `Open`), `case_updated_at` (the case's
`sys_updated_on`, UTC) and `case_checked_at` (when this DAG wrote it).

Every 5 minutes, and whenever the sync DAG created cases (its outlet Asset), `pull` reads the cases changed since its
watermark less an overlap, in pages, and writes a row only when its case changed; the watermark moves in the same
transaction as each page's write-back. It then checks that a slice of the stored cases still exists: a case deleted
on the instance is reported in its row's `error`, its last known state kept. docs/case-status.md has the details.
"""

RETRY_DELAY = timedelta(seconds=float(os.environ.get("TICKETSYNC_RETRY_DELAY_SECONDS", "30")))

with DAG(
    dag_id="servicenow_case_status",
    description="ServiceNow case states -> their ticket_requests rows",
    doc_md=DOC,
    schedule=AssetOrTimeSchedule(
        timetable=CronTriggerTimetable("*/5 * * * *", timezone="UTC"), assets=servicenow_asset()
    ),
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["servicenow", "ticketsync", "fso"],
    default_args={
        "owner": "data-engineering",
        "retries": 2,
        "retry_delay": RETRY_DELAY,
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(minutes=10),
        "on_failure_callback": TicketSyncFailureNotifier(),
    },
    params={
        "page_size": Param(1000, type="integer", minimum=1, maximum=10_000, title="Page size",
                           description="Cases per list request"),
        "overlap_seconds": Param(
            600, type="integer", minimum=0, title="Overlap (seconds)",
            description="How far before its watermark each pull starts again, so that a change stamped in a "
            "second already read, or committed late, is not lost",
        ),
        "max_pages": Param(100, type="integer", minimum=1, title="Pages per run",
                           description="Most pages per instance table and run; the next run goes on"),
        "verify_batch": Param(
            1000, type="integer", minimum=0, title="Existence check",
            description="Stored cases one run checks still exist on the instance (0: none)",
        ),
    },
) as dag:
    CaseStatusOperator(
        task_id="pull",
        page_size="{{ params.page_size }}",
        overlap_seconds="{{ params.overlap_seconds }}",
        max_pages="{{ params.max_pages }}",
        verify_batch="{{ params.verify_batch }}",
        inlets=[servicenow_asset()],
        outlets=[source_asset()],
    )
