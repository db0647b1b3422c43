"""Updates of existing cases (issue 13): the ``update_pending`` rows a run claims become one PATCH each, with the
changed fields only and a new note as one journal entry, applied exactly once (docs/case-status.md#updates)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, TypeVar

from ticketsync.casestatus.models import NOT_FOUND_PREFIX
from ticketsync.hooks.servicenow import (
    ServiceNowHook,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTransientError,
    in_doubt,
)
from ticketsync.models import CaseBody, PreparedCase, Rejection, SourceRow
from ticketsync.references import ReferenceResolver
from ticketsync.source.updates import UpdateOutcome, UpdateRow, UpdateRows
from ticketsync.throttle import backoff_delay
from ticketsync.transform import prepare
from ticketsync.updates import (
    CLOSED_STATES,
    Snapshot,
    UpdatePlan,
    baseline,
    is_closed,
    plan_update,
    still_missing,
    updatable_fields,
)

LOST_PREFIX = "update answer lost"
log = logging.getLogger(__name__)
_T = TypeVar("_T")


def case_fields(updatable: Iterable[str]) -> tuple[str, ...]:
    """The fields an update reads of a case: its identity, state, and the fields the update may change."""
    return ("sys_id", "number", "state", "active", *updatable)


@dataclass(frozen=True)
class UpdateSettings:
    """How a run applies updates.

    :param closed_policy: a closed or cancelled case: ``skip`` (nothing sent, the reason in ``error``) or
        ``note_only`` (only the new note is appended, the fields are not changed, and ``error`` says so).
    :param verify: check the case and its journal after a lost answer before sending again (off only in the test
        that shows why it is on).
    """

    limit: int = 10_000
    chunk_size: int = 100
    lease_seconds: float = 900
    max_attempts: int = 5
    closed_policy: Literal["skip", "note_only"] = "skip"
    closed_states: tuple[str, ...] = CLOSED_STATES
    settle_seconds: float = 60.0
    clock_skew_seconds: float = 300.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_rate_limited_wait: float = 120.0
    verify: bool = True


@dataclass
class UpdateCounts:
    claimed: int = 0
    updated: int = 0
    unchanged: int = 0
    closed: int = 0
    not_found: int = 0
    refused: int = 0
    still_pending: int = 0
    patches: int = 0
    lost_answers: int = 0
    read_retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "claimed": self.claimed, "updated": self.updated, "unchanged": self.unchanged, "closed": self.closed,
            "not_found": self.not_found, "refused": self.refused, "still_pending": self.still_pending,
            "patches": self.patches, "lost_answers": self.lost_answers, "read_retries": self.read_retries,
        }


def plan_updates(
    rows: Sequence[UpdateRow], transform: Callable[[SourceRow], PreparedCase | Rejection] = prepare
) -> dict[str, Any]:
    """A dry run's plan of updates, from the source alone (no request): how many rows would be PATCHed with which
    fields and notes, how many change nothing or are invalid, and how many have no snapshot (their case would be
    read first, so their plan is an upper bound). Closed cases are only known once the case is read.

    A reference given by a business key is known only once the key is resolved on the instance, which a dry run
    does not ask: such fields are not counted as changed; ``keys_to_resolve`` counts the rows that have them (a key
    that now names another record adds that field to their PATCH when sent)."""
    plan: dict[str, Any] = {"update_pending": len(rows), "would_update": 0, "unchanged": 0, "invalid": 0,
                            "without_snapshot": 0, "keys_to_resolve": 0, "notes": 0, "fields": {}}
    for update in rows:
        case = transform(update.row)
        try:
            sent = Snapshot.from_json(update.sent_fields)
        except ValueError:
            sent, plan["invalid"] = None, plan["invalid"] + 1
            continue
        if isinstance(case, Rejection) or update.sys_id is None:
            plan["invalid"] += 1
            continue
        if sent is None:
            plan["without_snapshot"] += 1
            sent = Snapshot(fields={})
        planned = plan_update(update.row.id, update.sys_id, case.table, case.body, sent)
        by_key = {lookup.key.field for lookup in case.keys}
        if by_key:
            plan["keys_to_resolve"] += 1
            planned = replace(planned, fields={k: v for k, v in planned.fields.items() if k not in by_key})
        plan["would_update" if not planned.empty else "unchanged"] += 1
        plan["notes"] += planned.note is not None
        for name in planned.fields:
            plan["fields"][name] = plan["fields"].get(name, 0) + 1
    return plan


class CaseUpdater:
    """Claim the ``update_pending`` rows under ``token``, PATCH each case, write each outcome as it comes.

    :param hook: the ServiceNow hook (transport).
    :param source: the source table.
    :param token: the claim token (the sync run's token with ``:update`` appended, so the run's create counts stay
        its own).
    :param settings: the update settings.
    """

    def __init__(
        self, hook: ServiceNowHook, source: UpdateRows, token: str, settings: UpdateSettings, *,
        sleep: Callable[[float], None] = time.sleep, now: Callable[[], datetime] = lambda: datetime.now(UTC),
        transform: Callable[[SourceRow], PreparedCase | Rejection] = prepare,
    ) -> None:
        self.hook, self.source, self.token, self.settings = hook, source, token, settings
        self._transform = transform
        self._sleep, self._now = sleep, now
        self.references = ReferenceResolver(self._find_keys)
        self.counts = UpdateCounts()

    def run(self) -> UpdateCounts:
        s = self.settings
        self.counts.claimed = self.source.claim_updates(self.token, limit=s.limit, lease_seconds=s.lease_seconds)
        after = 0
        try:
            while chunk := self.source.take_updates(
                self.token, after=after, size=s.chunk_size, lease_seconds=s.lease_seconds
            ):
                after = chunk[-1].row.id
                self._chunk(chunk)
        finally:
            self.source.release_updates(self.token)
        return self.counts

    def _prepare(self, chunk: Sequence[UpdateRow]) -> dict[int, PreparedCase]:
        """Each row's case as it wants it now, by row id: transformed, its business keys resolved (one look-up per
        reference table per chunk, cached for the run, as the load does: a key-given reference is compared as the
        sys_id it names, never as empty). A row that fails either goes back to ``created`` with the reason."""
        prepared: dict[int, PreparedCase] = {}
        by_id = {update.row.id: update for update in chunk}
        for update in chunk:
            case = self._transform(update.row)
            if isinstance(case, Rejection):
                self._refuse(update, case.reason)
            elif update.sys_id is None:
                self._finish(update, "failed", "status update_pending without a case (sys_id is NULL): set status "
                             "pending to create one")
                self.counts.refused += 1
            else:
                prepared[update.row.id] = case
        for resolved in self.references.resolve(list(prepared.values())):
            if isinstance(resolved, Rejection):
                del prepared[resolved.row_id]
                self._refuse(by_id[resolved.row_id], resolved.reason)
            else:
                prepared[resolved.row_id] = resolved
        return prepared

    def _refuse(self, update: UpdateRow, reason: str) -> None:
        self._finish(update, "created", f"update not applied: {reason}; fix the row and set status update_pending "
                     "again")
        self.counts.refused += 1

    def _find_keys(self, table: str, key_field: str, keys: list[str]) -> dict[str, list[str]]:
        return self._read(f"look up {key_field} in {table}", lambda: self.hook.find_by_keys(table, key_field, keys))

    def _chunk(self, chunk: Sequence[UpdateRow]) -> None:
        cases: dict[str, dict[str, Any]] = {}
        by_table: dict[str, list[str]] = {}
        fields: dict[str, tuple[str, ...]] = {}  # what to read of each table's cases (the definition's fields)
        prepared = self._prepare(chunk)
        for update in chunk:
            case = prepared.get(update.row.id)
            if case is not None and update.sys_id is not None:
                by_table.setdefault(case.table, []).append(update.sys_id)
                known = fields.get(case.table, ())
                fields[case.table] = (*known, *(f for f in updatable_fields(case.body) if f not in known))
        for table, sys_ids in by_table.items():  # one sys_idIN read per chunk and table: state, active, fields
            query = "sys_idIN" + ",".join(sys_ids)
            found = self._read(f"read {len(sys_ids)} cases of {table}", partial(
                self.hook.list_records, table, query=query, fields=case_fields(fields[table]), limit=len(sys_ids)))
            for record in found:
                cases[str(record.get("sys_id"))] = {key: str(value or "") for key, value in record.items()}
        for update in chunk:
            ready = prepared.get(update.row.id)
            if ready is not None and update.sys_id is not None:
                self._one(update, ready.table, ready.body, cases.get(update.sys_id))

    def _one(self, update: UpdateRow, table: str, body: CaseBody, case: dict[str, str] | None) -> None:
        assert update.sys_id is not None
        if case is None:
            self._not_found(update)
            return
        try:
            sent = Snapshot.from_json(update.sent_fields)
        except ValueError as exc:
            self._finish(update, "created", f"update not applied: {exc}")
            self.counts.refused += 1
            return
        if sent is None or (update.row.error or "").startswith(LOST_PREFIX):
            sys_id = update.sys_id
            entries = self._read(f"read the journal of {sys_id}", lambda: self.hook.journal_entries(table, sys_id))
            journal = [e["value"] for e in entries]
            sent = sent or baseline(case, journal, None, updatable_fields(body))
            plan = plan_update(update.row.id, update.sys_id, table, body, sent)
            plan = still_missing(plan, case, journal)  # what an earlier run's lost answer applied is not sent
        else:
            plan = plan_update(update.row.id, update.sys_id, table, body, sent)
        note = None
        if is_closed(case.get("state"), case.get("active"), self.settings.closed_states):
            reason = (f"case {case.get('number') or update.sys_id} is closed (state {case.get('state')}, active "
                      f"{case.get('active')})")
            self.counts.closed += 1
            if self.settings.closed_policy == "skip" or plan.note is None:
                policy = self.settings.closed_policy
                why = "closed_policy skip" if policy == "skip" else "no new note, closed_policy note_only"
                self._finish(update, "created", f"{reason}: update not applied ({why}); reopen the case and set "
                             "status update_pending again")
                return
            note = f"{reason}: only the note was appended (closed_policy note_only); the fields were not changed"
            plan = plan.note_only()
        if plan.empty:
            self._finish(update, "created", note, plan.desired)
            self.counts.unchanged += note is None
            return
        self._apply(update, plan, note)

    def _apply(self, update: UpdateRow, plan: UpdatePlan, note: str | None) -> None:
        s, remaining, lost, attempt = self.settings, plan, "", 0
        while attempt < s.max_attempts and not remaining.empty:
            attempt += 1
            started = self._now()
            try:
                self.counts.patches += 1
                self.hook.update_record(plan.table, plan.sys_id, remaining.body())
                remaining, lost = replace(remaining, fields={}, note=None), ""
            except ServiceNowRateLimited as exc:  # refused before anything was done: wait, then send the same again
                lost = str(exc)
                if not self._waited(exc, attempt):
                    break
            except ServiceNowRequestError as exc:
                if exc.status == 404:
                    self._not_found(update)
                else:
                    self._finish(update, "created", f"update refused: {exc}; fix the row and set status "
                                 "update_pending again")
                    self.counts.refused += 1
                return
            except ServiceNowTransientError as exc:
                self.counts.lost_answers += 1
                lost = str(exc)
                # The instance may still be applying it (a timeout, a lost connection, a gateway's 502/504): wait
                # until it could have finished before reading the case; an error it answered itself ended it.
                settle = s.settle_seconds if in_doubt(exc) else 0.0
                self._sleep(settle + s.backoff_base * 2 ** (attempt - 1))
                checked = self._check(remaining, started) if s.verify else remaining
                if checked is None:  # unknown whether it landed: never send again blind
                    break
                remaining = checked
        if not remaining.empty:
            self._finish(update, "update_pending", f"{LOST_PREFIX} ({lost}); the next run checks the case and its "
                         "journal before sending again")
            self.counts.still_pending += 1
            return
        self._finish(update, "created", note, plan.desired)
        self.counts.updated += 1

    def _check(self, plan: UpdatePlan, started: datetime) -> UpdatePlan | None:
        """What the case does not show yet after a lost answer; None when the check itself got no answer."""
        since = (started - timedelta(seconds=self.settings.clock_skew_seconds)).strftime("%Y-%m-%d %H:%M:%S")
        try:
            case = self._read(f"read case {plan.sys_id}", lambda: self.hook.get_record(
                plan.table, plan.sys_id, case_fields(plan.desired.fields)))
            journal = self._read(f"read the journal of {plan.sys_id}", lambda: self.hook.journal_entries(
                plan.table, plan.sys_id, since=since)) if plan.note else []
        except ServiceNowTransientError:
            return None
        return still_missing(plan, {k: str(v or "") for k, v in case.items()}, [e["value"] for e in journal])

    def _waited(self, exc: ServiceNowRateLimited, attempt: int) -> bool:
        """Wait out a 429 (its Retry-After, or backoff); False when the wait asked for is too long for this run."""
        s = self.settings
        wait = exc.retry_after if exc.retry_after is not None else backoff_delay(
            attempt, base=s.backoff_base, cap=s.backoff_cap)
        if wait > s.max_rate_limited_wait:
            return False
        self._sleep(wait)
        return True

    def _read(self, what: str, call: Callable[[], _T]) -> _T:
        """A read (it changes nothing, so it is safe to repeat) retried in the task: a 5xx, a cut connection or an
        answer that is not JSON is retried with backoff up to ``max_attempts`` times, a 429 waits its Retry-After (at
        most ``max_rate_limited_wait`` seconds) without counting as a failure. After that the error goes up: the
        rows not finished stay ``update_pending`` and the task retry takes them."""
        s, failures, limited = self.settings, 0, 0
        while True:
            try:
                return call()
            except ServiceNowRateLimited as exc:
                self.counts.read_retries += 1
                limited += 1
                if limited > 10 * s.max_attempts or not self._waited(exc, limited):
                    raise
            except ServiceNowTransientError as exc:
                failures += 1
                if failures >= s.max_attempts:
                    raise ServiceNowTransientError(
                        f"could not {what} after {failures} tries: {exc}", status=exc.status) from exc
                self.counts.read_retries += 1
                self._sleep(backoff_delay(failures, base=s.backoff_base, cap=s.backoff_cap))

    def _not_found(self, update: UpdateRow) -> None:
        self._finish(update, "created", f"{NOT_FOUND_PREFIX}: case {update.number or update.sys_id} (sys_id "
                     f"{update.sys_id}) was deleted or is not readable; update not applied, no case created")
        self.counts.not_found += 1

    def _finish(self, update: UpdateRow, status: str, error: str | None, sent: Snapshot | None = None) -> None:
        outcome = UpdateOutcome(update.row.id, status, error, None if sent is None else sent.to_json())
        if not self.source.write_update_outcome(self.token, outcome, update.read) and update.read:
            log.warning("row %d: the update's outcome was not written (the claim was lost: its lease ran out and "
                        "another run took the row); that run checks the case before sending", update.row.id)
