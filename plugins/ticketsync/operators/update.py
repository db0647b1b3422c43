"""The update operator: the task's semantics around :class:`CaseUpdater` (issue 13, docs/case-status.md#updates)."""

from __future__ import annotations

from typing import Any, Literal, cast

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ticketsync.hooks.servicenow import ServiceNowConfigurationError, ServiceNowHook
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.source.migrator import Migrator
from ticketsync.typed import flag
from ticketsync.updater import CaseUpdater, UpdateSettings, plan_updates

POLICIES = ("skip", "note_only")


class ServiceNowUpdateOperator(SourceTaskOperator):
    """PATCH the case of each ``update_pending`` row with its changed fields and new note, exactly once.

    Rows are claimed under the run's token with ``:update`` appended (so the run's create counts stay apart), one
    ``sys_idIN`` read per chunk gives each case's state, a closed or cancelled case gets ``closed_policy``, and a
    PATCH whose answer was lost is checked against the case and its journal before anything is sent again. Returns
    the counts (``updated``, ``unchanged``, ``closed``, ``not_found``, ``refused``, ``still_pending``…).

    :param servicenow_conn_id: the ServiceNow connection (templated).
    :param closed_policy: ``skip`` or ``note_only`` for a closed or cancelled case (templated).
    :param limit: most rows one run updates (templated).
    :param chunk_size: rows per state read (templated).
    :param lease_seconds: how long the claim holds a row (templated).
    :param max_attempts: PATCH attempts per row in this run (templated).
    :param settle_seconds: after a PATCH whose answer was lost while the instance may still apply it (a timeout,
        a lost connection, a gateway's 502/504), the wait before its case is read (templated; the DAG's param).
    :param is_dry_run: update nothing, send nothing (templated).
    """

    template_fields = (
        *SourceTaskOperator.template_fields, "servicenow_conn_id", "closed_policy", "limit", "chunk_size",
        "lease_seconds", "max_attempts", "settle_seconds", "is_dry_run",
    )

    def __init__(
        self, *, servicenow_conn_id: str = ServiceNowHook.default_conn_name, closed_policy: str = "skip",
        limit: int | str = 10_000, chunk_size: int | str = 100, lease_seconds: float | str = 900,
        max_attempts: int | str = 5, settle_seconds: float | str = 60.0, is_dry_run: bool | str = False, **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.servicenow_conn_id = servicenow_conn_id
        self.closed_policy = closed_policy
        self.limit = limit
        self.chunk_size = chunk_size
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.settle_seconds = settle_seconds
        self.is_dry_run = is_dry_run

    def settings(self) -> UpdateSettings:
        if self.closed_policy not in POLICIES:
            allowed = ", ".join(POLICIES)
            raise AirflowFailException(f"closed_policy must be one of {allowed}, got {self.closed_policy!r}")
        return UpdateSettings(
            limit=int(self.limit), chunk_size=int(self.chunk_size), lease_seconds=float(self.lease_seconds),
            max_attempts=max(1, int(self.max_attempts)), settle_seconds=float(self.settle_seconds),
            closed_policy=cast(Literal["skip", "note_only"], self.closed_policy),
        )

    def execute(self, context: Context) -> dict[str, Any]:
        if flag(self.is_dry_run, name="is_dry_run"):
            with self.open_source() as source:
                migrator = Migrator(source)
                if (migrator.found_version() or 0) < migrator.latest:  # a dry run migrates nothing
                    self.log.info("dry run: %s is not at schema version %d yet: no update to plan", source.table,
                                  migrator.latest)
                    return {"dry_run": True, "update_pending": 0}
                plan = plan_updates(source.pending_updates(limit=int(self.limit)), self.transform())
            self.log.info("dry run: updates planned from the source, nothing claimed or sent: %s", plan)
            return {"dry_run": True, **plan}
        settings = self.settings()
        token = f"{claim_token(context)}:update"
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=2)
        try:
            with self.open_source() as source:
                counts = CaseUpdater(hook, source, token, settings, transform=self.transform()).run().as_dict()
        except ServiceNowConfigurationError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            hook.close()
        self.log.info("updates of %s: %s", token, counts)
        if counts["still_pending"]:
            raise AirflowException(
                f"{counts['still_pending']} updates lost their answer and could not be checked (their error column "
                "says so); the retry or the next run checks each case and its journal before sending again"
            )
        return counts
