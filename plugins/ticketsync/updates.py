"""Pure planning of a case update (issue 13): which fields changed since the sync last applied them, whether the
row's note is new, and what is still missing after a PATCH whose answer was lost. No I/O, no Airflow."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ticketsync.models import CaseBody

# The loan's updatable fields (the ``ticket_requests`` contract); a definition's body type carries its own
# (:attr:`ticketsync.models.CaseBody.updatable_fields`, :meth:`ticketsync.definitions.SyncDefinition.updatable_fields`).
UPDATABLE_FIELDS: tuple[str, ...] = CaseBody.updatable_fields
CLOSED_STATES: tuple[str, ...] = ("3", "7")  # CSM Closed, Cancelled
_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps(..., ensure_ascii=False) without a new encoder each time


@dataclass(frozen=True)
class Snapshot:
    """What the sync last applied to a case: its fields as written, and the last work note sent (``sent_fields``)."""

    fields: Mapping[str, str]
    note: str | None = None

    def to_json(self) -> str:
        return _JSON.encode({"fields": dict(sorted(self.fields.items())), "note": self.note})

    @classmethod
    def from_json(cls, text: str | None) -> Snapshot | None:
        """The stored snapshot, or None for a row synced before snapshots existed (NULL). A value that is not a
        snapshot raises ``ValueError`` naming the column."""
        if text is None:
            return None
        try:
            data = json.loads(text)
            fields = {str(key): str(value) for key, value in data["fields"].items()}
            note = data.get("note")
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"sent_fields is not a snapshot ({exc}); set it to NULL to re-read the case") from exc
        return cls(fields=fields, note=None if note is None else str(note))


def updatable_fields(body: CaseBody) -> tuple[str, ...]:
    """The fields an update of this body's case may change: its type's (the loan's, or its definition's)."""
    return type(body).updatable_fields


def desired_fields(body: CaseBody) -> dict[str, str]:
    """The updatable fields as the row wants them; a field the row left empty is wanted empty ("")."""
    sent = body.to_json()
    return {name: sent.get(name, "") for name in updatable_fields(body)}


def created_snapshot(body: CaseBody) -> Snapshot:
    """The snapshot of a case the sync just created from ``body``: its fields and its first note."""
    return Snapshot(fields=desired_fields(body), note=body.work_notes)


def same_note(a: str | None, b: str | None) -> bool:
    """Notes compare without the surrounding white space the instance may trim."""
    return (a or "").strip() == (b or "").strip()


def baseline(
    case_fields: Mapping[str, str], journal_values: Iterable[str], note: str | None,
    updatable: Iterable[str] = UPDATABLE_FIELDS,
) -> Snapshot:
    """The snapshot of a row synced before snapshots existed: the case's current ``updatable`` fields (the loan's
    by default), and the row's note counted as sent when the case's journal already holds it (it was posted as the
    create's ``work_notes``)."""
    fields = {name: str(case_fields.get(name) or "") for name in updatable}
    held = note is not None and any(same_note(note, value) for value in journal_values)
    return Snapshot(fields=fields, note=note if held else None)


@dataclass(frozen=True)
class UpdatePlan:
    """One row's update: the changed fields, the new note (or None), and the snapshot once both are applied."""

    row_id: int
    sys_id: str
    table: str
    fields: Mapping[str, str]
    note: str | None
    desired: Snapshot
    previous: Snapshot = field(default_factory=lambda: Snapshot(fields={}))

    @property
    def empty(self) -> bool:
        return not self.fields and self.note is None

    def body(self) -> dict[str, str]:
        """The PATCH body: the changed fields only, and the note as one ``work_notes`` entry."""
        body = dict(self.fields)
        if self.note is not None:
            body["work_notes"] = self.note
        return body

    def note_only(self) -> UpdatePlan:
        """The policy ``note_only`` for a closed case: the fields stay as they were, the note alone is appended."""
        return replace(self, fields={}, desired=Snapshot(fields=self.previous.fields, note=self.desired.note))


def plan_update(row_id: int, sys_id: str, table: str, body: CaseBody, sent: Snapshot) -> UpdatePlan:
    """Changed fields = desired fields that differ from ``sent``; the note is new when it differs from the last one
    sent (an emptied note appends nothing: a journal entry cannot be taken back)."""
    desired = desired_fields(body)
    changed = {name: value for name, value in desired.items() if sent.fields.get(name, "") != value}
    note = body.work_notes
    new_note = note if note is not None and note.strip() and not same_note(note, sent.note) else None
    snapshot = Snapshot(fields=desired, note=note if note is not None else sent.note)
    return UpdatePlan(row_id, sys_id, table, changed, new_note, snapshot, sent)


def still_missing(plan: UpdatePlan, case_fields: Mapping[str, str], journal_values: Iterable[str]) -> UpdatePlan:
    """After a PATCH whose answer was lost: what the case does not show yet. A field whose value the case holds is
    applied; the note is applied when an entry of the journal (read since the attempt began) holds it."""
    fields = {name: value for name, value in plan.fields.items() if str(case_fields.get(name) or "") != value}
    note = plan.note
    if note is not None and any(same_note(note, value) for value in journal_values):
        note = None
    return replace(plan, fields=fields, note=note)


def is_closed(state: str | None, active: str | None, closed_states: Iterable[str] = CLOSED_STATES) -> bool:
    """A case an update must not change silently: a closed or cancelled state, or ``active`` false."""
    return (state or "") in set(closed_states) or (active or "").lower() == "false"
