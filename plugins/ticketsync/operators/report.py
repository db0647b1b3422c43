"""Report: one summary table per run, from the source table itself, and a failed run when a row failed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException

from ticketsync import alerts, dryrun
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.typed import flag

REPORTED_ROWS = 50  # rows the report names one by one in its log
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

    A mapped load (one loader per shard): ``shards_task_id`` names the task whose return value the load expanded
    over (the extract), and every one of those loaders must have returned its counts, or the run fails; their
    counters (posts, look-ups, 429s…) are summed into the log.

    :param load_task_id: the load task whose counts are reported (templated).
    :param shards_task_id: the task whose return value a mapped load expanded over, if the load is mapped
        (templated).
    :param is_dry_run: print the load's plan; write nothing (templated).
    """

    template_fields = (*SourceTaskOperator.template_fields, "load_task_id", "shards_task_id", "is_dry_run")
    ui_color = "#f3e8fd"

    def __init__(
        self,
        *,
        load_task_id: str = "load",
        shards_task_id: str | None = None,
        is_dry_run: bool | str = False,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        self.load_task_id = load_task_id
        self.shards_task_id = shards_task_id
        self.is_dry_run = is_dry_run

    def execute(self, context: Context) -> dict[str, Any]:
        if flag(self.is_dry_run, name="is_dry_run"):
            return self.report_dry_run(context)
        token = claim_token(context)
        with self.open_source() as source:
            self.ensure_schema(source)
            by_status = source.token_summary(token)
            # every row that needs a look, named (up to REPORTED_ROWS): failed, rejected, pending with an error, and
            # created with a warning (a field the instance shortened, a case of another request matched by case)
            named = source.first_errors(token, ("failed", "pending", "rejected", "created"), limit=REPORTED_ROWS)
            backlog = source.backlog()
            oldest_pending = source.oldest_pending_age()
            status_pulls = source.status_pulls()
        counts = dict(by_status)
        counts["claimed"] = sum(by_status.values())
        counts.setdefault("created_created", 0)
        counts.setdefault("created_adopted", 0)
        self.log.info("ticket sync %s\n%s", token, format_summary(counts, backlog))
        for request_id, status, error in named:
            self.log.info("%s %s: %s", status, request_id, error)
        errors = [entry for entry in named if entry[1] != "created"][:5]
        missing = self._unfinished_loads(context)
        if missing:
            # The report is the DAG's leaf: if it succeeded here, a failed load would leave a green run.
            raise LoadDidNotComplete(
                f"the {self.load_task_id!r} task did not complete ({missing}); its log says why. Rows it did not "
                "finish stay pending and are taken again, looked up first, by its retry or the next run"
            )
        breaches = alerts.threshold_alerts(context, counts, errors, oldest_pending)
        # The status DAG cannot alert while it is paused or not scheduled: its stuck watermark is checked here too.
        stale = {key: (pull.watermark, pull.completed_seconds_ago) for key, pull in status_pulls.items()}
        breaches += alerts.stuck_status_alerts(context, stale)
        if counts.get("failed"):
            first = "; ".join(f"{rid}: {err}" for rid, status, err in named if status == "failed")
            also = "".join(f"; also: {alert.headline}" for alert in breaches)
            raise AirflowException(
                f"{counts['failed']} requests failed permanently and need a person: {first}{also}"
            )
        for alert in breaches:
            alerts.send_alert(alert, context)
        return counts

    def report_dry_run(self, context: Context) -> dict[str, Any]:
        ti = context["ti"]
        # A dry run plans with a single loader (map index 0 when the load is mapped).
        plan = ti.xcom_pull(task_ids=self.load_task_id, map_indexes=0 if self.shards_task_id else None)
        if not isinstance(plan, dict) or not plan.get("dry_run"):
            raise LoadDidNotComplete(f"the {self.load_task_id!r} task did not complete its dry run; its log says why")
        self.log.info("ticket sync %s\n%s", claim_token(context), dryrun.format_plan(plan))
        return plan

    def _unfinished_loads(self, context: Context) -> str:
        """Which loads returned no counts ("" when all did); logs the counters summed over the loaders."""
        ti = context["ti"]
        if self.shards_task_id is None:
            loaded = ti.xcom_pull(task_ids=self.load_task_id)
            return "" if loaded is not None else "no counts"
        shards = ti.xcom_pull(task_ids=self.shards_task_id)
        if not shards:
            return f"{self.shards_task_id!r} planned no loaders"
        # Pull by map index: without map_indexes Airflow returns only the XComs that exist, so a failed loader
        # would simply be missing from the list (and one success out of N would come back as a bare dict).
        parts = ti.xcom_pull(task_ids=self.load_task_id, map_indexes=list(range(len(shards))))
        failed = [index for index, part in enumerate(parts) if part is None]
        done = [part for part in parts if part is not None]
        totals = {key: sum(int(part.get(key) or 0) for part in done) for key in (done[0] if done else {})}
        self.log.info("%d of %d loaders returned counts; summed: %s", len(done), len(shards), totals)
        return f"loaders {failed} of {len(shards)} returned no counts" if failed else ""
