"""The DAG factory: one sync DAG and one status DAG per sync definition (docs/definitions.md, docs/adr/0017).

Called at DAG-parse time by ``dags/servicenow_ticket_sync.py`` (the sync DAGs) and ``dags/servicenow_case_status.py``
(the status DAGs). The only I/O is reading the definition files: the
ones shipped in :mod:`ticketsync.definitions`, and those of the folder named by the environment variable
``TICKETSYNC_DEFINITIONS_DIR`` if it is set. No connection, Variable or database is read here. An invalid
definition raises :class:`~ticketsync.definitions.DefinitionError` naming the file, the field and the rule, which
Airflow shows as the DAG file's import error.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import datetime, timedelta
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, AssetOrTimeSchedule, CronTriggerTimetable, Param

from ticketsync.alerts import TicketSyncFailureNotifier
from ticketsync.assets import cases_created_alias, servicenow_asset, source_asset
from ticketsync.definitions import (
    DefinitionError,
    SyncDefinition,
    load_named_definitions,
    packaged_definition_files,
)
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.models import PRODUCER_COLUMNS
from ticketsync.operators.extract import ClaimRequestsOperator
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.operators.report import SyncReportOperator
from ticketsync.operators.status import CaseStatusOperator
from ticketsync.operators.update import ServiceNowUpdateOperator
from ticketsync.operators.validate import ValidateRequestsOperator

DEFINITIONS_DIR_ENV = "TICKETSYNC_DEFINITIONS_DIR"
# The producer columns every source table has (migrations 1 to 6) that a definition may read (target_table is the
# loan contract's own).
SOURCE_SCHEMA_COLUMNS: tuple[str, ...] = (
    *(column for column in PRODUCER_COLUMNS if column != "target_table"), "description", "priority"
)

DOC = """
### ServiceNow sync: {target_table}

Pending rows of `{source_table}` (connection `{source_conn_id}`) become one `{target_table}` case each in
ServiceNow (connection `servicenow_default`), or are rejected with a reason naming each bad column. Built from the
sync definition `{dag_id}` (docs/definitions.md: how a definition becomes a DAG).

| task | does |
| --- | --- |
| `extract` | creates the table or applies its pending migrations; claims up to `limit` pending rows under a lease |
| `transform` | validates the claimed rows; invalid ones become `rejected` with the reason, and are never sent |
| `load` | looks up each chunk by `correlation_id` (= `{correlation_id}`), adopts existing records, creates the rest |
| `update` | PATCHes the case of each `update_pending` row: changed fields only, a new note as one journal entry |
| `report` | logs claimed / created / adopted / rejected / failed / still pending / updated; fails on a failed row |

`load` is mapped: `loaders` instances (one by default), loader *i* taking the claimed rows with
`id % loaders = i`, so on the CeleryExecutor several workers share one run's backlog without overlap.

Each `load` whose rows came to cases emits an event of the Asset `{cases_asset}` with its counts in the extra; a
run that created nothing emits none (docs/operations.md: Asset events).

Clearing and rerunning any task is safe: rows are claimed under this run's token, every create is preceded by a
look-up on `correlation_id`, and outcomes are written back as they arrive. Status lifecycle: docs/operations.md.

**Manual runs** (Trigger with parameters): `dry_run` validates and looks up the rows a run would take and reports
what it would create, adopt or reject, writing nothing anywhere; `request_ids` replays chosen rows (also `rejected`
or `failed` ones whose data was fixed): they are reset to pending for this run, their previous state kept in
`{source_table}_replays`, and looked up before any create. Alerts and lineage are configured by Airflow
Variables and Connections (docs/operations.md: Alerting, Lineage).
"""


def retry_delay() -> timedelta:
    """Seconds between task retries; tests and the demo shorten it. From the environment: no I/O at parse time."""
    return timedelta(seconds=float(os.environ.get("TICKETSYNC_RETRY_DELAY_SECONDS", "30")))


def backoff_base() -> float:
    """Seconds of the load's first backoff after a transient failure (doubling, full jitter); tests shorten it too.
    From the environment: no I/O at parse time."""
    return float(os.environ.get("TICKETSYNC_BACKOFF_BASE_SECONDS", "1"))


def sync_params(definition: SyncDefinition) -> dict[str, Param]:
    """The trigger form of a sync DAG."""
    replays = f"{definition.source.table}_replays"
    return {
        "dry_run": Param(
            False, type="boolean", title="Dry run",
            description="Validate and look up the rows this run would take, and report what it would create, adopt "
            "or reject. Writes nothing: no claim in the source table, no POST to ServiceNow.",
        ),
        "request_ids": Param(
            [], type="array", items={"type": "string"}, title="Replay these request_ids",
            description="One request_id per line. Empty: take pending rows as usual. Set: take exactly these rows, "
            "whatever their status (e.g. rejected or failed rows whose data was fixed); each is reset to pending "
            f"with its previous state kept in {replays}, and looked up before any create, so a row "
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
            description="How long ServiceNow may still apply a POST or PATCH whose answer was lost (its transaction "
            "quota); such a row is looked up, or its case read, only after that",
        ),
        "defer_after_seconds": Param(
            300, type="number", minimum=0, title="Defer after (seconds)",
            description="When ServiceNow asks for a longer wait than this (an hourly rate limit used up), the load "
            "defers (frees its worker, keeps its claim) and resumes after the wait; 0: always wait in the task",
        ),
    }


def dag_defaults() -> dict[str, Any]:
    """What every DAG the factory builds shares: start, catch-up, one run at a time, tags, and the task defaults
    (two retries with exponential backoff, the failure alert)."""
    return {
        "start_date": datetime(2026, 1, 1),
        "catchup": False,
        "max_active_runs": 1,
        "tags": ["servicenow", "ticketsync", "fso"],
        "default_args": {
            "owner": "data-engineering",
            "retries": 2,
            "retry_delay": retry_delay(),
            "retry_exponential_backoff": True,
            "max_retry_delay": timedelta(minutes=10),
            "on_failure_callback": TicketSyncFailureNotifier(),
        },
    }


def check_source_columns(definition: SyncDefinition, name: str) -> None:
    """Refuse a definition that reads a column the source schema does not have (it would fail every run)."""
    for field, spec in definition.fields.items():
        for where, column in (("column", spec.column), ("key.column", spec.key.column if spec.key else None)):
            if column is not None and column not in SOURCE_SCHEMA_COLUMNS:
                raise DefinitionError(
                    f"invalid sync definition: {name}: fields.{field}.{where}: {column!r} is not a column of the "
                    f"source table's schema; a definition reads only these: {', '.join(SOURCE_SCHEMA_COLUMNS)} "
                    "(a new column needs a schema migration: docs/migrations.md)"
                )
    for where, column in (("correlation.id", definition.correlation.id),
                          ("correlation.display", definition.correlation.display)):
        if column is not None and column not in SOURCE_SCHEMA_COLUMNS:
            raise DefinitionError(
                f"invalid sync definition: {name}: {where}: {column!r} is not a column of the source table's schema; "
                f"a definition reads only these: {', '.join(SOURCE_SCHEMA_COLUMNS)}"
            )


def sync_dag(definition: SyncDefinition) -> DAG:
    """The sync DAG of one definition: its own DAG id, source connection and table, Params and Assets."""
    source = definition.source
    conn_id = ServiceNowHook.default_conn_name
    cases = servicenow_asset(conn_id, definition.target_table)
    # The definition goes to the tasks as plain data: it is serialized with the DAG (the mapped load's arguments).
    on_source: dict[str, Any] = {
        "source_conn_id": source.conn_id,
        "source_table": source.table,
        "definition": definition.model_dump(mode="json"),
    }
    with DAG(
        dag_id=definition.dag_id,
        description=definition.description or f"{source.table} -> ServiceNow {definition.target_table}",
        doc_md=DOC.format(
            target_table=definition.target_table, source_table=source.table, source_conn_id=source.conn_id,
            dag_id=definition.dag_id, correlation_id=definition.correlation.id, cases_asset=cases.uri,
        ),
        schedule=timedelta(minutes=5),
        **dag_defaults(),
        render_template_as_native_obj=True,
        params=sync_params(definition),
    ) as dag:
        extract = ClaimRequestsOperator(
            task_id="extract", limit="{{ params.limit }}", lease_seconds="{{ params.lease_seconds }}",
            is_dry_run="{{ params.dry_run }}", request_ids="{{ params.request_ids }}", loaders="{{ params.loaders }}",
            **on_source,
        )
        transform = ValidateRequestsOperator(task_id="transform", is_dry_run="{{ params.dry_run }}", **on_source)
        # One loader per shard index that extract returns; a retry of loader i takes shard i again.
        load = ServiceNowLoadOperator.partial(
            task_id="load",
            chunk_size="{{ params.chunk_size }}",
            max_in_flight="{{ params.max_in_flight }}",
            max_attempts="{{ params.max_attempts }}",
            lease_seconds="{{ params.lease_seconds }}",
            settle_seconds="{{ params.settle_seconds }}", backoff_base=backoff_base(),
            defer_after_seconds="{{ params.defer_after_seconds }}",
            is_dry_run="{{ params.dry_run }}", limit="{{ params.limit }}", request_ids="{{ params.request_ids }}",
            inlets=[source_asset(source.conn_id, source.table)],
            outlets=[cases_created_alias(conn_id, definition.target_table)],
            shard_count="{{ params.loaders }}",
            map_index_template="shard {{ task.shard_index }} of {{ task.shard_count }}",
            **on_source,
        ).expand(shard_index=extract.output)
        update = ServiceNowUpdateOperator(
            task_id="update", closed_policy="{{ params.closed_policy }}", limit="{{ params.limit }}",
            chunk_size="{{ params.chunk_size }}", lease_seconds="{{ params.lease_seconds }}",
            max_attempts="{{ params.max_attempts }}", settle_seconds="{{ params.settle_seconds }}",
            is_dry_run="{{ params.dry_run }}", **on_source,
        )
        report = SyncReportOperator(
            task_id="report", load_task_id="load", shards_task_id="extract", is_dry_run="{{ params.dry_run }}",
            update_task_id="update", **on_source,
        )

        extract >> transform >> load >> report
        extract >> update >> report
    return dag


STATUS_DOC = """
### ServiceNow case status: {target_table}

The state of the `{target_table}` cases that `{sync_dag_id}` created flows back into their `{source_table}` rows
(connection `{source_conn_id}`): `case_state` (the value, e.g. `10`), `case_state_label` (e.g. `Open`),
`case_updated_at` (the case's `sys_updated_on`, UTC) and `case_checked_at` (when this DAG wrote it).

Every 5 minutes, and whenever the sync DAG created cases (its outlet Asset `{cases_asset}`), `pull` reads the cases
changed since its watermark less an overlap, in pages, and writes a row only when its case changed; the watermark
moves in the same transaction as each page's write-back. It then checks that a slice of the stored cases still
exists: a case deleted on the instance is reported in its row's `error`, its last known state kept.
Built from the sync definition `{sync_dag_id}`; docs/case-status.md has the details.
"""


def status_params() -> dict[str, Param]:
    """The trigger form of a status DAG."""
    return {
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
    }


def status_dag(definition: SyncDefinition) -> DAG:
    """The status DAG of one definition: the states of its target table's cases back into its source rows, every
    5 minutes and on its sync DAG's cases Asset; lineage: the instance table in, the source table out."""
    source = definition.source
    conn_id = ServiceNowHook.default_conn_name
    cases = servicenow_asset(conn_id, definition.target_table)
    with DAG(
        dag_id=definition.status_id(),
        description=f"ServiceNow {definition.target_table} case states -> their {source.table} rows",
        doc_md=STATUS_DOC.format(
            target_table=definition.target_table, source_table=source.table, source_conn_id=source.conn_id,
            sync_dag_id=definition.dag_id, cases_asset=cases.uri,
        ),
        schedule=AssetOrTimeSchedule(
            timetable=CronTriggerTimetable("*/5 * * * *", timezone="UTC"), assets=cases
        ),
        **dag_defaults(),
        params=status_params(),
    ) as dag:
        CaseStatusOperator(
            task_id="pull",
            page_size="{{ params.page_size }}",
            overlap_seconds="{{ params.overlap_seconds }}",
            max_pages="{{ params.max_pages }}",
            verify_batch="{{ params.verify_batch }}",
            source_conn_id=source.conn_id,
            source_table=source.table,
            definition=definition.model_dump(mode="json"),
            inlets=[cases],
            outlets=[source_asset(source.conn_id, source.table)],
        )
    return dag


def definition_files(extra_folder: str | None = None) -> list[Path | Traversable]:
    """The shipped definition files, and the ``*.yaml`` files of ``extra_folder`` (default: the folder named by
    ``TICKETSYNC_DEFINITIONS_DIR``, if set)."""
    files: list[Path | Traversable] = sorted(packaged_definition_files(), key=lambda item: item.name)
    folder = extra_folder if extra_folder is not None else os.environ.get(DEFINITIONS_DIR_ENV, "")
    if folder:
        path = Path(folder)
        if not path.is_dir():
            raise DefinitionError(f"invalid sync definition: {path}: {DEFINITIONS_DIR_ENV} names no folder")
        files += sorted(path.glob("*.yaml"))
    return files


def definitions(extra_folder: str | None = None) -> list[SyncDefinition]:
    """The definitions (the shipped ones first, then the extra folder's), checked: their source columns, and no DAG
    id (sync or status) given twice."""
    named = load_named_definitions(definition_files(extra_folder), by_name=False)
    taken: dict[str, str] = {}
    for name, definition in named:
        check_source_columns(definition, name)
        for where, dag_id in (("dag_id", definition.dag_id), ("status_dag_id", definition.status_id())):
            if dag_id in taken:
                raise DefinitionError(
                    f"invalid sync definition: {name}: {where}: {dag_id!r} is also the {taken[dag_id]}; give "
                    "status_dag_id another DAG id"
                )
            taken[dag_id] = f"{where} of {name}"
    return [definition for _, definition in named]


def sync_dags(extra_folder: str | None = None) -> Mapping[str, DAG]:
    """One sync DAG per definition, by DAG id (the shipped ones, then the extra folder's)."""
    return {definition.dag_id: sync_dag(definition) for definition in definitions(extra_folder)}


def status_dags(extra_folder: str | None = None) -> Mapping[str, DAG]:
    """One status DAG per definition, by DAG id: the loan's is ``servicenow_case_status``."""
    return {definition.status_id(): status_dag(definition) for definition in definitions(extra_folder)}
