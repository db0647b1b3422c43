"""The load: claimed rows become ServiceNow records, exactly once, and every outcome is written back.

For each chunk of rows the token holds (lease renewed as it is read):

1. transform each row (pure); a row that fails is written back ``rejected`` and never sent;
2. look every correlation id of the chunk up in one ``correlation_idIN…`` query, and adopt a record that already
   exists (a retry, a rerun, a POST whose answer was lost) instead of creating another;
3. POST the rest, up to ``max_in_flight`` at once, paced by the shared :class:`~ticketsync.throttle.Throttle`;
4. write outcomes back in small batches as they arrive, so a crash loses at most the rows in flight, and those are
   found again by step 2 of the next attempt.

Correlation ids are compared as the instance compares them, without regard to case (:mod:`ticketsync.correlation`):
a request whose id matches another request's case only by case, or an earlier pending row's id, is rejected naming
it. A failure caused by one row's data ends in that row: a chunk look-up that keeps failing is split until the row
that makes it fail is found (only a failing probe look-up, which names no row, stops the load); a POST answer whose
record carries another correlation id fails the row; a text field the instance shortened is noted on the row; an
outcome the source database refuses to store is written row by row, and a refused row is marked ``failed`` with
the database's reason (or, if even that is refused, keeps its lease ended and is named in the load's error).

A 429 is retried in place (nothing was done). Any other transient failure (5xx, timeout, cut connection, a 200
that is not JSON, a 201 without sys_id) may have created the record, so the row goes to a retry round that starts
with the look-up again. Rows still failing after the rounds stay ``pending`` with the error and their attempt
count; once a row has used ``max_attempts`` it becomes ``failed``, but only after a look-up confirmed that no
record exists. A POST that timed out, lost its connection or got a gateway's 502 / 504 may still be committed by
the instance after the client gave up (:func:`~ticketsync.hooks.servicenow.errors.in_doubt`): that row is looked
up again only once ``settle_seconds`` (ServiceNow's transaction quota) have passed since it was sent; the other rows
of its retry round go ahead without waiting for it. A POST still refused with 429 after
``max_rate_limited_waits`` waits stays ``pending`` without using an attempt (nothing was done), so a rate-limit
storm, however long, never makes a row ``failed``.

The window stays full: the next chunk is taken and looked up while at least two windows of POSTs are still queued
or in flight, so neither a chunk boundary nor a look-up drains it.

A 429 asking for a wait longer than ``defer_after`` (an hourly window exhausted) is not slept through: no request
starts after it, the POSTs already on the wire finish and are written back, the rows still held keep their claim
under a lease that outlasts the wait, and :meth:`CaseLoader.run` returns with :attr:`CaseLoader.deferral` set, so
the task can free its worker and resume later with a new loader (docs/adr/0018).
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

from ticketsync.correlation import (
    ECHO_FIELDS,
    CaseTwins,
    Matches,
    SourceTwin,
    by_case_reason,
    echo_problem,
    match,
    twin_reason,
)
from ticketsync.hooks.servicenow import (
    CreatedRecord,
    ExistingRecord,
    ServiceNowConfigurationError,
    ServiceNowError,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTransientError,
    in_doubt,
)
from ticketsync.models import FieldError, PreparedCase, Rejection, SourceRow, SyncAction, SyncStatus
from ticketsync.progress import ProgressReporter, ProgressSnapshot, duration
from ticketsync.references import ReferenceResolver
from ticketsync.source import Outcome, Shard, SourceTable, is_row_refusal, refusal_text
from ticketsync.throttle import LongWait, Throttle, backoff_delay
from ticketsync.transform import prepare
from ticketsync.updates import created_snapshot

log = logging.getLogger(__name__)


class TableClient(Protocol):
    """What the loader needs from the hook (the real one is :class:`~ticketsync.hooks.servicenow.ServiceNowHook`)."""

    def create_record(self, table: str, body: dict[str, str], echo: Sequence[str] = ()) -> CreatedRecord: ...
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
    progress_interval: float = 15.0  # seconds between progress lines in the task log
    # A 429 asking for a longer wait than this (seconds) makes the load stop and defer instead of sleeping; None:
    # always wait in the task.
    defer_after: float | None = None

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
    unwritable: int = 0  # rows whose outcome the source database refused to store, even as failed

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Deferral:
    """Why and for how long a load stopped instead of waiting: resume it ``resume_in`` seconds from now.

    :param resume_in: seconds from now until the instance takes requests again (and every timed-out POST settled).
    :param held: rows the load still holds pending, their lease extended past the resume.
    :param lease_seconds: how long from now those leases run.
    """

    resume_in: float
    held: int
    lease_seconds: float


@dataclass(frozen=True)
class _Posted:
    """What a worker thread reports back for one POST."""

    case: PreparedCase
    row: SourceRow
    record: CreatedRecord | None = None
    error: ServiceNowRequestError | ServiceNowTransientError | None = None
    sent_at: float = 0.0  # time.monotonic() when the last POST went out
    held: bool = False  # not sent (again): the load is deferring


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
        counts: LoadCounts | None = None,
        transform: Callable[[SourceRow], PreparedCase | Rejection] = prepare,
    ) -> None:
        """:param counts: the counts of the load's earlier legs, when it resumes after a deferral (they go on)."""
        self.client = client
        self._transform = transform
        self.source = source
        self.token = token
        self.settings = settings
        self.counts = LoadCounts(**counts.as_dict()) if counts else LoadCounts()
        self._earlier = LoadCounts(**self.counts.as_dict())
        self.deferral: Deferral | None = None  # set by run() when the load stopped to defer
        self.throttle = Throttle(
            settings.max_in_flight, rate_per_second=settings.rate_limit, defer_after=settings.defer_after
        )
        self._sleep = sleep
        self._buffer: list[Outcome] = []
        self._last_flush = time.monotonic()
        self._in_flight: dict[Future[_Posted], PreparedCase] = {}
        # Finished (or cancelled) POSTs, in the order they finished: one queue instead of waiting on every future.
        self._done: queue.SimpleQueue[Future[_Posted]] = queue.SimpleQueue()
        self._retry_ids: list[int] = []
        self._retry_ready: dict[int, float] = {}  # row id -> when it may be looked up again (time.monotonic())
        self._auth_error: ServiceNowConfigurationError | None = None
        self._writer: _OutcomeWriter | None = None
        self._settle_until = 0.0  # no retry round looks up before this (time.monotonic())
        self._claimed = 0  # rows this loader's token (shard) held pending when the load started
        self._twins = CaseTwins(())
        self.references = ReferenceResolver(self._find_keys)

    # ----------------------------------------------------------------------------------------------------------
    # the run
    # ----------------------------------------------------------------------------------------------------------

    def run(self) -> LoadCounts:
        """Load the token's rows; returns the counts (with those of earlier legs). When the instance asked for a
        wait longer than ``defer_after``, the load stops at a safe point instead and sets :attr:`deferral`."""
        earlier = self._earlier
        self._claimed = self.source.held(self.token, shard=self.settings.shard) + (
            earlier.created + earlier.adopted + earlier.rejected + earlier.failed
        )
        progress = ProgressReporter(self.progress, interval=self.settings.progress_interval)
        pool = ThreadPoolExecutor(max_workers=self.settings.max_in_flight, thread_name_prefix="servicenow-post")
        self._writer = _OutcomeWriter(self.source.clone(), self.token)
        progress.start()
        try:
            try:
                self._twins = CaseTwins(SourceTwin(*twin) for twin in self.source.case_twins())
                self._first_pass(pool)
                self._retry_rounds(pool)
            except LongWait:
                self._stop_sending()
            except BaseException as exc:
                self._finish(pool, failing=exc)
                if isinstance(exc, Exception):
                    self._settle()
                raise
            self._finish(pool, failing=self._auth_error)
        finally:
            progress.stop(deferred=self.deferral is not None)
        if self._auth_error is not None:
            raise self._auth_error
        if self.deferral is not None:
            return self.counts
        self.counts.still_pending = len(self._retry_ids)
        if self._retry_ids:
            self._settle()
        return self.counts

    def _stop_sending(self) -> None:
        """A long wait: POSTs not started yet are dropped (their rows stay pending, untouched); those on the wire
        finish, and :meth:`_finish` harvests and writes them back before anything else happens."""
        for future in self._in_flight:
            future.cancel()

    def progress(self) -> ProgressSnapshot:
        """The load's counts and pacing now (read from another thread: a progress line, not a decision)."""
        counts, throttle = self.counts, self.throttle
        return ProgressSnapshot(
            claimed=self._claimed, created=counts.created, adopted=counts.adopted, rejected=counts.rejected,
            failed=counts.failed, in_flight=throttle.in_flight, pace=throttle.pace,
            configured_rate=self.settings.rate_limit, limit_per_hour=throttle.limit_per_hour,
            paused_for=throttle.paused_for(),
        )

    def _settle(self) -> None:
        """The next attempt must not look up a row whose timed-out POST the instance may still be writing."""
        settle = self._settle_until - time.monotonic()
        if settle > 0:
            log.info("waiting %.1f s for timed-out POSTs to settle before handing rows to the next attempt", settle)
            self._sleep(settle)

    def _finish(self, pool: ThreadPoolExecutor, *, failing: BaseException | None) -> None:
        """Harvest what is in flight, write it back, end the leases (or, when the instance asked for a long wait,
        extend them past it: see :meth:`_end_leases`). Every step runs even if one before it failed.

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
            lambda: self._note_held_back(failing),
            lambda: self._end_leases(failing),
        )
        for step in steps:
            try:
                step()
            except Exception as exc:
                if failing is None and first is None:
                    first = exc
                else:
                    log.error("clean-up after %r failed too", failing or first, exc_info=True)
        self.counts.rate_limited = self._earlier.rate_limited + self.throttle.rate_limited_count
        if writer is not None:
            self._count_refused(writer)
        if first is not None:
            raise first

    def _end_leases(self, failing: BaseException | None) -> None:
        """Release the rows still held; or, when the instance asked for a wait longer than ``defer_after`` and the
        load is not failing, keep them leased past the wait (its end, every timed-out POST settled, then a whole
        lease) and set :attr:`deferral`, so no other run takes them before the next leg of this load."""
        wait = self.throttle.long_wait()
        if wait is None or failing is not None or self._auth_error is not None:
            self.source.release(self.token, shard=self.settings.shard)
            return
        resume_in = max(wait, self._settle_until - time.monotonic(), 0.0) + 1.0  # the window has surely reset
        keep_for = resume_in + self.settings.lease_seconds
        held = self.source.extend_lease(self.token, keep_for, shard=self.settings.shard)
        if not held:
            return  # nothing left to do: no reason to come back
        self.deferral = Deferral(resume_in=resume_in, held=held, lease_seconds=keep_for)
        # Only the rows this leg finished count as taken: those still held are taken (and counted) by the next leg.
        counts, earlier = self.counts, self._earlier
        finished = sum(getattr(counts, name) - getattr(earlier, name)
                       for name in ("created", "adopted", "rejected", "failed"))
        counts.taken = earlier.taken + finished
        log.info(
            "the instance asked for a wait of %s: stopping here to defer (no POST was cut short); %d rows keep "
            "their claim, leased for %s", duration(resume_in), held, duration(keep_for),
        )

    @property
    def _queue_depth(self) -> int:
        """POSTs kept queued or in flight while the next chunk is taken and looked up: the pool never waits for the
        look-up, and a chunk smaller than the window does not drain it."""
        return max(self.settings.chunk_size, 2 * self.settings.max_in_flight)

    def _note_held_back(self, failing: BaseException | None) -> None:
        """Rows this load stopped before handling say so in their ``error`` (those with an error keep theirs)."""
        if failing is None:
            return
        reason = " ".join(str(failing).split())[:600] or type(failing).__name__
        note = (
            f"held back: not sent, because the load stopped on an error that is not this row's ({reason}); it "
            "stays pending and is looked up, then sent, by the next attempt once that is fixed"
        )
        self.source.note_held_back(self.token, note, shard=self.settings.shard)

    def _count_refused(self, writer: _OutcomeWriter) -> None:
        """Move rows whose outcome the source database refused from the count of that outcome to failed or
        unwritable (each is counted once, whatever happened to it)."""
        counters = {
            (SyncStatus.CREATED, SyncAction.CREATED): "created", (SyncStatus.CREATED, SyncAction.ADOPTED): "adopted",
            (SyncStatus.REJECTED, None): "rejected", (SyncStatus.FAILED, None): "failed",
        }
        for outcome, marked in writer.take_refused():
            name = counters.get((outcome.status, SyncAction(outcome.action) if outcome.action else None))
            if name is None:  # a pending outcome: the row is pending anyway
                if not marked:
                    self.counts.unwritable += 1
                continue
            setattr(self.counts, name, getattr(self.counts, name) - 1)
            if marked:
                self.counts.failed += 1
            else:
                self.counts.unwritable += 1

    def _first_pass(self, pool: ThreadPoolExecutor) -> None:
        after = 0
        while self._auth_error is None:
            self._wait_until(max_queued=self._queue_depth)
            self._check_long_wait()
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
            self._check_long_wait()
            ids, self._retry_ids = self._retry_ids, []
            ready_at = {row_id: self._retry_ready.pop(row_id, 0.0) for row_id in ids}
            delay = backoff_delay(round_number, base=self.settings.backoff_base, cap=self.settings.backoff_cap)
            settling = sum(when > time.monotonic() + delay for when in ready_at.values())
            log.info(
                "retry round %d for %d rows in %.1f s%s", round_number, len(ids), delay,
                f" ({settling} of them once their timed-out POST settled)" if settling else "",
            )
            self._flush()
            self._sleep(delay)
            self.counts.retried += len(ids)
            for ready, wave in _waves(ready_at, time.monotonic()):
                self._wait_for(ready)  # rows whose timed-out POST the instance may still be writing
                self._check_long_wait()
                for start in range(0, len(wave), self.settings.chunk_size):
                    part = wave[start : start + self.settings.chunk_size]
                    rows = self.source.take_rows(
                        self.token, part, lease_seconds=self.settings.lease_seconds, shard=self.settings.shard
                    )
                    self._submit_chunk(pool, rows)
                    self._wait_until(max_queued=self._queue_depth)
        self._drain(cancel=False)

    def _check_long_wait(self) -> None:
        """Stop taking work once the instance asked for a wait longer than ``defer_after``."""
        wait = self.throttle.long_wait()
        if wait is not None:
            raise LongWait(wait)

    def _wait_for(self, moment: float) -> None:
        """Until ``moment`` (time.monotonic()): harvest the POSTs in flight meanwhile, then sleep the rest."""
        while self._in_flight and time.monotonic() < moment:
            try:
                future = self._done.get(timeout=max(0.0, min(self.settings.flush_interval, moment - time.monotonic())))
            except queue.Empty:
                self._flush_if_due()
                continue
            self._harvest(future)
            self._flush_if_due()
        remaining = moment - time.monotonic()
        if remaining > 0:
            self._flush()
            self._sleep(remaining)

    # ----------------------------------------------------------------------------------------------------------
    # one chunk: transform, look up, adopt or send
    # ----------------------------------------------------------------------------------------------------------

    def _submit_chunk(self, pool: ThreadPoolExecutor, rows: list[SourceRow]) -> None:
        by_table: dict[str, list[tuple[PreparedCase, SourceRow]]] = {}
        for row in rows:
            prepared = _prepare(row, self._transform)
            if isinstance(prepared, PreparedCase) and self._twins:
                earlier = self._twins.earlier_pending(row.id, prepared.correlation_id)
                if earlier is not None:
                    self._reject(row, twin_reason(prepared.correlation_id, earlier))
                    continue
            if isinstance(prepared, Rejection):
                self._reject(row, prepared.reason)
            else:
                by_table.setdefault(prepared.table, []).append((prepared, row))
        for table, cases in by_table.items():
            existing, refused = self._lookup_isolating(table, [case.correlation_id for case, _ in cases])
            to_send = []
            for case, row in cases:
                if case.correlation_id in refused:
                    self._record(self._unlookable(row, refused[case.correlation_id]))
                elif self._to_send(case, row, match(existing, case.correlation_id)):
                    to_send.append((case, row))
            self._resolve_and_send(pool, to_send)

    def _resolve_and_send(self, pool: ThreadPoolExecutor, to_send: list[tuple[PreparedCase, SourceRow]]) -> None:
        """Resolve the business keys of the rows still to be sent (one look-up per reference table for the chunk),
        reject those whose keys do not resolve, and POST the rest."""
        resolved = self.references.resolve([case for case, _ in to_send])
        self.counts.reference_lookups = self._earlier.reference_lookups + self.references.lookups
        for result, (_, row) in zip(resolved, to_send, strict=True):
            if isinstance(result, Rejection):
                self._reject(row, result.reason)
            else:
                future = pool.submit(self._post, result, row)
                self._in_flight[future] = result
                future.add_done_callback(self._done.put)

    def _reject(self, row: SourceRow, reason: str) -> None:
        self._record(Outcome(row.id, SyncStatus.REJECTED, error=reason[:4000]))
        self.counts.rejected += 1

    def _unlookable(self, row: SourceRow, error: ServiceNowError) -> Outcome:
        """The outcome of a row whose own look-up keeps failing while the instance answers other look-ups."""
        cause = f"the look-up of this row's correlation_id failed while other look-ups succeed: {error}"
        if isinstance(error, ServiceNowRequestError):
            self.counts.failed += 1
            text = (f"{cause}. Nothing was sent: check what the instance refuses in this request_id (an ACL, a "
                    "query business rule), then replay it")
            return Outcome(row.id, SyncStatus.FAILED, error=text[:4000], attempts_made=1, http_status=error.status)
        attempt = row.attempts + 1
        if attempt >= self.settings.max_attempts:
            self.counts.failed += 1
            text = (f"gave up after {attempt} attempts: {cause}. No look-up could confirm whether a case exists: "
                    f"search ServiceNow for correlation_id {row.request_id!r} before replaying it")
            return Outcome(row.id, SyncStatus.FAILED, error=text[:4000], attempts_made=1, http_status=error.status)
        self._retry_ids.append(row.id)
        text = f"attempt {attempt}: {cause} (nothing was sent; will retry)"
        return Outcome(row.id, SyncStatus.PENDING, error=text[:4000], attempts_made=1, http_status=error.status)

    def _to_send(self, case: PreparedCase, row: SourceRow, found: Matches) -> bool:
        """Adopt the row's existing record, reject a case twin, or fail a row out of attempts; True when the row is
        still to be sent (its business keys are resolved only then: a row with a record needs no key look-up)."""
        if found.exact:
            self._record(_adopted(row, found.exact, found.by_case))
            self.counts.adopted += 1
        elif found.by_case:
            self._reject(row, by_case_reason(case.correlation_id, found.by_case))
        elif row.attempts >= self.settings.max_attempts:
            error = f"gave up after {row.attempts} attempts (no record found); last error: {row.error or 'unknown'}"
            self._record(Outcome(row.id, SyncStatus.FAILED, error=error[:4000]))
            self.counts.failed += 1
        else:
            return True
        return False

    def _find_keys(self, table: str, key_field: str, keys: list[str]) -> dict[str, list[str]]:
        """One batched business-key look-up, retried like the correlation look-up (see :meth:`_with_retries`)."""
        return self._with_retries(
            f"look up {key_field} in {table}", lambda: self.client.find_by_keys(table, key_field, keys)
        )

    def _with_retries(self, what: str, call: Callable[[], _T]) -> _T:
        """A look-up of business keys, retried with backoff; after that the instance counts as unavailable (the
        rows stay pending, never rejected: nothing about them is known)."""
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
        raise ServiceNowUnavailable(
            f"could not {what} after {failures} failures: {last_error}. Rows not handled stay pending and the task "
            "retry or the next run takes them"
        )

    def _lookup(
        self, table: str, correlation_ids: list[str], *, retries: int | None = None
    ) -> dict[str, list[ExistingRecord]]:
        """One batched look-up, retried with backoff (``retries`` times after a transient failure, by default
        ``retry_rounds``); after that the instance counts as unavailable."""
        allowed = self.settings.retry_rounds if retries is None else retries
        failures, last_error = 0, ""
        for _ in range(self.settings.max_rate_limited_waits + allowed + 1):
            try:
                with self.throttle.slot():
                    self.counts.lookups += 1
                    found = self.client.find_by_correlation(table, correlation_ids)
                self.throttle.succeeded()
                return found
            except ServiceNowRateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, exc.limit_per_hour)
            except ServiceNowTransientError as exc:
                failures, last_error = failures + 1, str(exc)
                if failures > allowed:
                    break
                self._sleep(backoff_delay(failures, base=self.settings.backoff_base, cap=self.settings.backoff_cap))
        raise ServiceNowUnavailable(
            f"could not look up existing records in {table} after {failures} failures: {last_error}. Check that "
            "the instance is up and reachable from this worker (a look-up must succeed before anything is sent); "
            "rows not handled stay pending and the task retry or the next run takes them"
        )

    def _lookup_isolating(
        self, table: str, correlation_ids: list[str]
    ) -> tuple[dict[str, list[ExistingRecord]], dict[str, ServiceNowError]]:
        """The chunk's look-up; if it keeps failing while a probe look-up (of an id no request has) succeeds, the
        failure is caused by the data of some rows: halve the chunk until each failing id is found alone. Returns
        what was found and, per failing id, its error. A failing probe raises the chunk's error: the instance."""
        try:
            return self._lookup(table, correlation_ids), {}
        except (ServiceNowUnavailable, ServiceNowRequestError) as exc:
            if not self._probe_succeeds(table):
                raise
            log.warning("the look-up of %d ids failed (%s) but a probe succeeds: isolating the rows that fail it",
                        len(correlation_ids), exc)
            return self._bisect(table, correlation_ids, exc)

    def _probe_succeeds(self, table: str) -> bool:
        try:
            self._lookup(table, [_PROBE_ID])
        except (ServiceNowUnavailable, ServiceNowRequestError):
            return False
        return True

    def _bisect(
        self, table: str, ids: list[str], error: ServiceNowError | ServiceNowUnavailable
    ) -> tuple[dict[str, list[ExistingRecord]], dict[str, ServiceNowError]]:
        if len(ids) == 1:
            cause = error if isinstance(error, ServiceNowError) else ServiceNowTransientError(str(error))
            return {}, {ids[0]: cause}
        found: dict[str, list[ExistingRecord]] = {}
        refused: dict[str, ServiceNowError] = {}
        middle = len(ids) // 2
        for half in (ids[:middle], ids[middle:]):
            try:  # a half of several ids is tried once; a single id gets the usual retries
                found.update(self._lookup(table, half, retries=None if len(half) == 1 else 0))
            except (ServiceNowUnavailable, ServiceNowRequestError) as exc:
                more_found, more_refused = self._bisect(table, half, exc)
                found.update(more_found)
                refused.update(more_refused)
        return found, refused

    def _post(self, case: PreparedCase, row: SourceRow) -> _Posted:
        """Runs on a worker thread: one POST, repeated only after a 429 (which did nothing)."""
        sent_at = time.monotonic()
        last: ServiceNowTransientError | None = None
        for _ in range(self.settings.max_rate_limited_waits):
            try:
                with self.throttle.slot():
                    sent_at = time.monotonic()
                    record = self.client.create_record(case.table, case.body.to_json(), ECHO_FIELDS)
                self.throttle.succeeded()
                return _Posted(case, row, record=record)
            except LongWait:  # raised before the request started: nothing was sent
                return _Posted(case, row, error=last, held=True)
            except ServiceNowRateLimited as exc:
                self.throttle.rate_limited(exc.retry_after, exc.limit_per_hour)
                last = exc
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
        if posted.held and posted.error is None:
            return  # never sent: the row stays pending as it was, for the next leg
        self.counts.posts += 1
        self._record(self._outcome(posted))

    def _outcome(self, posted: _Posted) -> Outcome:
        row, error, record = posted.row, posted.error, posted.record
        if record is not None:
            problem = echo_problem(posted.case.body.to_json(), record.values)
            if problem is not None and not problem[0]:
                self.counts.failed += 1
                text = (f"{problem[1]}. The answer's record: {record.number or '?'} (sys_id {record.sys_id}); check "
                        "it in ServiceNow, then replay this row (the replay looks its correlation_id up first)")
                return Outcome(row.id, SyncStatus.FAILED, error=text[:4000], attempts_made=1, http_status=201,
                               resolved=_resolved(posted.case))
            self.counts.created += 1
            return Outcome(
                row.id, SyncStatus.CREATED, sys_id=record.sys_id, number=record.number,
                error=problem[1][:4000] if problem else None,
                attempts_made=1, http_status=201, action=SyncAction.CREATED, resolved=_resolved(posted.case),
                sent_fields=created_snapshot(posted.case.body).to_json(),
            )
        if isinstance(error, ServiceNowRequestError):
            self.counts.failed += 1
            text = (f"{error} (ServiceNow refused this row's POST; nothing was created. Fix the row's data, or the "
                    "instance's rule that refuses it, then replay the row)")
            return Outcome(row.id, SyncStatus.FAILED, error=text[:4000], attempts_made=1, http_status=error.status,
                           resolved=_resolved(posted.case))
        self._retry_ids.append(row.id)
        attempt = row.attempts + 1
        if in_doubt(error):
            settled = posted.sent_at + self.settings.settle_seconds
            self._settle_until = max(self._settle_until, settled)
            self._retry_ready[row.id] = settled
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
                write_isolating(self.source, self.token, self._buffer)
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
        self._refused: list[tuple[Outcome, bool]] = []
        self._refused_lock = threading.Lock()
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

    def take_refused(self) -> list[tuple[Outcome, bool]]:
        """Outcomes the database refused so far, each with whether the row could be marked failed instead."""
        with self._refused_lock:
            refused, self._refused = self._refused, []
        return refused

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
                    refused = write_isolating(self._source, self._token, outcomes)
                    if refused:
                        with self._refused_lock:
                            self._refused += refused
            except BaseException as exc:  # handed to the main thread, which raises it
                self._error = exc
            finally:
                self._queue.task_done()


def _waves(ready_at: dict[int, float], now: float, spread: float = 1.0) -> list[tuple[float, list[int]]]:
    """Row ids in the order they may be looked up again: first every row ready now, then the settling ones in
    groups whose ready times lie within ``spread`` seconds (one look-up each), each with the time it is ready."""
    waves: list[tuple[float, list[int]]] = []
    ready_now = [row_id for row_id, when in ready_at.items() if when <= now]
    if ready_now:
        waves.append((now, ready_now))
    for row_id, when in sorted(((r, w) for r, w in ready_at.items() if w > now), key=lambda item: item[1]):
        if waves and waves[-1][0] > now and when - waves[-1][0] <= spread:
            waves[-1] = (max(waves[-1][0], when), [*waves[-1][1], row_id])
        else:
            waves.append((when, [row_id]))
    return waves


_PROBE_ID = "ticketsync-lookup-probe"


def _prepare(
    row: SourceRow, transform: Callable[[SourceRow], PreparedCase | Rejection] = prepare
) -> PreparedCase | Rejection:
    """The pure transform (the loan's, or the load's definition's); a row that makes it raise (a bug: every rule
    should name its column) is rejected with the exception, logged with its traceback, instead of stopping every row
    behind it."""
    try:
        return transform(row)
    except Exception as exc:
        log.exception("validating %s raised; the row is rejected", row.label)
        text = " ".join(str(exc).split())[:300]
        return Rejection(row.id, (FieldError("row", (
            f"could not be validated ({type(exc).__name__}: {text}); this is a ticketsync bug, please report it "
            "with the row's values; the row was not sent"
        )),))  # a look-up of an id no request has: it tells the instance from the data


def write_isolating(source: SourceTable, token: str, outcomes: list[Outcome]) -> list[tuple[Outcome, bool]]:
    """Write a batch of outcomes; if the database refuses the batch for a row's data (a constraint, a trigger),
    write each row on its own, so the others are kept. A refused row is marked ``failed`` with the database's
    reason and what happened in ServiceNow; if even that is refused, only its ``error`` is set (it stays pending,
    its lease ended), and if that is refused too the row is left as it was. Returns the refused outcomes, each with
    whether the row could be marked failed. Any other error (the connection, a permission) is raised."""
    try:
        source.write_outcomes(token, outcomes)
        return []
    except Exception as exc:
        if not is_row_refusal(exc):
            raise
        log.warning("the source database refused a batch of %d outcomes (%s); writing them one by one",
                    len(outcomes), refusal_text(exc))
    refused: list[tuple[Outcome, bool]] = []
    for outcome in outcomes:
        try:
            source.write_outcomes(token, [outcome])
        except Exception as exc:
            if not is_row_refusal(exc):
                raise
            refused.append((outcome, _mark_refused(source, token, outcome, refusal_text(exc))))
    return refused


def _mark_refused(source: SourceTable, token: str, outcome: Outcome, reason: str) -> bool:
    """Say on the row that its outcome could not be stored; True if it could be marked failed."""
    what = (
        f"ServiceNow case {outcome.number or '?'} (sys_id {outcome.sys_id}) exists for it"
        if outcome.sys_id else f"its outcome was {outcome.status}" + (f" ({outcome.error})" if outcome.error else "")
    )
    text = (
        f"the source database refused to store this row's outcome: {reason}. {what}. Fix the constraint or "
        "trigger on the source table that refuses it, then replay the row (it is looked up first: an existing "
        "case is adopted, never duplicated)"
    )[:4000]
    log.error("row %d: %s", outcome.row_id, text)
    if outcome.status is not SyncStatus.PENDING:
        try:
            source.write_outcomes(token, [Outcome(outcome.row_id, SyncStatus.FAILED, error=text, attempts_made=1,
                                                  http_status=outcome.http_status)])
            return True
        except Exception as exc:
            if not is_row_refusal(exc):
                raise
    try:
        source.note_error(token, outcome.row_id, text)
    except Exception as exc:
        if not is_row_refusal(exc):
            raise
        log.error("row %d: the source database refuses every update of this row (%s)", outcome.row_id,
                  refusal_text(exc))
    return False


def _resolved(case: PreparedCase) -> str | None:
    """The sys_ids the row's business keys resolved to, as written back (``resolved_references``)."""
    return json.dumps(dict(case.resolved), sort_keys=True) if case.resolved else None


def _adopted(row: SourceRow, found: list[ExistingRecord], by_case: list[ExistingRecord]) -> Outcome:
    """Adopt the oldest record with this correlation id; name any others, which a person must resolve."""
    oldest = found[0]
    note = None
    if len(found) > 1:
        others = ", ".join(record.number or record.sys_id for record in found[1:])
        note = f"{len(found)} records share correlation_id {oldest.correlation_id}; adopted the oldest, also: {others}"
    if by_case:
        twins = ", ".join(f"{record.number or record.sys_id} ({record.correlation_id})" for record in by_case)
        note = (note + "; " if note else "") + (
            f"also cases whose correlation_id differs only in case (another request's, which ServiceNow cannot "
            f"tell apart from this one): {twins}"
        )
    return Outcome(
        row.id, SyncStatus.CREATED, sys_id=oldest.sys_id, number=oldest.number, error=note,
        http_status=200, action=SyncAction.ADOPTED,
    )
