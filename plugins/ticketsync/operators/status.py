"""The status operator: the case status pull as an Airflow task (status back, issue 13)."""

from __future__ import annotations

from typing import Annotated, Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from pydantic import Field, TypeAdapter

from ticketsync import alerts
from ticketsync.casestatus.models import UnexpectedAnswer
from ticketsync.casestatus.puller import CaseStatusPuller, StatusCounts, StatusSettings
from ticketsync.definitions.transform import is_loan
from ticketsync.hooks.servicenow import (
    ServiceNowConfigurationError,
    ServiceNowHook,
    ServiceNowRequestError,
    ServiceNowTransientError,
)
from ticketsync.operators.base import SourceTaskOperator
from ticketsync.typed import InvalidValue, parse

_AT_LEAST_1: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=1)])
_AT_LEAST_0: TypeAdapter[int] = TypeAdapter(Annotated[int, Field(ge=0)])
_SECONDS: TypeAdapter[float] = TypeAdapter(Annotated[float, Field(ge=0, allow_inf_nan=False)])


class CaseStatusOperator(SourceTaskOperator):
    """Write the state of every case changed on the instance since the last pull into its source row.

    * reads in pages of ``page_size`` (never one request per row), from the stored watermark less
      ``overlap_seconds``, and writes each page with the watermark in one transaction; a row is written only
      when its case changed;
    * then checks that ``verify_batch`` stored cases still exist; a case not found is reported in its row's
      ``error`` (its status and last known state stay);
    * 401, a refused read (ACL), or an answer the pull cannot trust fails the task at once; an instance that stays
      unreachable fails it normally (Airflow retries; the watermark holds what was written);
    * alerts when a pull has not read to its end for longer than Variable
      ``ticketsync_alert_max_status_age_minutes``;
    * returns the counts (pages, list requests, rows changed / unchanged, cases not found…).

    The instance tables read: those the rows name in ``target_table`` (the loan contract, ``ticket_requests``), or
    the one target table of the task's ``definition`` (every other definition: its source rows do not name one).

    :param servicenow_conn_id: the instance (templated)
    :param page_size: cases per list request (templated)
    :param overlap_seconds: how far before the watermark each pull starts again (templated)
    :param max_pages: most pages per instance table and run (templated)
    :param verify_batch: stored cases whose existence one run checks per table, 0 for none (templated)
    """

    template_fields = (
        *SourceTaskOperator.template_fields,
        "servicenow_conn_id",
        "page_size",
        "overlap_seconds",
        "max_pages",
        "verify_batch",
    )
    ui_color = "#e8f0fd"
    _lineage_counts: dict[str, Any] | None = None
    _lineage_base_url: str | None = None
    _lineage_tables: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        servicenow_conn_id: str = "servicenow_default",
        page_size: int | str = 1000,
        overlap_seconds: float | str = 600,
        max_pages: int | str = 100,
        verify_batch: int | str = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.servicenow_conn_id = servicenow_conn_id
        self.page_size = page_size
        self.overlap_seconds = overlap_seconds
        self.max_pages = max_pages
        self.verify_batch = verify_batch

    def settings(self) -> StatusSettings:
        """The templated arguments, parsed once: a bad one names itself and what it must be."""
        return StatusSettings(
            page_size=parse(_AT_LEAST_1, self.page_size, name="page_size", must_be="a whole number of at least 1"),
            overlap_seconds=parse(
                _SECONDS, self.overlap_seconds, name="overlap_seconds", must_be="a number of seconds, at least 0"
            ),
            max_pages=parse(_AT_LEAST_1, self.max_pages, name="max_pages", must_be="a whole number of at least 1"),
            verify_batch=parse(
                _AT_LEAST_0, self.verify_batch, name="verify_batch", must_be="a whole number of at least 0"
            ),
        )

    def target_table(self) -> str | None:
        """The definition's instance table, which holds the cases of all its rows; None for the loan contract
        (``ticket_requests``), whose rows each name their table in ``target_table``."""
        definition = self.sync_definition()
        if definition is None or is_loan(definition):
            return None
        return definition.target_table

    def execute(self, context: Context) -> dict[str, Any]:
        try:
            settings = self.settings()
        except InvalidValue as exc:
            raise AirflowFailException(str(exc)) from exc
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=1)
        try:
            with self.open_source() as source:
                self.ensure_schema(source)
                puller = CaseStatusPuller(
                    hook, source, self.servicenow_conn_id, settings, target_table=self.target_table()
                )
                self._lineage_tables = tuple(puller.tables())
                counts = puller.run()
                self._lineage_counts = counts.as_dict()
                self._lineage_base_url = str(hook.base_url)
                pulls = {
                    f"{self.servicenow_conn_id}/{table}": source.status_pull(f"{self.servicenow_conn_id}/{table}")
                    for table in puller.tables()
                }
        except ServiceNowConfigurationError as exc:
            raise AirflowFailException(str(exc)) from exc
        except (ServiceNowRequestError, UnexpectedAnswer) as exc:
            raise AirflowFailException(f"the status pull cannot go on: {exc}") from exc
        except ServiceNowTransientError as exc:
            raise AirflowException(f"ServiceNow unavailable; the task will be retried: {exc}") from exc
        finally:
            hook.close()
        self.log.info("case status:\n%s", format_counts(counts))
        for key, pull in pulls.items():
            self.log.info("%s: watermark %s", key, pull.watermark)
        stale = {key: (pull.watermark, pull.completed_seconds_ago) for key, pull in pulls.items()}
        for alert in alerts.stuck_status_alerts(context, stale):
            alerts.send_alert(alert, context)
        return counts.as_dict()


    # -- OpenLineage (called by the provider's listener; only when a transport is configured) --------------------

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        from airflow.sdk import BaseHook

        from ticketsync import lineage

        conn = BaseHook.get_connection(self.source_conn_id)
        schema = None
        if conn.conn_type in ("postgres", "postgresql"):
            try:
                with self.open_source() as source:
                    schema = source.current_schema()
            except Exception:  # lineage is best effort; PostgreSQL's default schema is the usual answer
                self.log.debug("no current schema for lineage", exc_info=True)
        target = lineage.source_dataset(conn, self.source_table, schema)
        base_url = self._lineage_base_url
        tables = [lineage.servicenow_dataset(base_url, table) for table in self._lineage_tables] if base_url else []
        return lineage.status_lineage(tables, target, self._lineage_counts)

    def get_openlineage_facets_on_failure(self, task_instance: Any) -> Any:
        return self.get_openlineage_facets_on_complete(task_instance)


def format_counts(counts: StatusCounts) -> str:
    rows = [
        ("instance tables", counts.tables),
        ("pages read", counts.pages),
        ("list requests", counts.list_requests),
        ("of them retries", counts.retries),
        ("cases read", counts.cases_read),
        ("rows changed", counts.rows_changed),
        ("rows unchanged", counts.rows_unchanged),
        ("cases of no row", counts.cases_not_ours),
        ("cases checked", counts.verified),
        ("cases not found", counts.not_found),
        ("tables not finished", counts.incomplete_tables),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label.ljust(width)}  {value}" for label, value in rows)
