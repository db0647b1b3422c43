"""servicenow_ticket_sync: wiring only. The logic lives in the ``ticketsync`` package under ``plugins/``."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param

from ticketsync.alerts import TicketSyncFailureNotifier
from ticketsync.assets import cases_created_alias, source_asset
from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.operators.report import SyncReportOperator
from ticketsync.operators.update import ServiceNowUpdateOperator
from ticketsync.operators.validate import ValidateRequestsOperator

DOC = """
### ServiceNow ticket sync

Pending rows of `ticket_requests` (connection `ticket_source`) become one `sn_bom_loan_service` case each in
ServiceNow (connection `servicenow_default`), or are rejected with a reason naming each bad column.

| task | does |
| --- | --- |
| `extract` | creates the table or applies its pending migrations; claims up to `limit` pending rows under a lease |
| `transform` | validates the claimed rows; invalid ones become `rejected` with the reason, and are never sent |
| `load` | looks up each chunk by `correlation_id` (= `request_id`), adopts existing records, creates the rest |
| `update` | PATCHes the case of each `update_pending` row: changed fields only, a new note as one journal entry |
| `report` | logs claimed / created / adopted / rejected / failed / still pending / updated; fails on a failed row |

`load` is mapped: `loaders` instances (one by default), loader *i* taking the claimed rows with
`id % loaders = i`, so on the CeleryExecutor several workers share one run's backlog without overlap.

Each `load` whose rows came to cases emits an event of the Asset
`servicenow://servicenow_default/sn_bom_loan_service` with its counts in the extra; a run that created nothing emits
none (docs/operations.md: Asset events).

Clearing and rerunning any task is safe: rows are claimed under this run's token, every create is preceded by a
look-up on `correlation_id`, and outcomes are written back as they arrive. Status lifecycle: docs/operations.md.

**Manual runs** (Trigger with parameters): `dry_run` validates and looks up the rows a run would take and reports
what it would create, adopt or reject, writing nothing anywhere; `request_ids` replays chosen rows (also `rejected`
or `failed` ones whose data was fixed): they are reset to pending for this run, their previous state kept in
`ticket_requests_replays`, and looked up before any create. Alerts and lineage are configured by Airflow
Variables and Connections (docs/operations.md: Alerting, Lineage).
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
        "on_failure_callback": TicketSyncFailureNotifier(),
    },
    params={
        "dry_run": Param(
            False, type="boolean", title="Dry run",
            description="Validate and look up the rows this run would take, and report what it would create, adopt "
            "or reject. Writes nothing: no claim in the source table, no POST to ServiceNow.",
        ),
        "request_ids": Param(
            [], type="array", items={"type": "string"}, title="Replay these request_ids",
            description="One request_id per line. Empty: take pending rows as usual. Set: take exactly these rows, "
            "whatever their status (e.g. rejected or failed rows whose data was fixed); each is reset to pending "
            "with its previous state kept in ticket_requests_replays, and looked up before any create, so a row "
            "that already has a case adopts it. limit does not apply.",
        ),
        "limit": Param(10_000, type="integer", minimum=1, title="Row limit", description="Most rows one run claims"),
        "max_in_flight": Param(
            8, type="integer", minimum=1, maximum=64, title="In-flight cap",
            description="Most requests to ServiceNow in flight at once",
        ),
        "chunk_size": Param(
            100, type="integer", minimum=1, maximum=1000, title="Chunk size", description="Rows per look-up query"
        ),
        "max_attempts": Param(
            5, type="integer", minimum=1, title="Attempts per row", description="POST attempts before a row is failed"
        ),
        "lease_seconds": Param(
            900, type="integer", minimum=10, title="Lease (seconds)", description="How long a claim holds a row"
        ),
        "loaders": Param(
            1, type="integer", minimum=1, maximum=16, title="Loaders",
            description="Mapped load tasks sharing the claim, each keeping max_in_flight requests in flight (on the "
            "CeleryExecutor they spread over the workers). Size loaders x max_in_flight to the instance's API "
            "semaphores.",
        ),
        "closed_policy": Param(
            "skip", type="string", enum=["skip", "note_only"], title="Closed case policy",
            description="An update of a closed or cancelled case: skip it (the reason in the row's error) or append "
            "only its note; the fields of a closed case are never changed and no new case is created",
        ),
        "settle_seconds": Param(
            60, type="number", minimum=0, title="Settle (seconds)",
            description="How long ServiceNow may still write a POST that timed out (its transaction quota); such a "
            "row is looked up again only after that",
        ),
        "defer_after_seconds": Param(
            300, type="number", minimum=0, title="Defer after (seconds)",
            description="When ServiceNow asks for a longer wait than this (an hourly rate limit used up), the load "
            "defers (frees its worker, keeps its claim) and resumes after the wait; 0: always wait in the task",
        ),
    },
) as dag:
    extract = ClaimRequestsOperator(
        task_id="extract", limit="{{ params.limit }}", lease_seconds="{{ params.lease_seconds }}",
        is_dry_run="{{ params.dry_run }}", request_ids="{{ params.request_ids }}", loaders="{{ params.loaders }}",
    )
    transform = ValidateRequestsOperator(task_id="transform", is_dry_run="{{ params.dry_run }}")
    # One loader per shard index that extract returns; a retry of loader i takes shard i again.
    load = ServiceNowLoadOperator.partial(
        task_id="load",
        chunk_size="{{ params.chunk_size }}",
        max_in_flight="{{ params.max_in_flight }}",
        max_attempts="{{ params.max_attempts }}",
        lease_seconds="{{ params.lease_seconds }}",
        settle_seconds="{{ params.settle_seconds }}",
        defer_after_seconds="{{ params.defer_after_seconds }}",
        is_dry_run="{{ params.dry_run }}", limit="{{ params.limit }}", request_ids="{{ params.request_ids }}",
        inlets=[source_asset()], outlets=[cases_created_alias()],
        shard_count="{{ params.loaders }}",
        map_index_template="shard {{ task.shard_index }} of {{ task.shard_count }}",
    ).expand(shard_index=extract.output)
    update = ServiceNowUpdateOperator(
        task_id="update", closed_policy="{{ params.closed_policy }}", limit="{{ params.limit }}",
        chunk_size="{{ params.chunk_size }}", lease_seconds="{{ params.lease_seconds }}",
        max_attempts="{{ params.max_attempts }}", is_dry_run="{{ params.dry_run }}",
    )
    report = SyncReportOperator(
        task_id="report", load_task_id="load", shards_task_id="extract", is_dry_run="{{ params.dry_run }}",
        update_task_id="update",
    )

    extract >> transform >> load >> report
    extract >> update >> report
