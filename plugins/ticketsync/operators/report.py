"""Report: one summary table per run, from the source table itself, and a failed run when a row failed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from ticketsync import alerts, dryrun
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.operators.runinfo import as_bool

SUMMARY_ROWS = (
    ("claimed", "claimed"),
    ("created", "created_created"),
    ("adopted existing", "created_adopted"),
    ("rejected", "rejected"),
    ("failed", "failed"),
    ("still pending", "pending"),
)


def format_summary(counts: dict[str, int], backlog: dict[str, int]) -> str:
    width = max(len(label) for label, _ in SUMMARY_ROWS)
    lines = [f"{'outcome'.ljust(width)}  rows", f"{'-' * width}  ----"]
    lines += [f"{label.ljust(width)}  {counts.get(key, 0)}" for label, key in SUMMARY_ROWS]
    lines.append(f"{'table now'.ljust(width)}  " + ", ".join(f"{k}={v}" for k, v in sorted(backlog.items())))
    return "\n".join(lines)


class LoadDidNotComplete(alerts.LoadIncomplete, AirflowException):
    """The report's failure when the load failed: the load's own failure callback has alerted already."""


class SyncReportOperator(SourceTaskOperator):
    """Count this run's rows by outcome, log the table, and fail the run if any row failed permanently.

    It runs whatever happened upstream (trigger rule ``all_done``), so a failed load still gets its summary.
    The counts come from the source table, the record of truth, not from XCom.

    Alerts (:mod:`ticketsync.alerts`, configured by Variables): when more than a share of the run's rows was
    rejected or failed, and when the oldest pending row is too old (a stuck backlog). A run that fails here alerts
    through the failure callback instead, with the threshold findings in its message: one alert per run.
    ``is_dry_run``: prints the load's plan and writes nothing.
    """

    template_fields = (*SourceTaskOperator.template_fields, "load_task_id", "is_dry_run")
    ui_color = "#f3e8fd"

    def __init__(self, *, load_task_id: str = "load", is_dry_run: bool | str = False, **kwargs: Any) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.load_task_id = load_task_id
        self.is_dry_run = is_dry_run

    def execute(self, context: Context) -> dict[str, Any]:
        if as_bool(self.is_dry_run):
            return self.report_dry_run(context)
        token = claim_token(context)
        with self.open_source() as source:
            source.ensure_schema()
            by_status = source.token_summary(token)
            errors = source.first_errors(token, ("failed", "pending", "rejected"))
            backlog = source.backlog()
            oldest_pending = source.oldest_pending_age()
        counts = dict(by_status)
        counts["claimed"] = sum(by_status.values())
        counts.setdefault("created_created", 0)
        counts.setdefault("created_adopted", 0)
        self.log.info("ticket sync %s\n%s", token, format_summary(counts, backlog))
        for request_id, status, error in errors:
            self.log.info("%s %s: %s", status, request_id, error)
        loaded = context["ti"].xcom_pull(task_ids=self.load_task_id)
        if loaded is None or (isinstance(loaded, list) and any(part is None for part in loaded)):
            # The report is the DAG's leaf: if it succeeded here, a failed load would leave a green run.
            raise LoadDidNotComplete(
                f"the {self.load_task_id!r} task did not complete; its log says why. Rows it did not finish stay "
                "pending and are taken again, looked up first, by its retry or the next run"
            )
        breaches = alerts.threshold_alerts(context, counts, errors, oldest_pending)
        if counts.get("failed"):
            first = "; ".join(f"{rid}: {err}" for rid, status, err in errors if status == "failed")
            also = "".join(f"; also: {alert.headline}" for alert in breaches)
            raise AirflowException(
                f"{counts['failed']} requests failed permanently and need a person: {first}{also}"
            )
        for alert in breaches:
            alerts.send_alert(alert, context)
        return counts

    def report_dry_run(self, context: Context) -> dict[str, Any]:
        plan = context["ti"].xcom_pull(task_ids=self.load_task_id)
        if not isinstance(plan, dict) or not plan.get("dry_run"):
            raise LoadDidNotComplete(f"the {self.load_task_id!r} task did not complete its dry run; its log says why")
        self.log.info("ticket sync %s\n%s", claim_token(context), dryrun.format_plan(plan))
        return plan
