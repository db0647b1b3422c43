"""The pure rules of case-insensitive correlation: matching look-up answers, pending case twins, POST echoes."""

from __future__ import annotations

from ticketsync.correlation import CaseTwins, SourceTwin, by_case_reason, echo_problem, match, twin_reason
from ticketsync.hooks.servicenow import ExistingRecord


def record(correlation_id: str, number: str) -> ExistingRecord:
    return ExistingRecord(sys_id=number.lower() * 2, number=number, correlation_id=correlation_id, created_on="")


def test_match_splits_a_look_up_answer_into_own_and_by_case_records() -> None:
    found = {"Case-A1": [record("Case-A1", "LSC1")], "CASE-a1": [record("CASE-a1", "LSC2")], "B": [record("B", "L3")]}
    own = match(found, "Case-A1")
    assert [r.number for r in own.exact] == ["LSC1"]
    assert [r.number for r in own.by_case] == ["LSC2"]
    other = match(found, "case-a1")
    assert other.exact == []
    assert sorted(r.number or "" for r in other.by_case) == ["LSC1", "LSC2"]
    assert match(found, "C") == match({}, "C")
    assert "existing case LSC2" in by_case_reason("case-a1", [found["CASE-a1"][0]])


def test_only_an_earlier_pending_twin_holds_a_row_back() -> None:
    twins = CaseTwins([SourceTwin(9, "ab", "pending"), SourceTwin(4, "AB", "pending"), SourceTwin(2, "Ab", "failed"),
                       SourceTwin(20, "x", "pending")])
    assert twins.earlier_pending(4, "AB") is None  # the earliest pending one goes ahead (row 2 ended failed)
    earlier = twins.earlier_pending(9, "ab")
    assert earlier is not None
    assert earlier.row_id == 4
    assert "differs only in case from request 'AB' (row 4" in twin_reason("ab", earlier)
    assert twins.earlier_pending(30, "zz") is None
    assert not CaseTwins([])


def test_echo_problems() -> None:
    sent = {"correlation_id": "REQ-123456", "short_description": "Loan forgiveness", "correlation_display": "web"}
    assert echo_problem(sent, {}) is None
    assert echo_problem(sent, dict(sent)) is None
    trusted, text = echo_problem(sent, {**sent, "correlation_id": "REQ-12"}) or (None, "")
    assert trusted is True
    assert "truncated to 6 of 10 characters" in text
    trusted, text = echo_problem(sent, {**sent, "correlation_id": "REQ-999"}) or (None, "")
    assert trusted is False
    assert "whose correlation_id is 'REQ-999'" in text
    trusted, text = echo_problem(sent, {**sent, "correlation_id": ""}) or (None, "")
    assert trusted is False
    trusted, text = echo_problem(sent, {**sent, "short_description": "Loan"}) or (None, "")
    assert trusted is True
    assert "short_description to 4 of 16 characters" in text
    assert echo_problem(sent, {**sent, "short_description": "Rewritten by a rule"}) is None  # not a truncation
