"""The status pull: read the cases changed since the watermark in keyset pages and write them back, page by page,
then check that the stored cases still exist (a bounded slice per run)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any, Protocol

from ticketsync.casestatus.models import (
    STATUS_FIELDS,
    CaseState,
    UnexpectedAnswer,
    case_state,
    first_page_query,
    format_sn_timestamp,
    next_page_query,
    not_found_message,
    window_start,
)
from ticketsync.hooks.servicenow import ServiceNowRateLimited, ServiceNowTransientError
from ticketsync.source import SourceTable

log = logging.getLogger(__name__)
VERIFY_CHUNK = 100  # sys_ids per existence query (the URL stays short)
FIRST_PULL_MARGIN = timedelta(days=1)  # before the oldest row with a case: clocks of the bank and the instance differ


class StatusClient(Protocol):
    """What the pull needs from the instance (the ServiceNow hook)."""

    def list_records(
        self,
        table: str,
        *,
        query: str,
        fields: Sequence[str],
        limit: int = ...,
        offset: int = ...,
        display_value: str | None = ...,
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class StatusSettings:
    """How one status run reads.

    :param page_size: cases per list request
    :param overlap_seconds: how far before the watermark each pull starts again
    :param max_pages: most pages per table and run (the watermark holds what was written; the next run goes on)
    :param verify_batch: stored cases whose existence one run checks, per table (0: none)
    :param attempts: tries of one list request that fails transiently (reads are safe to repeat)
    :param backoff_base: seconds before the second try, doubled for each next one (with jitter), unless the
        instance sent ``Retry-After``
    """

    page_size: int = 1000
    overlap_seconds: float = 600.0
    max_pages: int = 100
    verify_batch: int = 1000
    attempts: int = 4
    backoff_base: float = 1.0

    def __post_init__(self) -> None:
        if min(self.page_size, self.max_pages, self.attempts) < 1 or min(self.overlap_seconds, self.verify_batch) < 0:
            raise ValueError(f"invalid status settings {self}")


@dataclass
class StatusCounts:
    """What one status run did, summed over the instance tables."""

    tables: int = 0
    pages: int = 0
    list_requests: int = 0
    retries: int = 0
    cases_read: int = 0
    rows_changed: int = 0
    rows_unchanged: int = 0
    cases_not_ours: int = 0
    incomplete_tables: int = 0
    verified: int = 0
    not_found: int = 0
    not_found_new: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class CaseStatusPuller:
    """One status run over every instance table that holds cases of the source table's rows.

    :param client: the instance (a :class:`~ticketsync.hooks.servicenow.ServiceNowHook`)
    :param source: the source table, with the case status columns (schema version 3 or later)
    :param instance: names the instance in the watermark key (the ServiceNow connection id)
    :param settings: paging, overlap and existence-check sizes
    :param target_table: the one instance table of the source's definition (its rows do not name their table);
        None for the loan contract, whose rows each name theirs in ``target_table``
    """

    def __init__(
        self,
        client: StatusClient,
        source: SourceTable,
        instance: str,
        settings: StatusSettings,
        *,
        sleep: Callable[[float], None] = time.sleep,
        target_table: str | None = None,
    ) -> None:
        self.client = client
        self.target_table = target_table
        self.source = source
        self.instance = instance
        self.settings = settings
        self.counts = StatusCounts()
        self._sleep = sleep

    def _list(self, table: str, query: str, fields: Sequence[str], limit: int, **kwargs: Any) -> list[dict[str, Any]]:
        """One list request, tried again after a transient failure (429, 5xx, timeout, reset)."""
        for attempt in range(1, self.settings.attempts + 1):
            self.counts.list_requests += 1
            try:
                return self.client.list_records(table, query=query, fields=fields, limit=limit, **kwargs)
            except ServiceNowTransientError as exc:
                if attempt == self.settings.attempts:
                    raise
                wait = exc.retry_after if isinstance(exc, ServiceNowRateLimited) and exc.retry_after else None
                wait = wait or self.settings.backoff_base * 2 ** (attempt - 1) * (0.5 + random.random())
                log.info("%s: list request failed (%s); trying again in %.1f s", table, exc, wait)
                self.counts.retries += 1
                self._sleep(wait)
        raise AssertionError("unreachable")

    def tables(self) -> list[str]:
        """The instance tables that hold cases of the source table's rows."""
        return [self.target_table] if self.target_table is not None else self.source.case_status_targets()

    def run(self) -> StatusCounts:
        for table in self.tables():
            self.counts.tables += 1
            key = f"{self.instance}/{table}"
            state = self.source.status_pull(key)
            if self._pull(table, key, state.watermark):
                after_id = self._verify(table, state.verify_after_id)
                self.source.finish_status_pull(key, after_id)
            else:
                self.counts.incomplete_tables += 1
        return self.counts

    def _start(self, table: str, watermark: str | None) -> str | None:
        if watermark is not None:
            return window_start(watermark, self.settings.overlap_seconds)
        oldest = self.source.first_case_requested_at(self._rows_of(table))
        return None if oldest is None else format_sn_timestamp(oldest - FIRST_PULL_MARGIN)

    def _rows_of(self, table: str) -> str | None:
        """Which rows' cases are in ``table``: those naming it (the loan contract), or all (a definition's one)."""
        return None if self.target_table is not None else table

    def _pull(self, table: str, key: str, watermark: str | None) -> bool:
        """Read pages until one is short; True when the pull read to its end within max_pages."""
        start = self._start(table, watermark)
        if start is None:
            return True
        query = first_page_query(start)
        previous: CaseState | None = None
        for _ in range(self.settings.max_pages):
            records = self._list(table, query, STATUS_FIELDS, self.settings.page_size, display_value="all")
            self.counts.pages += 1
            states = [case_state(record) for record in records]
            _check_order(states, start, previous)
            if states:
                previous = states[-1]
                watermark = max(watermark or "", previous.updated_on)
                matched, changed = self.source.write_case_states(key, states, watermark)
                self.counts.cases_read += len(states)
                self.counts.rows_changed += changed
                self.counts.rows_unchanged += matched - changed
                self.counts.cases_not_ours += len(states) - matched
            if len(records) < self.settings.page_size:
                return True
            assert previous is not None  # a full page is not empty
            query = next_page_query(previous)
        log.warning("%s: stopped after %d pages; the next run goes on from the watermark", key, self.settings.max_pages)
        return False

    def _verify(self, table: str, after_id: int) -> int:
        """Check a slice of the stored cases still exists; returns where the next check starts (0: from the top)."""
        if self.settings.verify_batch == 0:
            return after_id
        rows = self.source.cases_to_verify(self._rows_of(table), after_id, self.settings.verify_batch)
        for start in range(0, len(rows), VERIFY_CHUNK):
            self._verify_chunk(table, rows[start : start + VERIFY_CHUNK])
        return rows[-1][0] if len(rows) == self.settings.verify_batch else 0

    def _verify_chunk(self, table: str, rows: list[tuple[int, str, str | None]]) -> None:
        asked = {sys_id for _, sys_id, _ in rows}
        records = self._list(table, f"sys_idIN{','.join(sorted(asked))}", ("sys_id",), len(asked))
        found = {str(record.get("sys_id")) for record in records}
        if not found <= asked:
            raise UnexpectedAnswer(
                "the existence check's answer holds cases it did not ask for: the instance ignored 'sys_idIN…'; "
                "nothing is reported as deleted from such an answer"
            )
        missing = [
            (row_id, not_found_message(number, sys_id)) for row_id, sys_id, number in rows if sys_id not in found
        ]
        self.counts.verified += len(rows)
        self.counts.not_found += len(missing)
        if missing:
            self.counts.not_found_new += self.source.mark_cases_not_found(missing)
            for _, message in missing:
                log.warning("%s", message)
        self.source.clear_cases_not_found([row_id for row_id, sys_id, _ in rows if sys_id in found])


def _check_order(states: list[CaseState], start: str, previous: CaseState | None) -> None:
    """The keyset rests on the instance honouring the window and the order: an answer that does not stops the
    pull (the instance drops query terms it cannot parse, silently)."""
    keys = [(state.updated_on, state.sys_id) for state in states]
    if keys != sorted(keys) or (keys and keys[0][0] < start):
        raise UnexpectedAnswer(
            "the status pull's answer is not in sys_updated_on order or not within its window: the instance ignored "
            "part of the query (can the integration user read sys_updated_on and correlation_id?)"
        )
    if previous is not None and keys and keys[0] <= (previous.updated_on, previous.sys_id):
        raise UnexpectedAnswer("the status pull's next page starts before the previous one ended")
