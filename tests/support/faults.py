"""What every fault test checks: each valid row is created exactly once, each invalid one rejected and never sent,
nothing left pending that should not be; and the figures each test reports."""

from __future__ import annotations

import fcntl
import json
import shutil
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from ticketsync.source import SourceTable
from ticketsync_dev.local import REPO
from ticketsync_dev.samples import is_invalid, sample_requests

TABLE = "sn_bom_loan_service"
RESULTS = REPO / ".artifacts" / "faults"


@dataclass(frozen=True)
class Backlog:
    """Sample requests, every ``invalid_every``-th breaking one rule."""

    count: int
    invalid_every: int = 12
    prefix: str = "REQ"
    start: int = 1

    def requests(self) -> list[dict[str, Any]]:
        return list(sample_requests(self.count, invalid_every=self.invalid_every, prefix=self.prefix,
                                    start=self.start))

    @property
    def invalid_ids(self) -> set[str]:
        return {f"{self.prefix}-{i:07d}" for i in range(self.start, self.start + self.count)
                if is_invalid(i, self.invalid_every)}

    @property
    def valid_ids(self) -> set[str]:
        return {f"{self.prefix}-{i:07d}" for i in range(self.start, self.start + self.count)} - self.invalid_ids


def source_rows(source: SourceTable) -> dict[str, dict[str, Any]]:
    columns = ("request_id", "status", "sys_id", "number", "error", "attempts", "sync_action")
    with source._transaction() as cursor:
        cursor.execute(f"SELECT {', '.join(columns)} FROM {source.table}")
        return {row[0]: dict(zip(columns, row, strict=True)) for row in cursor.fetchall()}


@dataclass
class Verdict:
    """The state of one sync after it ended, checked against the exactly-once rules."""

    rows: int
    created: int = 0
    adopted: int = 0
    rejected: int = 0
    failed: int = 0
    pending: int = 0
    records: int = 0
    duplicates: int = 0
    problems: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("problems")
        return data


def verdict(source: SourceTable, records: Iterable[dict[str, Any]], backlog: Backlog,
            *, failed_ok: bool = False) -> Verdict:
    """Check the source table against ServiceNow's records; ``problems`` lists every broken rule."""
    records = list(records)
    state = source_rows(source)
    per_correlation = Counter(record.get("correlation_id") for record in records)
    by_sys_id = {record["sys_id"]: record for record in records}
    statuses = Counter(row["status"] for row in state.values())
    actions = Counter(row["sync_action"] for row in state.values() if row["status"] == "created")
    result = Verdict(
        rows=len(state), created=actions["created"], adopted=actions["adopted"], rejected=statuses["rejected"],
        failed=statuses["failed"], pending=statuses["pending"], records=len(records),
        duplicates=sum(n - 1 for n in per_correlation.values() if n > 1),
    )
    problems = result.problems
    if result.duplicates:
        problems.append(f"duplicates: {sorted(k for k, n in per_correlation.items() if n > 1)[:10]}")
    if set(state) != backlog.valid_ids | backlog.invalid_ids:
        problems.append("the source table does not hold exactly the backlog")
    for request_id in sorted(backlog.valid_ids & set(state)):
        problem = _valid_row_problem(request_id, state[request_id], by_sys_id, per_correlation, failed_ok)
        if problem:
            problems.append(problem)
    for request_id in sorted(backlog.invalid_ids):
        row = state.get(request_id)
        if row is not None and (row["status"] != "rejected" or not row["error"]):
            problems.append(f"invalid {request_id} is {row['status']}")
        if request_id in per_correlation:
            problems.append(f"invalid {request_id} was sent")
    unexpected = set(per_correlation) - backlog.valid_ids
    if unexpected:
        problems.append(f"records for correlation ids not in the backlog: {sorted(map(str, unexpected))[:5]}")
    return result


def _valid_row_problem(request_id: str, row: dict[str, Any], by_sys_id: dict[str, dict[str, Any]],
                       per_correlation: Counter[Any], failed_ok: bool) -> str | None:
    """A valid row must be created and linked to its own record (or, where allowed, failed with no record)."""
    if row["status"] == "failed" and failed_ok:
        return f"{request_id} failed but a record exists" if request_id in per_correlation else None
    if row["status"] != "created":
        return f"{request_id} is {row['status']}: {row['error']}"
    record = by_sys_id.get(row["sys_id"])
    if record is None or record.get("correlation_id") != request_id or record.get("number") != row["number"]:
        return f"{request_id} is linked to {row['sys_id']}, which is not its record"
    return None


def save_result(group: str, name: str, result: dict[str, Any]) -> None:
    """Keep a test's figures for the summary printed at the end of the session (and for docs/reliability.md).
    Tests of one group may run in parallel processes (pytest-xdist): the file is locked while it is rewritten."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{group}.json"
    with (RESULTS / f"{group}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        data[name] = result
        path.write_text(json.dumps(data, indent=1, sort_keys=True))


def clear_results() -> None:
    """Called once per test session, before any test (by the pytest-xdist controller when it runs one)."""
    shutil.rmtree(RESULTS, ignore_errors=True)


def print_results(terminalreporter: Any) -> None:
    """The figures the fault tests saved in this session, one section per group."""
    for path in sorted(RESULTS.glob("*.json")) if RESULTS.is_dir() else []:
        data = json.loads(path.read_text())
        terminalreporter.section(f"ticketsync {path.stem}")
        columns = sorted({key for result in data.values() for key in result if key != "faults"})
        columns = [c for c in _ORDER if c in columns] + [c for c in columns if c not in _ORDER]
        terminalreporter.write_line(" | ".join(["case", *columns, "faults injected"]))
        for name, result in data.items():
            faults = ", ".join(f"{k}={v}" for k, v in sorted(result.get("faults", {}).items()))
            terminalreporter.write_line(" | ".join([name, *(str(result.get(c, "")) for c in columns), faults]))


_ORDER = ("rows", "created", "adopted", "rejected", "failed", "pending", "duplicates", "attempts", "requests",
          "throttled", "seconds")
