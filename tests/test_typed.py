"""Templated operator arguments parsed into their types, with a named error for a bad one."""

from __future__ import annotations

import pytest

from ticketsync.typed import InvalidValue, flag, id_list, optional_positive


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, False), ("", False), ("None", False), ("true", True), (" Yes ", True), ("off", False), (1, True),
     (False, False)],
)
def test_flag(value: object, expected: bool) -> None:
    assert flag(value, name="is_dry_run") is expected


@pytest.mark.parametrize("bad", ["maybe", 2, [True]])
def test_a_flag_that_is_not_true_or_false_is_refused(bad: object) -> None:
    with pytest.raises(InvalidValue, match="is_dry_run must be true or false, got"):
        flag(bad, name="is_dry_run")


@pytest.mark.parametrize(
    ("value", "expected"),
    [(None, []), ("None", []), ("REQ-1, REQ-2\nREQ-3,", ["REQ-1", "REQ-2", "REQ-3"]), ([" a ", "", 7], ["a", "7"])],
)
def test_id_list(value: object, expected: list[str]) -> None:
    assert id_list(value, name="request_ids") == expected


@pytest.mark.parametrize(("value", "expected"), [(None, None), ("", None), ("0", None), (0, None), ("2.5", 2.5)])
def test_optional_positive(value: object, expected: float | None) -> None:
    assert optional_positive(value, name="rate_limit") == expected


@pytest.mark.parametrize("bad", ["-1", "fast", "inf", [5]])
def test_a_negative_or_non_numeric_optional_number_is_refused(bad: object) -> None:
    with pytest.raises(InvalidValue, match="rate_limit must be a number of at least 0, got"):
        optional_positive(bad, name="rate_limit")
