"""Alerts: chosen by configuration (Airflow Variables and a Connection), sent by the providers' notifiers.

* Variable ``ticketsync_alert_emails``: comma-separated recipients; when set, alerts go by e-mail through the
  SMTP provider's ``SmtpNotifier``, over connection ``smtp_default`` or Variable ``ticketsync_alert_smtp_conn_id``;
  sender: Variable ``ticketsync_alert_from_email``, else the connection's ``from_email`` extra, else ticketsync@host.
* Connection ``ticketsync_alert_webhook`` (conn_type ``http``): when it exists, alerts POST ``{"text": …}`` JSON
  (what Slack and Teams incoming webhooks read) through the HTTP provider's ``HttpNotifier``; base URL from
  schema/host/port (or a full URL in host), path from the extra ``endpoint``.
* Variable ``ticketsync_alert_max_bad_share`` (default 0.05): alert when a larger share of a run's rows is rejected
  or failed; Variable ``ticketsync_alert_max_pending_age_minutes`` (default 60): alert when the oldest pending row
  is older (the backlog is stuck).

Everything is read when an alert is due (a callback, the report task), never when the DAG file is parsed. With
nothing configured, alerts are only logged. A channel that fails is logged and does not stop the other one, nor
the task: alerting is observability code, so it catches broadly; the data path never does.

Messages name the DAG, task, run and try, the run's counts from the source table, the first errors (each cut to
300 characters, never a request body), and links to the run and the task log in the Airflow UI (``[api] base_url``).
"""

from __future__ import annotations

import html
import logging
import socket
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseHook, BaseNotifier, Variable
from airflow.sdk.exceptions import AirflowNotFoundException

log = logging.getLogger(__name__)

EMAILS_VAR = "ticketsync_alert_emails"
SMTP_CONN_VAR = "ticketsync_alert_smtp_conn_id"
FROM_EMAIL_VAR = "ticketsync_alert_from_email"
WEBHOOK_CONN_ID = "ticketsync_alert_webhook"
MAX_BAD_SHARE_VAR = "ticketsync_alert_max_bad_share"
MAX_PENDING_AGE_VAR = "ticketsync_alert_max_pending_age_minutes"
DEFAULT_MAX_BAD_SHARE = 0.05
DEFAULT_MAX_PENDING_AGE_MINUTES = 60.0
MAX_STATUS_AGE_VAR = "ticketsync_alert_max_status_age_minutes"
DEFAULT_MAX_STATUS_AGE_MINUTES = 30.0
ERROR_CHARS = 300
COUNT_LABELS = (
    ("claimed", "claimed"),
    ("created_created", "created"),
    ("created_adopted", "adopted"),
    ("rejected", "rejected"),
    ("failed", "failed"),
    ("pending", "still pending"),
)


class LoadIncomplete(Exception):
    """Marker mixed into the report's exception when the load did not complete: the load already alerted."""


def _redact(text: str) -> str:
    """Mask anything Airflow knows to be secret (connection passwords read in this process), to be safe."""
    try:
        from airflow.sdk._shared.secrets_masker import redact

        return str(redact(text))
    except Exception:  # observability code: an alert without masking beats no alert
        return text


def _one_line(text: object, limit: int = ERROR_CHARS) -> str:
    flat = " ".join(str(text).split())
    return _redact(flat if len(flat) <= limit else flat[: limit - 1] + "…")


@dataclass
class Alert:
    """One alert, channel-neutral: rendered as text (webhook, e-mail body) and as structured fields."""

    kind: str  # task_failed | bad_share | stuck_backlog
    headline: str
    dag_id: str
    task_id: str
    run_id: str
    try_number: int | None = None
    details: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    errors: list[tuple[str, str, str]] = field(default_factory=list)
    run_url: str | None = None
    task_url: str | None = None

    @property
    def subject(self) -> str:
        return f"[ticketsync] {self.dag_id}: {self.headline}"

    def text(self) -> str:
        where = f"DAG {self.dag_id}, task {self.task_id}, run {self.run_id}"
        if self.try_number:
            where += f", try {self.try_number}"
        lines = [self.subject, where, *self.details]
        if self.counts:
            lines.append("Rows of this run: " + ", ".join(
                f"{label} {self.counts.get(key, 0)}" for key, label in COUNT_LABELS
            ))
        if self.errors:
            lines.append("First errors:")
            lines += [f"  {status} {request_id}: {error}" for request_id, status, error in self.errors]
        if self.run_url:
            lines.append(f"Run: {self.run_url}")
        if self.task_url:
            lines.append(f"Task log: {self.task_url}")
        return "\n".join(lines)

    def html(self) -> str:
        return f"<pre>{html.escape(self.text())}</pre>"

    def payload(self) -> dict[str, Any]:
        """Slack/Teams-compatible JSON: ``text`` is what they show; ``ticketsync`` carries the same as fields."""
        return {
            "text": self.text(),
            "ticketsync": {
                "kind": self.kind,
                "dag_id": self.dag_id,
                "task_id": self.task_id,
                "run_id": self.run_id,
                "try_number": self.try_number,
                "counts": self.counts,
                "errors": [{"request_id": r, "status": s, "error": e} for r, s, e in self.errors],
                "run_url": self.run_url,
                "task_url": self.task_url,
            },
        }


# --------------------------------------------------------------------------------------------------------------
# building alerts from a task's context
# --------------------------------------------------------------------------------------------------------------


def _base_url() -> str:
    from airflow.sdk.configuration import conf

    return str(conf.get("api", "base_url", fallback="http://localhost:8080/")).rstrip("/")


def alert_from_context(context: Any, kind: str, headline: str) -> Alert:
    ti = context.get("ti")
    dag_id = str(getattr(ti, "dag_id", None) or context.get("dag").dag_id)
    run_id = str(getattr(ti, "run_id", None) or context.get("run_id") or "")
    task_id = str(getattr(ti, "task_id", None) or "")
    try:
        task_url = str(ti.log_url) if ti is not None else None
    except Exception:  # a TI from the metadata database (a callback run by the DAG processor) may not have it
        task_url = None
    run_url = f"{_base_url()}/dags/{quote(dag_id)}/runs/{quote(run_id)}"
    return Alert(
        kind=kind, headline=headline, dag_id=dag_id, task_id=task_id, run_id=run_id,
        try_number=getattr(ti, "try_number", None), run_url=run_url, task_url=task_url,
    )


def run_rows(context: Any) -> tuple[dict[str, int], list[tuple[str, str, str]]]:
    """This run's counts by status and its first errors, from the source table (empty if unreachable)."""
    task = context.get("task")
    if task is None or not hasattr(task, "open_source"):
        return {}, []
    from ticketsync.operators.base import claim_token

    try:
        with task.open_source() as source:
            token = claim_token(context)
            counts = source.token_summary(token)
            errors = source.first_errors(token, ("failed", "rejected", "pending"))
    except Exception as exc:  # the source may be why the task failed; the alert goes out without counts
        log.warning("alert without counts: the source table could not be read (%s)", _one_line(exc, 200))
        return {}, []
    counts["claimed"] = sum(counts.values())
    for key, _ in COUNT_LABELS:
        counts.setdefault(key, 0)
    return counts, [(_one_line(r, 100), s, _one_line(e)) for r, s, e in errors]


def failure_alert(context: Any) -> Alert | None:
    """The alert for a failed task, or None when another alert already covers it."""
    exception = context.get("exception")
    if isinstance(exception, LoadIncomplete):
        return None  # the report failed because the load failed, and the load's own callback alerted
    task_id = getattr(context.get("ti"), "task_id", "task")
    alert = alert_from_context(context, "task_failed", f"{task_id} failed")
    if exception is not None:
        alert.details.append(f"Error: {_one_line(f'{type(exception).__name__}: {exception}', 600)}")
    alert.counts, alert.errors = run_rows(context)
    return alert


def _float_variable(key: str, default: float) -> float:
    raw = Variable.get(key, default=None)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except (TypeError, ValueError):
        log.warning("Variable %s=%r is not a number; using %s", key, raw, default)
        return default


def threshold_alerts(
    context: Any, counts: dict[str, int], errors: list[tuple[str, str, str]], oldest_pending_age: float | None
) -> list[Alert]:
    """The report's alerts: too many bad rows in this run, and a stuck backlog."""
    alerts = []
    claimed = counts.get("claimed", 0)
    bad = counts.get("rejected", 0) + counts.get("failed", 0)
    max_share = _float_variable(MAX_BAD_SHARE_VAR, DEFAULT_MAX_BAD_SHARE)
    if claimed and bad / claimed > max_share:
        alert = alert_from_context(context, "bad_share", f"{bad} of {claimed} rows rejected or failed")
        alert.details.append(
            f"{bad / claimed:.0%} of this run's rows were rejected or failed (alert above {max_share:.0%}, "
            f"Variable {MAX_BAD_SHARE_VAR}). Fix the rows named in their error column, then replay them "
            "(trigger with request_ids)."
        )
        alerts.append(alert)
    max_age = _float_variable(MAX_PENDING_AGE_VAR, DEFAULT_MAX_PENDING_AGE_MINUTES)
    if oldest_pending_age is not None and oldest_pending_age > max_age * 60:
        alert = alert_from_context(
            context, "stuck_backlog", f"oldest pending request is {oldest_pending_age / 60:.0f} minutes old"
        )
        alert.details.append(
            f"The oldest pending row was written {oldest_pending_age / 60:.0f} minutes ago (alert above "
            f"{max_age:g} minutes, Variable {MAX_PENDING_AGE_VAR}): the backlog is not draining. Check that the "
            "DAG is unpaused and its runs succeed, and whether limit keeps up with the producers."
        )
        alerts.append(alert)
    for alert in alerts:
        alert.counts = dict(counts)
        alert.errors = [(_one_line(r, 100), s, _one_line(e)) for r, s, e in errors]
    return alerts


def stuck_status_alerts(context: Any, pulls: dict[str, tuple[str | None, float | None]]) -> list[Alert]:
    """The status DAG's alert: a pull that has not read to its end for longer than the threshold (its watermark
    is stuck, so the state of the cases in the source is getting old).

    :param pulls: per instance table, (watermark, seconds since a pull last read to its end, None for never)
    """
    max_age = _float_variable(MAX_STATUS_AGE_VAR, DEFAULT_MAX_STATUS_AGE_MINUTES)
    alerts = []
    for key, (watermark, age) in sorted(pulls.items()):
        if age is not None and age <= max_age * 60:
            continue
        since = "never" if age is None else f"{age / 60:.0f} minutes ago"
        alert = alert_from_context(context, "stuck_status", f"case status of {key} is stuck (last complete: {since})")
        alert.details.append(
            f"The status pull of {key} last read to its end {since} (alert above {max_age:g} minutes, Variable "
            f"{MAX_STATUS_AGE_VAR}); its watermark is {watermark or 'not set'}. Check that the status DAG is "
            "unpaused and its runs succeed; a pull that stops at max_pages every run needs more pages per run."
        )
        alerts.append(alert)
    return alerts


# --------------------------------------------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------------------------------------------


def _recipients() -> list[str]:
    raw = Variable.get(EMAILS_VAR, default=None) or ""
    return [address.strip() for address in str(raw).replace(";", ",").split(",") if address.strip()]


def _send_email(alert: Alert, recipients: list[str], context: Any) -> None:
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    conn_id = Variable.get(SMTP_CONN_VAR, default=None) or "smtp_default"
    sender = Variable.get(FROM_EMAIL_VAR, default=None)
    if not sender:
        sender = BaseHook.get_connection(conn_id).extra_dejson.get("from_email") or f"ticketsync@{socket.getfqdn()}"
    notifier = SmtpNotifier(
        to=recipients, from_email=sender, subject=alert.subject, html_content=alert.html(), smtp_conn_id=conn_id,
    )
    # notify(), not notifier(context): calling it would render the texts as Jinja templates, and they hold
    # error messages that came from the source data.
    notifier.notify(context)


def _send_webhook(alert: Alert, context: Any) -> bool:
    from airflow.providers.http.notifications.http import HttpNotifier

    try:
        conn = BaseHook.get_connection(WEBHOOK_CONN_ID)
    except AirflowNotFoundException:
        return False
    endpoint = conn.extra_dejson.get("endpoint")
    notifier = HttpNotifier(
        http_conn_id=WEBHOOK_CONN_ID, endpoint=endpoint, json=alert.payload(), extra_options={"timeout": 30},
    )
    notifier.notify(context)
    return True


def send_alert(alert: Alert, context: Any) -> dict[str, str]:
    """Send one alert through every configured channel; returns what happened per channel (also logged)."""
    log.warning("ticketsync alert:\n%s", alert.text())
    outcome: dict[str, str] = {}
    recipients = _recipients()
    if recipients:
        try:
            _send_email(alert, recipients, context)
            outcome["email"] = f"sent to {len(recipients)} recipients"
        except Exception as exc:  # one channel failing must not silence the other
            outcome["email"] = f"failed: {_one_line(exc, 200)}"
    try:
        outcome["webhook"] = "sent" if _send_webhook(alert, context) else "not configured"
    except Exception as exc:
        outcome["webhook"] = f"failed: {_one_line(exc, 200)}"
    log.warning("ticketsync alert %s: %s", alert.kind, outcome)
    return outcome


class TicketSyncFailureNotifier(BaseNotifier):
    """``on_failure_callback`` of every ticketsync task: one alert when a task fails for good (after retries).

    Reads its configuration when called, so the DAG file reads nothing; with nothing configured it only logs.
    """

    template_fields = ()

    def notify(self, context: Any) -> None:
        alert = failure_alert(context)
        if alert is not None:
            send_alert(alert, context)
