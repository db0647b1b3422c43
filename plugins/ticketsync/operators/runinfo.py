"""What the load leaves for people and tools besides its rows: the Asset event of its cases, OpenLineage facets, the
"ServiceNow records" link, and the dry-run plan. A base class of the load operator, so the operator's own code stays
about loading."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from airflow.sdk import Asset, AssetAlias, Context

from ticketsync import dryrun
from ticketsync.assets import SERVICENOW_ASSET_SCHEME, cases_event_extra, servicenow_asset
from ticketsync.correlation import CaseTwins, SourceTwin
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
    servicenow_conn_id: str
    limit: int | str
    records_url: str | None = None
    _lineage_counts: dict[str, Any] | None = None
    _lineage_base_url: str | None = None
    _lineage_dry_run: bool = False

    @property
    def target_table(self) -> str:
        """The ServiceNow table the link, the lineage and the Asset event name: the definition's."""
        definition = self.sync_definition()
        return definition.target_table if definition else DEFAULT_TARGET_TABLE

    def settings(self, connection_rate_limit: float | None = None) -> LoadSettings:
        """The loader's settings (the subclass's)."""
        raise NotImplementedError

    # -- the Asset event: "cases were created", with the counts ---------------------------------------------------

    def announce_cases(
        self, context: Context, summary: dict[str, int], shard: tuple[int, int]
    ) -> dict[str, Any] | None:
        """Attach this loader's counts to the event of the ServiceNow table (docs/adr/0009). Through an ``AssetAlias``
        outlet (the DAG's) the event is added only when some rows came to cases (created or adopted); an ``Asset``
        outlet is emitted by Airflow after every successful load anyway, and gets the counts too.

        :param context: the task's context (its ``outlet_events``).
        :param summary: this loader's rows of the run by outcome, over all its tries (``SourceTable.shard_summary``).
        :param shard: (index, count) of this loader.
        :return: the event's extra, or None when no event is emitted.
        """
        ti = context["ti"]
        extra = cases_event_extra(ti.dag_id, ti.run_id, shard, summary)
        announced = extra["created"] + extra["adopted"] > 0
        for outlet in self.outlets:
            if isinstance(outlet, AssetAlias) and announced:
                asset = servicenow_asset(self.servicenow_conn_id, self.target_table)
                context["outlet_events"][outlet].add(asset, extra=extra)
            elif isinstance(outlet, Asset) and outlet.uri.startswith(f"{SERVICENOW_ASSET_SCHEME}://"):
                context["outlet_events"][outlet].extra.update(extra)
                announced = True
        self.log.info("asset event %s: %s", "emitted" if announced else "not emitted (no row came to a case)", extra)
        return extra if announced else None

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
                twins = CaseTwins(SourceTwin(*twin) for twin in source.case_twins())
                resolver = ReferenceResolver(hook.find_by_keys)
                transform = self.transform()
                for rows in chunks:
                    dryrun.plan_chunk(hook, rows, plan, max_attempts=settings.max_attempts, twins=twins,
                                      resolver=resolver, transform=transform)
        finally:
            hook.close()
        result = plan.as_dict()
        self._lineage_counts = {"taken": result["selected"], "lookups": plan.lookups}
        self._lineage_dry_run = True
        self.log.info("dry run of %s:\n%s", claim_token(context), dryrun.format_plan(result))
        return result
