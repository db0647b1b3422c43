"""Correlation ids as the instance compares them: without regard to case. Pure functions, no I/O.

ServiceNow's encoded queries ignore case, so ``correlation_idINcase-A1`` also finds a case whose correlation_id is
``CASE-a1``. A look-up answer is therefore sorted per request into the records that carry its id exactly (its own
record: adopted) and those that carry it in another case only (another request's record: the request is rejected,
naming that record, since the instance could never tell the two apart). Two requests of the source table whose
ids differ only in case are a conflict too: the earlier row (lower id) goes ahead and the later one is rejected,
naming the other, before anything is sent.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ticketsync.hooks.servicenow import ExistingRecord

# What a row whose correlation id was stored differently is compared on: the fields read back from a POST answer.
ECHO_FIELDS: tuple[str, ...] = ("correlation_id", "correlation_display", "short_description")


def fold(correlation_id: str) -> str:
    """An id as the instance compares it."""
    return correlation_id.lower()


@dataclass(frozen=True)
class Matches:
    """The records a look-up found for one request: its own, and other requests' that match only by case."""

    exact: list[ExistingRecord]
    by_case: list[ExistingRecord]


def match(found: Mapping[str, list[ExistingRecord]], correlation_id: str) -> Matches:
    """Split ``found`` (a look-up answer keyed by each record's own correlation_id) for one request."""
    wanted = fold(correlation_id)
    others = [
        record
        for key, records in found.items()
        if key != correlation_id and fold(key) == wanted
        for record in records
    ]
    return Matches(exact=list(found.get(correlation_id, [])), by_case=others)


def by_case_reason(correlation_id: str, records: Sequence[ExistingRecord]) -> str:
    """Why a request whose id matches another request's case only by case is rejected."""
    first = records[0]
    name = first.number or first.sys_id
    return (
        f"request_id: {correlation_id!r} differs only in case from the correlation_id {first.correlation_id!r} of "
        f"existing case {name} (sys_id {first.sys_id}), another request's case; ServiceNow compares correlation "
        "ids without regard to case, so the two cannot be told apart and this request was not sent. If it is a "
        "different request, give it a request_id that differs in more than case and replay it; if it is the same "
        "request, nothing needs to be done"
    )


@dataclass(frozen=True)
class SourceTwin:
    """A row of the source table whose request id equals another row's up to case."""

    row_id: int
    request_id: str
    status: str
    number: str | None = None


class CaseTwins:
    """The groups of source rows whose request ids are equal up to case, as read at the start of a load."""

    def __init__(self, twins: Iterable[SourceTwin]) -> None:
        self._groups: dict[str, list[SourceTwin]] = {}
        for twin in sorted(twins, key=lambda twin: twin.row_id):
            self._groups.setdefault(fold(twin.request_id), []).append(twin)

    def __bool__(self) -> bool:
        return bool(self._groups)

    def earlier_pending(self, row_id: int, request_id: str) -> SourceTwin | None:
        """The earliest row (lower id) still ``pending`` whose request id equals this one's up to case, if any:
        that row goes ahead and this one is rejected. Rows that ended ``rejected`` or ``failed`` do not hold it
        back (they have no case); one that ended ``created`` is found by the look-up, by case."""
        for twin in self._groups.get(fold(request_id), ()):
            if twin.row_id < row_id and twin.request_id != request_id and twin.status == "pending":
                return twin
        return None


def twin_reason(request_id: str, earlier: SourceTwin) -> str:
    """Why the later of two pending requests whose ids differ only in case is rejected."""
    return (
        f"request_id: {request_id!r} differs only in case from request {earlier.request_id!r} (row "
        f"{earlier.row_id}, earlier, still pending); ServiceNow compares correlation ids without regard to case, "
        "so only one of them can have a case: the earlier row goes ahead and this one was not sent. If it is a "
        "different request, give it a request_id that differs in more than case and replay it"
    )


def echo_problem(sent: Mapping[str, str], stored: Mapping[str, str]) -> tuple[bool, str] | None:
    """Compare a POST answer's echoed fields with what was sent.

    Returns None when they agree (or were not echoed), else ``(trusted, message)``: ``trusted`` is False when the
    answer's record carries another correlation id (not ours, or not findable by ours), True when the instance
    only shortened a text field (the record is ours; the row keeps it, with a warning).
    """
    correlation, echoed = sent.get("correlation_id", ""), stored.get("correlation_id")
    if echoed is not None and echoed != correlation:
        if echoed and correlation.startswith(echoed):
            return True, (
                f"warning: ServiceNow stored correlation_id truncated to {len(echoed)} of {len(correlation)} "
                f"characters ({echoed!r}): the field is shorter on this instance, so a look-up by request_id will "
                "not find this case again. Keep request_ids within the instance's correlation_id length (or widen "
                "the field); the case was created once and this row keeps it"
            )
        return False, (
            f"ServiceNow answered the POST with a record whose correlation_id is {echoed[:100]!r}, not "
            f"{correlation!r}: the answer is not this request's record, or a rule on the instance rewrote the id. "
            "Not retried (a retry could create a second case)"
        )
    shortened = [
        f"{name} to {len(stored[name])} of {len(value)} characters"
        for name, value in sent.items()
        if name != "correlation_id" and name in stored and stored[name] != value and value.startswith(stored[name])
    ]
    if shortened:
        return True, (
            "warning: ServiceNow stored " + ", ".join(shortened) + " (the fields are shorter on this instance): "
            "the case holds the shortened text; shorten the source value or widen the field"
        )
    return None
