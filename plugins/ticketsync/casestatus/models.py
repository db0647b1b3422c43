"""Pure parts of the status pull: the case state read from the instance, timestamps, and the paged queries."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict

SN_TIMESTAMP = "%Y-%m-%d %H:%M:%S"
_SN_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_SYS_ID = re.compile(r"[0-9a-f]{32}")
STATUS_FIELDS: tuple[str, ...] = ("sys_id", "number", "state", "sys_updated_on")
# Keeps the pull to the cases an integration created: ours all carry the request_id in correlation_id.
OUR_CASES = "correlation_idISNOTEMPTY"
ORDER = "ORDERBYsys_updated_on^ORDERBYsys_id"
NOT_FOUND_PREFIX = "case not found on the instance"


class UnexpectedAnswer(ValueError):
    """The instance's answer does not have the shape the pull relies on: the pull stops, nothing is guessed."""


class CaseState(BaseModel):
    """One case as the status pull reads it (``sysparm_display_value=all``)."""

    model_config = ConfigDict(frozen=True)

    sys_id: str
    number: str | None
    state: str
    state_label: str
    updated_on: str  # sys_updated_on as the instance writes it: 'YYYY-MM-DD HH:MM:SS', UTC

    @property
    def updated_at(self) -> datetime:
        return parse_sn_timestamp(self.updated_on)


def parse_sn_timestamp(text: str) -> datetime:
    """``YYYY-MM-DD HH:MM:SS`` (UTC, as the instance stores dates) as an aware datetime."""
    if not _SN_TIMESTAMP.fullmatch(text):
        raise UnexpectedAnswer(f"{text!r} is not a ServiceNow date-time (YYYY-MM-DD HH:MM:SS)")
    return datetime.strptime(text, SN_TIMESTAMP).replace(tzinfo=UTC)


def format_sn_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(SN_TIMESTAMP)


def window_start(watermark: str, overlap_seconds: float) -> str:
    """Where a pull starts: the watermark less the overlap, so that a change stamped in a second already read
    (or committed after a later one) is read again rather than lost."""
    return format_sn_timestamp(parse_sn_timestamp(watermark) - timedelta(seconds=overlap_seconds))


def first_page_query(start: str) -> str:
    """Every case of ours changed at or after ``start``, oldest change first (ties by sys_id)."""
    return f"sys_updated_on>={start}^{OUR_CASES}^{ORDER}"


def next_page_query(last: CaseState) -> str:
    """The cases after ``last`` in (sys_updated_on, sys_id) order: a keyset, so a case that changes during the
    pull moves behind the cursor and is read again instead of shifting an offset past an unread case."""
    at = last.updated_on
    return f"sys_updated_on>{at}^{OUR_CASES}^NQsys_updated_on={at}^sys_id>{last.sys_id}^{OUR_CASES}^{ORDER}"


def _field(record: dict[str, Any], name: str) -> tuple[str, str]:
    """(value, display_value) of one field of a ``sysparm_display_value=all`` record."""
    raw = record.get(name)
    if isinstance(raw, dict):
        value, label = raw.get("value"), raw.get("display_value")
        return ("" if value is None else str(value)), ("" if label is None else str(label))
    if raw is None:
        raise UnexpectedAnswer(f"the answer has no {name!r}: the integration user may not read it")
    return str(raw), str(raw)


def case_state(record: Any) -> CaseState:
    """A case from a list answer; an answer without a usable sys_id or sys_updated_on stops the pull."""
    if not isinstance(record, dict):
        raise UnexpectedAnswer("a list answer holds something that is not a record")
    sys_id, _ = _field(record, "sys_id")
    if not _SYS_ID.fullmatch(sys_id):
        raise UnexpectedAnswer(f"a record's sys_id {sys_id[:40]!r} is not 32 hex digits")
    updated_on, _ = _field(record, "sys_updated_on")
    parse_sn_timestamp(updated_on)
    state, label = _field(record, "state")
    number, _ = _field(record, "number")
    return CaseState(sys_id=sys_id, number=number or None, state=state, state_label=label, updated_on=updated_on)


def not_found_message(number: str | None, sys_id: str) -> str:
    """The ``error`` of a created row whose case the existence check did not find (its status stays created)."""
    return (
        f"{NOT_FOUND_PREFIX}: {number or 'case'} (sys_id {sys_id}) was not returned by the status check; it was "
        "deleted there, or an ACL hides it from the integration user. The row keeps its last known case state. "
        "Ask the ServiceNow team; to open a new case, replay the row (request_ids)"
    )
