"""Dry runs: validate, look up, and say what a run would create, adopt, reject or fail, writing nothing anywhere.

A dry run never claims: every task re-reads the same selection with plain SELECTs (the pending rows a claim would
take now, or the rows named in ``request_ids`` as a replay would reset them), so no lease, no token and no status
is written to the source table, and only GET look-ups reach ServiceNow. The selection can move between tasks if
producers add rows meanwhile; the load's plan (its XCom, and the report's summary) is the answer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ticketsync.correlation import CaseTwins, Matches, by_case_reason, match, twin_reason
from ticketsync.hooks.servicenow import (
    ExistingRecord,
    ServiceNowError,
    ServiceNowRequestError,
    ServiceNowTransientError,
)
from ticketsync.loader import TableClient
from ticketsync.models import PreparedCase, Rejection, SourceRow, SyncStatus
from ticketsync.references import ReferenceResolver
from ticketsync.source import SourceTable
from ticketsync.transform import prepare

SAMPLE = 50  # how many request ids of each kind the plan lists


def selection(
    source: SourceTable, *, limit: int, chunk_size: int, request_ids: Sequence[str] = ()
) -> Iterator[list[SourceRow]]:
    """The rows a real run with these parameters would take, in chunks, read only.

    With ``request_ids``: those rows whatever their status, minus those another run holds under a live lease;
    unknown ids raise ``ValueError`` (as the real replay does). The attempt count is shown as a replay resets it.
    """
    if request_ids:
        stored = source.find_requests(request_ids)
        unknown = sorted(set(request_ids) - {row.request_id for row in stored})
        if unknown:
            raise ValueError(f"request_ids not found in {source.table}: {', '.join(unknown[:20])}")
        rows = [
            row.row.model_copy(update={"attempts": 0})
            for row in stored
            if not (row.status == SyncStatus.PENDING and row.lease_live)
        ]
        for start in range(0, len(rows), chunk_size):
            yield rows[start : start + chunk_size]
        return
    taken, after = 0, 0
    while taken < limit:
        rows = source.select_claimable(after=after, size=min(chunk_size, limit - taken))
        if not rows:
            return
        taken += len(rows)
        after = rows[-1].id
        yield rows


@dataclass
class DryRunPlan:
    """What a run would do, per row: the load's XCom in a dry run."""

    create: list[str] = field(default_factory=list)
    adopt: list[tuple[str, str]] = field(default_factory=list)
    reject: list[tuple[str, str]] = field(default_factory=list)
    fail: list[tuple[str, str]] = field(default_factory=list)
    lookups: int = 0

    def as_dict(self, sample: int = SAMPLE) -> dict[str, Any]:
        return {
            "dry_run": True,
            "selected": len(self.create) + len(self.adopt) + len(self.reject) + len(self.fail),
            "would_create": len(self.create),
            "would_adopt": len(self.adopt),
            "would_reject": len(self.reject),
            "would_fail": len(self.fail),
            "lookups": self.lookups,
            "create_ids": self.create[:sample],
            "adopt": [list(pair) for pair in self.adopt[:sample]],
            "reject": [list(pair) for pair in self.reject[:sample]],
            "fail": [list(pair) for pair in self.fail[:sample]],
        }


def plan_chunk(
    client: TableClient,
    rows: list[SourceRow],
    plan: DryRunPlan,
    *,
    max_attempts: int,
    twins: CaseTwins | None = None,
    resolver: ReferenceResolver | None = None,
    transform: Callable[[SourceRow], PreparedCase | Rejection] = prepare,
) -> None:
    """Transform the rows (``transform``: the loan's, or a definition's) and look the valid ones up (GET only),
    adding each to the plan, with the load's rules (:mod:`ticketsync.correlation`): ids equal to an earlier pending
    row's or an existing case's only up to case are rejected; a row whose own look-up fails while the others succeed
    is planned to fail with that error. With ``resolver``, the business keys of the rows a run would create are
    resolved too (GET only), and a key that does not resolve puts its row under "reject" with the reason the run
    would write."""
    by_table: dict[str, list[PreparedCase]] = {}
    attempts = {}
    for row in rows:
        prepared = transform(row)
        earlier = twins.earlier_pending(row.id, prepared.correlation_id) if twins and not isinstance(
            prepared, Rejection) else None
        if isinstance(prepared, Rejection):
            plan.reject.append((_name(row), prepared.reason[:500]))
        elif earlier is not None:
            plan.reject.append((_name(row), twin_reason(prepared.correlation_id, earlier)[:500]))
        else:
            by_table.setdefault(prepared.table, []).append(prepared)
            attempts[prepared.correlation_id] = row.attempts
    for table, cases in by_table.items():
        found, refused = _lookup(client, table, [case.correlation_id for case in cases], plan)
        to_create = []
        for case in cases:
            if case.correlation_id in refused:
                plan.fail.append((case.correlation_id, f"its look-up fails: {refused[case.correlation_id]}"[:500]))
            elif _plan_case(plan, case, match(found, case.correlation_id), attempts[case.correlation_id],
                            max_attempts):
                to_create.append(case)
        _plan_creates(plan, to_create, resolver)


def _plan_creates(plan: DryRunPlan, to_create: list[PreparedCase], resolver: ReferenceResolver | None) -> None:
    """The rows a run would create, unless their business keys do not resolve (then: rejected, with the reason)."""
    results: list[PreparedCase | Rejection] = list(to_create)
    if resolver is not None:
        results = resolver.resolve(to_create)
    for case, result in zip(to_create, results, strict=True):
        if isinstance(result, Rejection):
            plan.reject.append((case.correlation_id, result.reason[:500]))
        else:
            plan.create.append(case.correlation_id)


def _lookup(
    client: TableClient, table: str, ids: list[str], plan: DryRunPlan
) -> tuple[dict[str, list[ExistingRecord]], dict[str, ServiceNowError]]:
    """The chunk's look-up; if it fails while a probe look-up succeeds, each id on its own (GET only)."""
    plan.lookups += 1
    try:
        return client.find_by_correlation(table, ids), {}
    except (ServiceNowRequestError, ServiceNowTransientError):
        plan.lookups += 1
        client.find_by_correlation(table, ["ticketsync-lookup-probe"])  # raises when the instance is the cause
    found: dict[str, list[ExistingRecord]] = {}
    refused: dict[str, ServiceNowError] = {}
    for correlation_id in ids:
        plan.lookups += 1
        try:
            found.update(client.find_by_correlation(table, [correlation_id]))
        except (ServiceNowRequestError, ServiceNowTransientError) as exc:
            refused[correlation_id] = exc
    return found, refused


def _plan_case(plan: DryRunPlan, case: PreparedCase, found: Matches, attempts: int, max_attempts: int) -> bool:
    """Plan an adoption, a rejection or a failure; True when the row would be created (once its keys resolve)."""
    if found.exact:
        plan.adopt.append((case.correlation_id, found.exact[0].number or found.exact[0].sys_id))
    elif found.by_case:
        plan.reject.append((case.correlation_id, by_case_reason(case.correlation_id, found.by_case)[:500]))
    elif attempts >= max_attempts:
        plan.fail.append((case.correlation_id, f"already used {attempts} attempts and no record exists"))
    else:
        return True
    return False


def format_plan(plan: dict[str, Any]) -> str:
    """The report's summary of a dry run."""
    lines = [
        "DRY RUN: nothing was written to the source table or to ServiceNow",
        f"selected       {plan.get('selected', 0)}",
        f"would create   {plan.get('would_create', 0)}",
        f"would adopt    {plan.get('would_adopt', 0)}",
        f"would reject   {plan.get('would_reject', 0)}",
        f"would fail     {plan.get('would_fail', 0)}",
    ]
    if plan.get("create_ids"):
        lines.append("create: " + ", ".join(plan["create_ids"]))
    lines += [f"adopt: {request_id} -> existing record {number}" for request_id, number in plan.get("adopt", [])]
    lines += [f"reject: {request_id}: {reason}" for request_id, reason in plan.get("reject", [])]
    lines += [f"fail: {request_id}: {reason}" for request_id, reason in plan.get("fail", [])]
    return "\n".join(lines)


def _name(row: SourceRow) -> str:
    return row.request_id[:100] if isinstance(row.request_id, str) and row.request_id else f"row {row.id}"
