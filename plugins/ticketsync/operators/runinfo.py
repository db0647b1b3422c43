"""What the load leaves for people and tools besides its rows: OpenLineage facets, the "ServiceNow records" link,
and the dry-run plan. A mixin, so the load operator's own code stays about loading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ticketsync import dryrun
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.links import MAX_LINKED_IDS, ServiceNowRecordsLink, records_url
from ticketsync.models import DEFAULT_TARGET_TABLE
from ticketsync.operators.base import claim_token
from ticketsync.references import ReferenceResolver


def as_bool(value: Any) -> bool:
    """A templated boolean param: native (``render_template_as_native_obj``) or its string form."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def as_list(value: Any) -> list[str]:
    """A templated list param (``request_ids``): a list, or a comma/newline-separated string."""
    if value in (None, "", "None"):
        return []
    if isinstance(value, str):
        value = value.replace("\n", ",").split(",")
    return [str(item).strip() for item in value if str(item).strip()]


class LoadRunInfoMixin:
    """Mixed into :class:`~ticketsync.operators.load.ServiceNowLoadOperator` (which provides the attributes used)."""

    operator_extra_links: Any = (ServiceNowRecordsLink(),)
    target_table = DEFAULT_TARGET_TABLE  # the table the link and the lineage name (the only one supported so far)
    records_url: str | None = None
    _lineage_counts: dict[str, Any] | None = None
    _lineage_base_url: str | None = None
    _lineage_dry_run: bool = False

    # -- the run's record, for the link and for OpenLineage ------------------------------------------------------

    def remember_load(self, context: Any, hook: ServiceNowHook, counts: dict[str, Any] | None,
                      started: datetime) -> None:
        """Called when the load ends, however it ends. Only observability depends on it, so it never raises."""
        self._lineage_counts = counts
        try:
            hook.get_conn()  # sets base_url from the connection; no network
            self._lineage_base_url = hook.base_url
            with self.open_source() as source:  # type: ignore[attr-defined]
                ids = source.created_request_ids(claim_token(context), MAX_LINKED_IDS + 1)
            login = hook.get_connection(hook.servicenow_conn_id).login
            self.records_url = records_url(
                hook.base_url, self.target_table, correlation_ids=ids,
                window=(started, datetime.now(UTC)), created_by=login,
            )
        except Exception as exc:  # observability code: a missing link must not fail or mask the load
            self.log.warning("no ServiceNow records link for this run: %s", exc)  # type: ignore[attr-defined]

    # -- OpenLineage (called by the provider's listener; only when a transport is configured) --------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.sdk import BaseHook

        from ticketsync import lineage

        conn = BaseHook.get_connection(self.source_conn_id)  # type: ignore[attr-defined]
        schema = self._source_schema() if conn.conn_type in ("postgres", "postgresql") else None
        source = lineage.source_dataset(conn, self.source_table, schema)  # type: ignore[attr-defined]
        base_url = self._lineage_base_url or self._base_url_from_connection()
        target = lineage.servicenow_dataset(base_url, self.target_table) if base_url else None
        return lineage.operator_lineage(source, target, self._lineage_counts, dry_run=self._lineage_dry_run)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_complete(task_instance)

    def _source_schema(self) -> str | None:
        try:
            with self.open_source() as source:  # type: ignore[attr-defined]
                schema: str | None = source.current_schema()
                return schema
        except Exception:  # lineage is best effort; PostgreSQL's default schema is the usual answer
            return None

    def _base_url_from_connection(self) -> str | None:
        hook = ServiceNowHook(self.servicenow_conn_id)  # type: ignore[attr-defined]
        try:
            hook.get_conn()
            return str(hook.base_url)
        except Exception:
            return None
        finally:
            hook.close()

    # -- dry run ---------------------------------------------------------------------------------------------------

    def dry_run_load(self, context: Any, request_ids: list[str]) -> dict[str, Any]:
        """Validate and look up what a real load would take; GET only, nothing written anywhere."""
        settings = self.settings()  # type: ignore[attr-defined]
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=1)  # type: ignore[attr-defined]
        plan = dryrun.DryRunPlan()
        try:
            with self.open_source() as source:  # type: ignore[attr-defined]
                chunks = dryrun.selection(source, limit=int(self.limit), chunk_size=settings.chunk_size,  # type: ignore[attr-defined]
                                          request_ids=request_ids)
                resolver = ReferenceResolver(hook.find_by_keys)
                for rows in chunks:
                    dryrun.plan_chunk(hook, rows, plan, max_attempts=settings.max_attempts, resolver=resolver)
        finally:
            hook.close()
        result = plan.as_dict()
        self._lineage_counts = {"taken": result["selected"], "lookups": plan.lookups}
        self._lineage_dry_run = True
        self.log.info("dry run of %s:\n%s", claim_token(context), dryrun.format_plan(result))  # type: ignore[attr-defined]
        return result
