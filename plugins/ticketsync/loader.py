"""The load: claimed rows become ServiceNow records, exactly once, and every outcome is written back.

For each chunk of rows the token holds (lease renewed as it is read):

1. transform each row (pure); a row that fails is written back ``rejected`` and never sent;
2. look every correlation id of the chunk up in one ``correlation_idIN…`` query, and adopt a record that already
   exists (a retry, a rerun, a POST whose answer was lost) instead of creating another;
3. POST the rest, up to ``max_in_flight`` at once, paced by the shared :class:`~ticketsync.throttle.Throttle`;
4. write outcomes back in small batches as they arrive, so a crash loses at most the rows in flight, and those are
   found again by step 2 of the next attempt.

A 429 is retried in place (nothing was done). Any other transient failure (5xx, timeout, cut connection, a 200
that is not JSON, a 201 without sys_id) may have created the record, so the row goes to a retry round that starts
with the look-up again. Rows still failing after the rounds stay ``pending`` with the error and their attempt
count; once a row has used ``max_attempts`` it becomes ``failed``, but only after a look-up confirmed that no
record exists. A POST that timed out may still be committed by the instance after the client gave up: its retry
round waits until ``settle_seconds`` (ServiceNow's transaction quota) have passed since it was sent before the
look-up. A POST still refused with 429 after ``max_rate_limited_waits`` waits stays ``pending`` without using
an attempt (nothing was done), so a rate-limit storm, however long, never makes a row ``failed``.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Protocol, TypeVar

from ticketsync.hooks.servicenow import (
    CreatedRecord,
    ExistingRecord,
    ServiceNowConfigurationError,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTimeout,
    ServiceNowTransientError,
)
from ticketsync.models import PreparedCase, Rejection, SourceRow, SyncAction, SyncStatus
from ticketsync.references import ReferenceResolver
from ticketsync.source import Outcome, Shard, SourceTable
from ticketsync.throttle import Throttle, backoff_delay
from ticketsync.transform import prepare

log = logging.getLogger(__name__)


class TableClient(Protocol):
    """What the loader needs from the hook (the real one is :class:`~ticketsync.hooks.servicenow.ServiceNowHook`)."""

    def create_record(self, table: str, body: dict[str, str]) -> CreatedRecord: ...
    def find_by_correlation(self, table: str, correlation_ids: Sequence[str]) -> dict[str, list[ExistingRecord]]: ...
    def find_by_keys(self, table: str, key_field: str, keys: Sequence[str]) -> dict[str, list[str]]: ...


_T = TypeVar("_T")


class ServiceNowUnavailable(Exception):
    """The instance could not be reached for a look-up after the bounded retries; the task should be retried."""


@dataclass(frozen=True)
class LoadSettings:
    chunk_size: int = 100
    max_in_flight: int = 8
    max_attempts: int = 5
    retry_rounds: int = 3
    lease_seconds: float = 900.0
    rate_limit: float | None = None
    backoff_base: float = 1.0
    backoff_cap: float = 30.0
    max_rate_limited_waits: int = 30
    flush_every: int = 50
    flush_interval: float = 0.5
    shard: Shard | None = None  # one of several loaders of the claim: only its rows (see SourceTable)
    # How long the instance may go on with a POST after the client stopped waiting (ServiceNow cancels a Table API
    # transaction after 60 s by default). A row whose POST timed out is looked up again only once that long has
    # passed since it was sent: an earlier look-up could miss a record still being written, and create a second.
    settle_seconds: float = 60.0

    def __post_init__(self) -> None:
        for name in ("chunk_size", "max_in_flight", "max_attempts", "max_rate_limited_waits"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class LoadCounts:
    """Per-outcome tallies of one load; what goes to XCom."""

    taken: int = 0
    created: int = 0
    adopted: int = 0
    rejected: int = 0
    failed: int = 0
    retried: int = 0
    still_pending: int = 0
    posts: int = 0
    lookups: int = 0
    reference_lookups: int = 0
    rate_limited: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Posted:
    """What a worker thread reports back for one POST."""

    case: PreparedCase
    row: SourceRow
    record: CreatedRecord | None = None
    error: ServiceNowRequestError | ServiceNowTransientError | None = None
    sent_at: float = 0.0  # time.monotonic() when the last POST went out


class CaseLoader:
    """One load of one claim token. Not thread-safe itself: only its worker pool runs in parallel."""

    def __init__(
        self,
        client: TableClient,
        source: SourceTable,
        token: str,
        settings: LoadSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.source = source
        self.token = token
        self.settings = settings
        self.counts = LoadCounts()
        self.throttle = Throttle(settings.max_in_flight, rate_per_second=settings.rate_limit)
        self._sleep = sleep
        self._buffer: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._in_flight: dict[Future[_Posted], PreparedCase] = {}
        # Finished (or cancelled) POSTs, in the order they finished: one queue instead of waiting on every future.
        self._done: queue.SimpleQueue[Future[_Posted]] = queue.SimpleQueue()
        self._retry_ids: list[int] = []
        self._auth_error: ServiceNowConfigurationError | None = None
        self._writer: _OutcomeWriter | None = None
        self._settle_until = 0.0  # no retry round looks up before this (time.monotonic())
        self.references = ReferenceResolver(self._find_keys)

    # ----------------------------------------------------------------------------------------------------------
    # the run
    # ----------------------------------------------------------------------------------------------------------

    def run(self) -> LoadCounts:
        pool = ThreadPoolExecutor(max_workers=self.settings.max_in_flight, thread_name_prefix="servicenow-post")
        self._writer = _OutcomeWriter(self.source.clone(), self.token)
        try:
            self._first_pass(pool)
            self._retry_rounds(pool)
        except BaseException as exc:
            self._finish(pool, failing=exc)
            if isinstance(exc, Exception):
                self._settle()
            raise
        self._finish(pool, failing=None)
        if self._auth_error is not None:
            raise self._auth_error
        self.counts.still_pending = len(self._retry_ids)
        if self._retry_ids:
            self._settle()
        return self.counts

    def _settle(self) -> None:
        """The next attempt must not look up a row whose timed-out POST the instance may still be writing."""
        settle = self._settle_until - time.monotonic()
        if settle > 0:
            log.info("waiting %.1f s for timed-out POSTs to settle before handing rows to the next attempt", settle)
            self._sleep(settle)

    def _finish(self, pool: ThreadPoolExecutor, *, failing: BaseException | None) -> None:
        """Harvest what is in flight, write it back, end the leases. Every step runs even if one before it failed.

        When the load is already failing (``failing``), an error here (the source database is still gone, say) is
        logged and the original error propagates, so the task log shows the cause, not its echo. Otherwise the first
        error is raised once every step has run. Either way, rows not written back stay ``pending`` under this
        token and are looked up before any POST by the next attempt.
        """
        first: Exception | None = None
        if failing is not None:
            for future in self._in_flight:
                future.cancel()  # POSTs not started yet: their outcome could not be written back
        writer = self._writer
        steps: tuple[Callable[[], object], ...] = (
            lambda: self._drain(cancel=True),
            self._flush,
            # also when the write-back failed: stop sending, stop the writer, free the leases
            lambda: pool.shutdown(wait=True, cancel_futures=True),
            writer.close if writer is not None else lambda: None,
            lambda: self.source.release(self.token, shard=self.settings.shard),
        )
        for step in steps:
            try:
                step()
            except Exception as exc:
                if failing is None and first is None:
                    first = exc
                else:
                    log.error("clean-up after %r failed too", failing or first, exc_info=True)
        self.counts.rate_limited = self.throttle.rate_limited_count
        if first is not None:
            raise first

    def _first_pass(self, pool: ThreadPoolExecutor) -> None:
        after = 0
        while self._auth_error is None:
            # Keep one chunk queued behind the one being sent, so the pool never waits for the look-up.
            self._wait_until(max_queued=self.settings.chunk_size)
            rows = self.source.take_chunk(
                self.token, after=after, size=self.settings.chunk_size, lease_seconds=self.settings.lease_seconds,
                shard=self.settings.shard,
            )
            if not rows:
                return
            after = rows[-1].id
            self.counts.taken += len(rows)
            self._submit_chunk(pool, rows)

    def _retry_rounds(self, pool: ThreadPoolExecutor) -> None:
        for round_number in range(1, self.settings.retry_rounds + 1):
            self._drain(cancel=False)
            if not self._retry_ids or self._auth_error is not None:
                return
            delay = backoff_delay(round_number, base=self.settings.backoff_base, cap=self.settings.backoff_cap)
            delay = max(delay, self._settle_until - time.monotonic())
            log.info("retry round %d for %d rows in %.1f s", round_number, len(self._retry_ids), delay)
            self._flush()
            self._sleep(delay)
            ids, self._retry_ids = self._retry_ids, []
            self.counts.retried += len(ids)
            for start in range(0, len(ids), self.settings.chunk_size):
                part = ids[start : start + self.settings.chunk_size]
                rows = self.source.take_rows(
                    self.token, part, lease_seconds=self.settings.lease_seconds, shard=self.settings.shard
                )
                self._submit_chunk(pool, rows)
                self._wait_until(max_queued=self.settings.chunk_size)
        self._drain(cancel=False)

    # ----------------------------------------------------------------------------------------------------------
    # one chunk: transform, look up, adopt or send
    # ----------------------------------------------------------------------------------------------------------

    def _submit_chunk(self, pool: ThreadPoolExecutor, rows: list[SourceRow]) -> None:
        by_table: dict[str, list[tuple[PreparedCase, SourceRow]]] = {}
        for row in rows:
            prepared = prepare(row)
            if isinstance(prepared, Rejection):
                self._reject(prepared)
            else:
                by_table.setdefault(prepared.table, []).append((prepared, row))
        for table, cases in by_table.items():
            existing = self._lookup(table, [case.correlation_id for case, _ in cases])
            to_send = [(case, row) for case, row in cases if self._adopted_or_failed(case, row, existing)]
            resolved = self.references.resolve([case for case, _ in to_send])
            self.counts.reference_lookups = self.references.lookups
            for result, (_, row) in zip(resolved, to_send, strict=True):
                if isinstance(result, Rejection):
                    self._reject(result)
                else:
                    future = pool.submit(self._post, result, row)
                    self._in_flight[future] = result
                    future.add_done_callback(self._done.put)

    def _reject(self, rejection: Rejection) -> None:
        self._record(Outcome(rejection.row_id, SyncStatus.REJECTED, error=rejection.reason))
        self.counts.rejected += 1

    def _adopted_or_failed(
        self, case: PreparedCase, row: SourceRow, existing: dict[str, list[ExistingRecord]]
    ) -> bool:
        """Adopt the row's existing record, or fail a row out of attempts; True when the row is still to be sent
        (its business keys are resolved only then: a row with a record needs no look-up of its keys)."""
        found = existing.get(case.correlation_id)
        if found:
            self._record(_adopted(row, found))
            self.counts.adopted += 1
        elif row.attempts >= self.settings.max_attempts:
            error = f"gave up after {row.attempts} attempts (no record found); last error: {row.error or 'unknown'}"
            self._record(Outcome(row.id, SyncStatus.FAILED, error=error[:4000]))
            self.counts.failed += 1
        else:
            return True
        return False

    def _lookup(self, table: str, correlation_ids: list[str]) -> dict[str, list[ExistingRecord]]:
        """One batched look-up by correlation id, retried (see :meth:`_with_retries`)."""
        self.counts.lookups += 1
        return self._with_retries(
            f"look up existing records in {table}", lambda: self.client.find_by_correlation(table, correlation_ids)
        )

    def _find_keys(self, table: str, key_field: str, keys: list[str]) -> dict[str, list[str]]:
        """One batched business-key look-up, retried (see :meth:`_with_retries`)."""
        return self._with_retries(
            f"look up {key_field} in {table}", lambda: self.client.find_by_keys(table, key_field, keys)
        )

    def _with_retries(self, what: str, call: Callable[[], _T]) -> _T:
        """One look-up, retried with backoff; after that the instance counts as unavailable (the rows stay
        pending, never rejected: nothing about them is known)."""
        failures, last_error = 0, ""
        for _ in range(self.settings.max_rate_limited_waits + self.settings.retry_rounds + 1):
            try:
                with self.throttle.slot():
                    found = call()
                self.throttle.succeeded()
                return found
            except ServiceNowRateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, exc.limit_per_hour)
            except ServiceNowTransientError as exc:
                failures, last_error = failures + 1, str(exc)
                if failures > self.settings.retry_rounds:
                    break
                self._sleep(backoff_delay(failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap))
        raise ServiceNowUnavailable(f"could not {what} after {failures} failures: {last_error}")

    def _post(self, case: PreparedCase, row: SourceRow) -> _Posted:
        """Runs on a worker thread: one POST, repeated only after a 429 (which did nothing)."""
        sent_at = time.monotonic()
        for _ in range(self.settings.max_rate_limited_waits):
            try:
                with self.throttle.slot():
                    sent_at = time.monotonic()
                    record = self.client.create_record(case.table, case.body.to_json())
                self.throttle.succeeded()
                return _Posted(case, row, record=record)
            except ServiceNowRateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, exc.limit_per_hour)
                last: ServiceNowTransientError = exc
            except (ServiceNowRequestError, ServiceNowTransientError) as exc:
                return _Posted(case, row, error=exc, sent_at=sent_at)
        return _Posted(case, row, error=last)

    # ----------------------------------------------------------------------------------------------------------
    # results and write-back
    # ----------------------------------------------------------------------------------------------------------

    def _wait_until(self, *, max_queued: int) -> None:
        """Harvest finished POSTs until at most ``max_queued`` are still queued or running."""
        while len(self._in_flight) > max_queued:
            try:
                future = self._done.get(timeout=self.settings.flush_interval)
            except queue.Empty:
                self._flush_if_due()
                continue
            self._harvest(future)
            while True:  # everything else that finished meanwhile, without blocking
                try:
                    self._harvest(self._done.get_nowait())
                except queue.Empty:
                    break
            self._flush_if_due()

    def _drain(self, *, cancel: bool) -> None:
        if cancel and self._auth_error is not None:
            for future in self._in_flight:
                future.cancel()
        self._wait_until(max_queued=0)

    def _harvest(self, future: Future[_Posted]) -> None:
        self._in_flight.pop(future)
        if future.cancelled():
            return
        try:
            posted = future.result()
        except ServiceNowConfigurationError as exc:  # 401 or a bad TLS certificate: stop, retrying cannot help
            self._auth_error = exc
            return
        self.counts.posts += 1
        self._record(self._outcome(posted))

    def _outcome(self, posted: _Posted) -> Outcome:
        row, error = posted.row, posted.error
        if posted.record is not None:
            self.counts.created += 1
            return Outcome(
                row.id, SyncStatus.CREATED, sys_id=posted.record.sys_id, number=posted.record.number,
                attempts_made=1, http_status=201, action=SyncAction.CREATED, resolved=_resolved(posted.case),
            )
        if isinstance(error, ServiceNowRequestError):
            self.counts.failed += 1
            return Outcome(
                row.id, SyncStatus.FAILED, error=str(error)[:4000], attempts_made=1, http_status=error.status,
                resolved=_resolved(posted.case),
            )
        self._retry_ids.append(row.id)
        attempt = row.attempts + 1
        if isinstance(error, ServiceNowTimeout):
            self._settle_until = max(self._settle_until, posted.sent_at + self.settings.settle_seconds)
        if isinstance(error, ServiceNowRateLimited):
            # Refused before anything was done: it does not use up one of the row's max_attempts, so a long
            # 429 storm leaves rows pending (retried later), never failed.
            text = f"rate limited before attempt {attempt}: {error} (nothing was created; will retry)"
            return Outcome(row.id, SyncStatus.PENDING, error=text[:4000], attempts_made=0, http_status=429)
        text = f"attempt {attempt}: {error} (will retry)"
        # The POST may have been committed: keep what it sent, so a later adoption of that record shows it too.
        return Outcome(row.id, SyncStatus.PENDING, error=text[:4000], attempts_made=1,
                       http_status=error.status if error else None, resolved=_resolved(posted.case))

    def _record(self, outcome: Outcome) -> None:
        self._buffer.append(outcome)
        self._flush_if_due()

    def _flush_if_due(self) -> None:
        overdue = time.monotonic() - self._last_flush >= self.settings.flush_interval
        if len(self._buffer) >= self.settings.flush_every or (self._buffer and overdue):
            self._flush(wait=False)

    def _flush(self, *, wait: bool = True) -> None:
        """Hand the buffered outcomes to the writer; with ``wait``, return once everything handed over is written."""
        if self._writer is None:  # not running: write on this thread
            if self._buffer:
                self.source.write_outcomes(self.token, self._buffer)
        else:
            if self._buffer:
                self._writer.submit(self._buffer)
            if wait:
                self._writer.wait()
        self._buffer = []
        self._last_flush = time.monotonic()


class _OutcomeWriter:
    """Writes batches of outcomes on its own thread and database connection, in the order they were handed over.

    The main thread hands a batch over and goes back to taking, looking up and harvesting, instead of waiting for
    the database while the requests in flight finish. A few batches may wait (then ``submit`` blocks); ``wait``
    returns once every batch handed over is committed. A failed write is raised by the next ``submit`` or ``wait``,
    and nothing is written after it.
    """

    def __init__(self, source: SourceTable, token: str, depth: int = 4) -> None:
        self._source = source
        self._token = token
        self._queue: queue.Queue[list[Outcome] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="outcome-writer", daemon=True)
        self._thread.start()

    def submit(self, outcomes: list[Outcome]) -> None:
        self._raise_error()
        self._queue.put(outcomes)

    def wait(self) -> None:
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Write what was handed over, stop the thread, close its connection; raise a failed write."""
        self._queue.put(None)
        self._thread.join()
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while True:
            outcomes = self._queue.get()
            try:
                if outcomes is None:
                    self._source.close()  # on this thread: an SQLite connection belongs to the thread that made it
                    return
                if self._error is None:
                    self._source.write_outcomes(self._token, outcomes)
            except BaseException as exc:  # handed to the main thread, which raises it
                self._error = exc
            finally:
                self._queue.task_done()


def _resolved(case: PreparedCase) -> str | None:
    """The sys_ids the row's business keys resolved to, as written back (``resolved_references``)."""
    return json.dumps(dict(case.resolved), sort_keys=True) if case.resolved else None


def _adopted(row: SourceRow, found: list[ExistingRecord]) -> Outcome:
    """Adopt the oldest record with this correlation id; name any others, which a person must resolve."""
    oldest = found[0]
    note = None
    if len(found) > 1:
        others = ", ".join(record.number or record.sys_id for record in found[1:])
        note = f"{len(found)} records share correlation_id {oldest.correlation_id}; adopted the oldest, also: {others}"
    return Outcome(
        row.id, SyncStatus.CREATED, sys_id=oldest.sys_id, number=oldest.number, error=note,
        http_status=200, action=SyncAction.ADOPTED,
    )
