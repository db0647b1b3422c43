"""The load operator: the task's semantics (idempotency, retries, counts) around :class:`CaseLoader`."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from ticketsync.hooks.servicenow import ServiceNowConfigurationError, ServiceNowHook, ServiceNowRequestError
from ticketsync.loader import CaseLoader, LoadCounts, LoadSettings, ServiceNowUnavailable
from ticketsync.operators.base import claim_token
from ticketsync.operators.runinfo import LoadRunInfoOperator
from ticketsync.progress import duration
from ticketsync.source import Shard, SourceTable
from ticketsync.triggers.resume import ResumeLoadTrigger
from ticketsync.typed import flag, id_list, optional_positive


class ServiceNowLoadOperator(LoadRunInfoOperator):
    """Create one ServiceNow record per claimed, valid row of this run, or adopt the one that already exists.

    Built on :class:`~ticketsync.hooks.servicenow.ServiceNowHook` rather than ``HttpOperator``: one task sends
    thousands of requests over one pooled session, and owns the look-up-before-create that makes it idempotent.

    * 401, a refused OAuth token, a TLS certificate that fails verification, or a refused look-up (read ACL,
      unknown table), fails the task at once (:class:`AirflowFailException`:
      wrong credentials must not burn retries);
    * an instance that cannot be reached for a look-up, or rows still failing transiently after the in-task retry
      rounds, fail the task normally, so Airflow retries it; the retry takes the same rows, looks them up first, and
      never creates a second record;
    * returns the per-outcome counts (XCom carries counts, never bodies);
    * ``is_dry_run``: looks the rows a run would take up (GET only) and returns the plan; writes nothing (extract
      then plans a single loader, which plans the whole selection);
    * emits the event of the ServiceNow table with this loader's counts when some of its rows came to cases, and
      reports OpenLineage facets and the "ServiceNow records" extra link (:class:`LoadRunInfoOperator`).

    Scale-out: as a mapped task (``.partial(shard_count=N).expand(shard_index=[0, …, N-1])``) each of the N loaders
    takes only the rows of the run's claim with ``id % N = shard_index``, so the N task instances (on any workers)
    never take the same row, and a retry of loader ``i`` takes shard ``i`` again. Unmapped (``shard_index`` None),
    one loader takes the whole claim.

    Long waits: when the instance asks for a wait longer than ``defer_after_seconds`` (an hourly rate-limit window
    exhausted: ``Retry-After`` or ``X-RateLimit-Reset`` far away), the load stops taking work, lets the POSTs on the
    wire finish and writes them back, extends the lease of the rows it still holds past the wait, and defers to
    :class:`~ticketsync.triggers.resume.ResumeLoadTrigger`, freeing its worker. :meth:`execute_complete` resumes it
    with the same claim: every row still held is looked up first, then sent; counts add up over the legs.

    Pace: ``rate_limit`` (requests per second) overrides the connection's ``rate_limit`` extra; either is the total
    for the integration user, so each of the N loaders keeps to ``rate_limit / N``. ``max_in_flight`` is per
    loader: N loaders keep up to ``N * max_in_flight`` requests in flight.

    :param servicenow_conn_id: the ServiceNow connection (templated).
    :param chunk_size: rows looked up and sent per chunk (templated).
    :param max_in_flight: requests in flight at once for this loader (templated).
    :param max_attempts: attempts per row across runs before it is marked failed (templated).
    :param lease_seconds: how long each chunk the loader takes stays leased to it (templated).
    :param rate_limit: requests per second for the integration user in total; overrides the connection's
        ``rate_limit`` extra; None, empty or 0 means "use the connection's" (templated).
    :param retry_rounds: in-task rounds for rows that failed transiently.
    :param backoff_base: seconds of the first backoff between rounds (doubling, with jitter).
    :param is_dry_run: look up and plan only; write nothing (templated).
    :param limit: at most this many rows in a dry run (templated).
    :param request_ids: a dry run plans only these requests (templated).
    :param shard_index: this loader's shard, when mapped; None for the whole claim (templated).
    :param shard_count: the number of shards (templated).
    :param settle_seconds: on a retry after a dead try, wait this long since its POSTs before any look-up
        (templated).
    :param defer_after_seconds: a wait the instance asks for longer than this defers the task instead of sleeping
        in the worker; empty or 0: never defer (templated).
    :param progress_interval: seconds between progress lines in the task log (templated).
    """

    template_fields = (
        *LoadRunInfoOperator.template_fields,
        "servicenow_conn_id",
        "chunk_size",
        "max_in_flight",
        "max_attempts",
        "lease_seconds",
        "rate_limit",
        "is_dry_run",
        "limit",
        "request_ids",
        "shard_index",
        "shard_count",
        "settle_seconds",
        "defer_after_seconds",
        "progress_interval",
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
        is_dry_run: bool | str = False,
        limit: int | str = 10_000,
        request_ids: list[str] | str | None = None,
        shard_index: int | str | None = None,
        shard_count: int | str = 1,
        settle_seconds: float | str = 60.0,
        defer_after_seconds: float | str | None = 300.0,
        progress_interval: float | str = 15.0,
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
        self.is_dry_run = is_dry_run
        self.limit = limit  # read by a dry run only: a real load takes what extract claimed
        self.request_ids = request_ids
        self.shard_index = shard_index
        self.shard_count = shard_count
        self.settle_seconds = settle_seconds
        self.defer_after_seconds = defer_after_seconds
        self.progress_interval = progress_interval

    def shard(self) -> Shard | None:
        """This loader's share of the claim, or None for the whole of it (an unmapped load)."""
        index = self.shard_index
        if index is None or index in ("", "None"):
            return None
        return Shard(int(index), int(self.shard_count))

    def settings(self, connection_rate_limit: float | None = None) -> LoadSettings:
        """The loader's settings; the run's rate (this operator's, else the connection's) split between loaders."""
        shard = self.shard()
        total_rate = optional_positive(self.rate_limit, name="rate_limit") or connection_rate_limit
        return LoadSettings(
            chunk_size=int(self.chunk_size),
            max_in_flight=int(self.max_in_flight),
            max_attempts=int(self.max_attempts),
            lease_seconds=float(self.lease_seconds),
            rate_limit=total_rate / (shard.count if shard else 1) if total_rate else None,
            retry_rounds=self.retry_rounds,
            backoff_base=self.backoff_base,
            shard=shard,
            settle_seconds=float(self.settle_seconds),
            defer_after=optional_positive(self.defer_after_seconds, name="defer_after_seconds"),
            progress_interval=float(self.progress_interval),
        )

    def _settle_after_a_dead_try(self, context: Context, source: SourceTable, settings: LoadSettings) -> None:
        """On a retry, if the previous try died (worker killed, node lost) its POSTs may still be being written by
        the instance: wait until ``settle_seconds`` have passed since it could have sent them (the retry delay counts)
        before any look-up, or the look-up could miss a record and a second would be created."""
        if int(getattr(context["ti"], "try_number", 1) or 1) <= 1:
            return
        held = source.unreleased(claim_token(context), shard=settings.shard)
        delay = self.retry_delay.total_seconds() if isinstance(self.retry_delay, timedelta) else 0.0
        wait = settings.settle_seconds - delay
        if held and wait > 0:
            self.log.info("the previous try died holding %d rows; waiting %.0f s for its POSTs to settle", held, wait)
            time.sleep(wait)

    def execute(self, context: Context) -> dict[str, Any]:
        if flag(self.is_dry_run, name="is_dry_run"):
            return self.dry_run_load(context, id_list(self.request_ids, name="request_ids"))
        return self._load(context, None, 1)

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
        """The next leg of a deferred load: the same claim, its rows looked up first, the counts going on."""
        if not isinstance(event, dict) or not isinstance(event.get("counts"), dict):
            raise AirflowException(f"the load resumed without its counts (event {event!r}); the task retry redoes it")
        legs = int(event.get("legs") or 1) + 1
        self.log.info("resuming the load (leg %d) after the wait the instance asked for", legs)
        return self._load(context, LoadCounts(**event["counts"]), legs)

    def _load(self, context: Context, earlier: LoadCounts | None, legs: int) -> dict[str, Any]:
        token = claim_token(context)
        hook = ServiceNowHook(self.servicenow_conn_id, pool_size=int(self.max_in_flight))
        started, loader = datetime.now(UTC), None
        try:
            settings = self.settings(hook.rate_limit())
            self.log.info(
                "loading %s: %s, up to %d requests in flight, pace %s", token,
                f"shard {settings.shard.index} of {settings.shard.count}" if settings.shard else "the whole claim",
                settings.max_in_flight, f"{settings.rate_limit:g}/s" if settings.rate_limit else "unlimited",
            )
            with self.open_source() as source:
                if earlier is None:
                    self._settle_after_a_dead_try(context, source, settings)
                loader = CaseLoader(hook, source, token, settings, counts=earlier, transform=self.transform())
                counts = loader.run()
                summary = source.shard_summary(token, shard=settings.shard)
        except ServiceNowConfigurationError as exc:  # 401, refused OAuth token, failed TLS verification
            raise AirflowFailException(str(exc)) from exc
        except ServiceNowRequestError as exc:
            # Only a look-up raises this out of the loader (a refused POST fails its row, not the task): without
            # a trustworthy look-up nothing can be created safely, and retrying will not change the answer.
            raise AirflowFailException(
                f"the idempotency look-up was refused for every row, a probe look-up included: {exc}. This is "
                "about the instance or the connection, not one row: check the integration user's read access to "
                "the table and its correlation_id field; nothing is sent until a look-up succeeds"
            ) from exc
        except ServiceNowUnavailable as exc:
            raise AirflowException(f"ServiceNow unavailable; the task will be retried: {exc}") from exc
        finally:
            self.remember_load(context, hook, loader.counts.as_dict() if loader else None, started)
            hook.close()
        if loader.deferral is not None:
            deferral = loader.deferral
            moment = datetime.now(UTC) + timedelta(seconds=deferral.resume_in)
            self.log.info(
                "deferring the load of %s until %s (in %s; leg %d): %d rows keep their claim, counts so far %s",
                token, moment.isoformat(), duration(deferral.resume_in), legs, deferral.held, counts.as_dict(),
            )
            self.defer(
                trigger=ResumeLoadTrigger(moment=moment, counts=counts.as_dict(), legs=legs),
                method_name="execute_complete",
            )
        self.log.info("load of %s: %s", token, counts.as_dict())
        if counts.unwritable:
            raise AirflowException(
                f"the source database refused to store the outcome of {counts.unwritable} rows, even as failed (the "
                "task log names each row and the database's reason): fix the trigger or constraint on the source "
                "table; their next attempt looks each up first and adopts any case created, never duplicating it"
            )
        if counts.still_pending:
            raise AirflowException(
                f"{counts.still_pending} rows are still pending after transient errors (their error column says "
                "why); the task retry or the next run takes them again, looking each up before any new POST"
            )
        shard = settings.shard or Shard(0, 1)
        self.announce_cases(context, summary, (shard.index, shard.count))
        return counts.as_dict()

