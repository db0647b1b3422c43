"""What the load leaves for people and tools besides its rows: OpenLineage facets, the "ServiceNow records" link,
and the dry-run plan. A base class of the load operator, so the operator's own code stays about loading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Context

from ticketsync import dryrun
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.links import MAX_LINKED_IDS, ServiceNowRecordsLink, records_url
from ticketsync.models import DEFAULT_TARGET_TABLE
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.references import ReferenceResolver

if TYPE_CHECKING:
    from ticketsync.loader import LoadSettings


class LoadRunInfoOperator(SourceTaskOperator):
    """Base of :class:`~ticketsync.operators.load.ServiceNowLoadOperator`: its link, lineage and dry run.

    Stores nothing of its own in ``__init__``; subclasses set ``servicenow_conn_id`` and ``limit`` and implement
    :meth:`settings`.
    """

    operator_extra_links: Any = (ServiceNowRecordsLink(),)
    target_table = DEFAULT_TARGET_TABLE  # the table the link and the lineage name (the only one supported so far)
    servicenow_conn_id: str
    limit: int | str
    records_url: str | None = None
    _lineage_counts: dict[str, Any] | None = None
    _lineage_base_url: str | None = None
    _lineage_dry_run: bool = False

    def settings(self, connection_rate_limit: float | None = None) -> LoadSettings:
        """The loader's settings (the subclass's)."""
        raise NotImplementedError

    # -- the run's record, for the link and for OpenLineage ------------------------------------------------------

    def remember_load(self, context: Context, hook: ServiceNowHook, counts: dict[str, Any] | None,
                      started: datetime) -> None:
        """Called when the load ends, however it ends. Only observability depends on it, so it never raises.

        :param context: the task's context.
        :param hook: the load's hook (its connection gives the instance's URL and user).
        :param counts: the load's counts, if it got as far as counting.
        :param started: when the load started (the link's time window opens here).
        """
        self._lineage_counts = counts
        try:
            hook.get_conn()  # sets base_url from the connection; no network
            self._lineage_base_url = hook.base_url
            with self.open_source() as source:
                ids = source.created_request_ids(claim_token(context), MAX_LINKED_IDS + 1)
            login = hook.get_connection(hook.servicenow_conn_id).login
            self.records_url = records_url(
                hook.base_url, self.target_table, correlation_ids=ids,
                window=(started, datetime.now(UTC)), created_by=login,
            )
        except Exception as exc:  # observability code: a missing link must not fail or mask the load
            self.log.warning("no ServiceNow records link for this run: %s", exc)

    # -- OpenLineage (called by the provider's listener; only when a transport is configured) --------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.sdk import BaseHook

        from ticketsync import lineage

        conn = BaseHook.get_connection(self.source_conn_id)
        schema = self._source_schema() if conn.conn_type in ("postgres", "postgresql") else None
        source = lineage.source_dataset(conn, self.source_table, schema)
        base_url = self._lineage_base_url or self._base_url_from_connection()
        target = lineage.servicenow_dataset(base_url, self.target_table) if base_url else None
        return lineage.operator_lineage(source, target, self._lineage_counts, dry_run=self._lineage_dry_run)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_complete(task_instance)

    def _source_schema(self) -> str | None:
        try:
            with self.open_source() as source:
                schema: str | None = source.current_schema()
                return schema
        except Exception:  # lineage is best effort; PostgreSQL's default schema is the usual answer
            return None

    def _base_url_from_connection(self) -> str | None:
        hook = ServiceNowHook(self.servicenow_conn_id)
        try:
            hook.get_conn()
            return str(hook.base_url)
        except Exception:
            return None
        finally:
            hook.close()

    # -- dry run ---------------------------------------------------------------------------------------------------

    def dry_run_load(self, context: Context, request_ids: list[str]) -> dict[str, Any]:
        """Validate and look up what a real load would take; GET only, nothing written anywhere.

        :param context: the task's context.
        :param request_ids: only these requests (all pending ones if empty).
        """
        settings = self.settings()
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=1)
        plan = dryrun.DryRunPlan()
        try:
            with self.open_source() as source:
                chunks = dryrun.selection(source, limit=int(self.limit), chunk_size=settings.chunk_size,
                                          request_ids=request_ids)
                resolver = ReferenceResolver(hook.find_by_keys)
                for rows in chunks:
                    dryrun.plan_chunk(hook, rows, plan, max_attempts=settings.max_attempts, resolver=resolver)
        finally:
            hook.close()
        result = plan.as_dict()
        self._lineage_counts = {"taken": result["selected"], "lookups": plan.lookups}
        self._lineage_dry_run = True
        self.log.info("dry run of %s:\n%s", claim_token(context), dryrun.format_plan(result))
        return result
