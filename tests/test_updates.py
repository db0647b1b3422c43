"""The pure planning of case updates (issue 13): changed fields, new notes, what a lost answer left missing."""

from __future__ import annotations

import pytest

from ticketsync.models import SourceRow
from ticketsync.transform import prepare
from ticketsync.updates import Snapshot, baseline, desired_fields, is_closed, plan_update, still_missing

SYS_ID = "a" * 32


def body(**changes: str | None):  # type: ignore[no-untyped-def]
    values = {"id": 1, "request_id": "REQ-1", "short_description": "Loan deferment", "category": "1",
              "contact_type": "web", "notes": "First note", "attempts": 0, "consumer": "c" * 32,
              "sold_product": "d" * 32, **changes}
    prepared = prepare(SourceRow.model_validate(values))
    assert not hasattr(prepared, "errors"), prepared
    return prepared.body  # type: ignore[union-attr]


def test_only_changed_fields_and_a_new_note_are_planned() -> None:
    sent = Snapshot(fields=desired_fields(body()), note="First note")

    plan = plan_update(1, SYS_ID, "sn_bom_loan_service", body(short_description="Deferment, 3 months",
                                                               notes="Payslip received"), sent)

    assert plan.body() == {"short_description": "Deferment, 3 months", "work_notes": "Payslip received"}
    assert plan.desired.note == "Payslip received"
    assert plan_update(1, SYS_ID, "t", body(), sent).empty


@pytest.mark.parametrize("note", [None, "", "  First note  "])
def test_an_emptied_or_unchanged_note_appends_nothing(note: str | None) -> None:
    sent = Snapshot(fields=desired_fields(body()), note="First note")
    assert plan_update(1, SYS_ID, "t", body(notes=note), sent).note is None


def test_a_cleared_field_is_sent_empty() -> None:
    sent = Snapshot(fields=desired_fields(body()), note="First note")
    assert plan_update(1, SYS_ID, "t", body(contact_type=None), sent).fields == {"contact_type": ""}


def test_snapshot_round_trip_and_a_broken_one_names_the_column() -> None:
    snapshot = Snapshot(fields={"category": "1"}, note="n")
    assert Snapshot.from_json(snapshot.to_json()) == snapshot
    assert Snapshot.from_json(None) is None
    with pytest.raises(ValueError, match="sent_fields is not a snapshot"):
        Snapshot.from_json("[1]")


def test_a_lost_answer_leaves_only_what_the_case_does_not_show() -> None:
    sent = Snapshot(fields=desired_fields(body()), note="First note")
    plan = plan_update(1, SYS_ID, "t", body(short_description="New", category="0", notes="Second"), sent)
    case = {**desired_fields(body()), "short_description": "New"}

    assert still_missing(plan, case, ["First note"]).body() == {"category": "0", "work_notes": "Second"}
    assert still_missing(plan, {**case, "category": "0"}, ["Second "]).empty


def test_baseline_of_a_row_synced_before_snapshots_reads_the_case() -> None:
    case = {**desired_fields(body()), "short_description": "as the agent left it"}
    sent = baseline(case, ["First note"], "First note")
    plan = plan_update(1, SYS_ID, "t", body(), sent)
    assert plan.body() == {"short_description": "Loan deferment"}  # the note is on the case already
    assert baseline(case, [], "First note").note is None


def test_closed_states() -> None:
    assert is_closed("3", "true")
    assert is_closed("7", "true")
    assert is_closed("10", "false")
    assert not is_closed("10", "true")
    assert not is_closed(None, None)
    assert is_closed("5", "true", closed_states=("5",))
