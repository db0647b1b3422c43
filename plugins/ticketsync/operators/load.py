"""The load operator: the task's semantics (idempotency, retries, counts) around :class:`CaseLoader`."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ticketsync.hooks.servicenow import ServiceNowAuthError, ServiceNowHook, ServiceNowRequestError
from ticketsync.loader import CaseLoader, LoadSettings, ServiceNowUnavailable
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.source import SourceTable


class ServiceNowLoadOperator(SourceTaskOperator):
    """Create one ServiceNow record per claimed, valid row of this run, or adopt the one that already exists.

    Built on :class:`~ticketsync.hooks.servicenow.ServiceNowHook` rather than ``HttpOperator``: one task sends
    thousands of requests over one pooled session, and owns the look-up-before-create that makes it idempotent.

    * 401, or a refused look-up (read ACL, unknown table), fails the task at once (:class:`AirflowFailException`:
      wrong credentials must not burn retries);
    * an instance that cannot be reached for a look-up, or rows still failing transiently after the in-task retry
      rounds, fail the task normally, so Airflow retries it; the retry takes the same rows, looks them up first, and
      never creates a second record;
    * returns the per-outcome counts (XCom carries counts, never bodies).
    """

    template_fields = (
        *SourceTaskOperator.template_fields,
        "servicenow_conn_id",
        "chunk_size",
        "max_in_flight",
        "max_attempts",
        "lease_seconds",
        "rate_limit",
        "settle_seconds",
    )
    ui_color = "#e6f5e6"

    def __init__(
        self,
        *,
        servicenow_conn_id: str = ServiceNowHook.default_conn_name,
        chunk_size: int | str = 100,
        max_in_flight: int | str = 8,
        max_attempts: int | str = 5,
        lease_seconds: float | str = 900,
        rate_limit: float | str | None = None,
        retry_rounds: int = 3,
        backoff_base: float = 1.0,
        settle_seconds: float | str = 60.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.servicenow_conn_id = servicenow_conn_id
        self.chunk_size = chunk_size
        self.max_in_flight = max_in_flight
        self.max_attempts = max_attempts
        self.lease_seconds = lease_seconds
        self.rate_limit = rate_limit
        self.retry_rounds = retry_rounds
        self.backoff_base = backoff_base
        self.settle_seconds = settle_seconds

    def settings(self) -> LoadSettings:
        return LoadSettings(
            chunk_size=int(self.chunk_size),
            max_in_flight=int(self.max_in_flight),
            max_attempts=int(self.max_attempts),
            lease_seconds=float(self.lease_seconds),
            rate_limit=float(self.rate_limit) if self.rate_limit not in (None, "", "None", 0, "0") else None,
            retry_rounds=self.retry_rounds,
            backoff_base=self.backoff_base,
            settle_seconds=float(self.settle_seconds),
        )

    def _settle_after_a_dead_try(self, context: Context, source: SourceTable, settings: LoadSettings) -> None:
        """On a retry, if the previous try died (worker killed, node lost) its POSTs may still be being written by
        the instance: wait until ``settle_seconds`` have passed since it could have sent them (the retry delay counts)
        before any look-up, or the look-up could miss a record and a second would be created."""
        if int(getattr(context["ti"], "try_number", 1) or 1) <= 1:
            return
        held = source.unreleased(claim_token(context))
        delay = self.retry_delay.total_seconds() if isinstance(self.retry_delay, timedelta) else 0.0
        wait = settings.settle_seconds - delay
        if held and wait > 0:
            self.log.info("the previous try died holding %d rows; waiting %.0f s for its POSTs to settle", held, wait)
            time.sleep(wait)

    def execute(self, context: Context) -> dict[str, int]:
        settings = self.settings()
        token = claim_token(context)
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=settings.max_in_flight)
        try:
            with self.open_source() as source:
                self._settle_after_a_dead_try(context, source, settings)
                counts = CaseLoader(hook, source, token, settings).run()
        except ServiceNowAuthError as exc:
            raise AirflowFailException(str(exc)) from exc
        except ServiceNowRequestError as exc:
            # Only a look-up raises this out of the loader (a refused POST fails its row, not the task): without
            # a trustworthy look-up nothing can be created safely, and retrying will not change the answer.
            raise AirflowFailException(f"the idempotency look-up was refused: {exc}") from exc
        except ServiceNowUnavailable as exc:
            raise AirflowException(f"ServiceNow unavailable; the task will be retried: {exc}") from exc
        finally:
            hook.close()
        self.log.info("load of %s: %s", token, counts.as_dict())
        if counts.still_pending:
            raise AirflowException(
                f"{counts.still_pending} rows are still pending after transient errors (their error column says "
                "why); the task retry or the next run takes them again, looking each up before any new POST"
            )
        return counts.as_dict()
