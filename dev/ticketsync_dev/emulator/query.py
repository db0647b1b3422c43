"""Encoded queries (`sysparm_query`): parsing into conditions, and matching rows against them.

A query is a list of parts joined by `^NQ` (OR-ed); a part is a list of groups joined by `^` (AND-ed); a group is a
list of conditions joined by `^OR`. A term that cannot be parsed, or that names a field the table does not have, is
dropped silently, as ServiceNow does; a query with nothing left in it matches every record.

String conditions compare without regard to case, as the instance does (`correlation_idINabc` finds `ABC`): each
condition holds its value case-folded, and rows are tested (and indexed, see the store) by their folded values.
Dates are stored as `YYYY-MM-DD HH:MM:SS` in UTC, so `<`, `<=`, `>`, `>=` compare them to the second; a value
`javascript:gs.dateGenerate('2026-12-01','10:00:00')` is evaluated to `2026-12-01 10:00:00` first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Row = Sequence[str]

# Longest first where one operator is a prefix of another.
OPERATORS: tuple[str, ...] = (
    "ISNOTEMPTY",
    "ISEMPTY",
    "NOT IN",
    "NOT LIKE",
    "STARTSWITH",
    "ENDSWITH",
    "LIKE",
    "IN",
    "!=",
    "<=",
    ">=",
    "=",
    "<",
    ">",
)
INDEXABLE_OPERATORS = frozenset({"=", "IN"})
_LIST_OPERATORS = frozenset({"IN", "NOT IN"})
_UNARY_OPERATORS = frozenset({"ISEMPTY", "ISNOTEMPTY"})
_FIELD = re.compile(r"[a-z_][a-z0-9_]*")
_ESCAPED_CARET = "\x00"
# `javascript:gs.dateGenerate('2026-12-01','10:00:00')` ('start' and 'end' for the first and last second of the day)
_DATE_GENERATE = re.compile(r"javascript:gs\.dateGenerate\(\s*'(\d{4}-\d{2}-\d{2})'\s*,\s*'([^']*)'\s*\)")
_DAY_BOUNDS = {"start": "00:00:00", "end": "23:59:59"}


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def fold(value: str) -> str:
    """A value as the instance compares it in an encoded query: without regard to case."""
    return value.lower()


def _compare(value: str, wanted: str) -> int:
    """-1, 0 or 1; numerically when both sides are numbers, else as strings without regard to case."""
    left, right = _as_number(value), _as_number(wanted)
    if left is not None and right is not None:
        return (left > right) - (left < right)
    value = fold(value)
    return (value > wanted) - (value < wanted)


@dataclass(frozen=True)
class Condition:
    """One `field<op>value` term, bound to the position of its field in a row.

    ``value`` is the term's value as written; ``folded`` and ``values`` (of ``IN``/``NOT IN``) are case-folded.
    """

    name: str
    position: int
    operator: str
    value: str
    values: frozenset[str] = field(default_factory=frozenset)
    folded: str = ""

    @property
    def indexable(self) -> bool:
        return self.operator in INDEXABLE_OPERATORS

    def accepted_values(self) -> frozenset[str]:
        """The case-folded values an indexable condition accepts."""
        return self.values if self.operator == "IN" else frozenset((self.folded,))

    def test(self, row: Row) -> bool:
        return _TESTS[self.operator](row[self.position], self)


_TESTS: dict[str, Callable[[str, Condition], bool]] = {
    "=": lambda value, cond: fold(value) == cond.folded,
    "!=": lambda value, cond: fold(value) != cond.folded,
    "IN": lambda value, cond: fold(value) in cond.values,
    "NOT IN": lambda value, cond: fold(value) not in cond.values,
    "STARTSWITH": lambda value, cond: fold(value).startswith(cond.folded),
    "ENDSWITH": lambda value, cond: fold(value).endswith(cond.folded),
    "LIKE": lambda value, cond: cond.folded in fold(value),
    "NOT LIKE": lambda value, cond: cond.folded not in fold(value),
    "ISEMPTY": lambda value, _cond: value == "",
    "ISNOTEMPTY": lambda value, _cond: value != "",
    "<": lambda value, cond: _compare(value, cond.folded) < 0,
    "<=": lambda value, cond: _compare(value, cond.folded) <= 0,
    ">": lambda value, cond: _compare(value, cond.folded) > 0,
    ">=": lambda value, cond: _compare(value, cond.folded) >= 0,
}

Group = tuple[Condition, ...]
Part = tuple[Group, ...]


@dataclass(frozen=True)
class EncodedQuery:
    """A parsed `sysparm_query`: OR-ed parts of AND-ed groups of OR-ed conditions, plus the sort order."""

    parts: tuple[Part, ...] = ()
    order: tuple[tuple[int, bool], ...] = ()  # (field position, descending)

    @property
    def matches_all(self) -> bool:
        return not self.parts

    def matches(self, row: Row) -> bool:
        return self.matches_all or any(_part_matches(part, row) for part in self.parts)


def _part_matches(part: Part, row: Row) -> bool:
    return all(any(cond.test(row) for cond in group) for group in part)


def parse_condition(term: str, positions: Mapping[str, int]) -> Condition | None:
    """`field<op>value` bound to `positions`, or None when the term is not valid for this table."""
    match = _FIELD.match(term)
    if match is None or match.group() not in positions:
        return None
    name, rest = match.group(), term[match.end() :]
    operator = next((op for op in OPERATORS if rest.startswith(op)), None)
    if operator is None:
        return None
    value = _evaluated(rest[len(operator) :])
    if operator in _UNARY_OPERATORS and value:
        return None
    values = frozenset(fold(value).split(",")) if operator in _LIST_OPERATORS else frozenset()
    return Condition(name, positions[name], operator, value, values, fold(value))


def _evaluated(value: str) -> str:
    """The value of a `javascript:gs.dateGenerate(date, time)` term as the instance computes it (the emulator's
    users are in UTC), else the value as written (other scripts are not evaluated)."""
    match = _DATE_GENERATE.fullmatch(value.strip())
    if match is None:
        return value
    day, moment = match.groups()
    return f"{day} {_DAY_BOUNDS.get(moment, moment)}"


def _parse_order(term: str, positions: Mapping[str, int]) -> tuple[int, bool] | None:
    descending = term.startswith("ORDERBYDESC")
    name = term[len("ORDERBYDESC") :] if descending else term[len("ORDERBY") :]
    position = positions.get(name)
    return None if position is None else (position, descending)


def _parse_part(chunk: str, positions: Mapping[str, int], order: list[tuple[int, bool]]) -> Part:
    groups: list[list[Condition]] = []
    for raw in chunk.split("^"):
        term = raw.replace(_ESCAPED_CARET, "^")
        if term.startswith("ORDERBY"):
            sort_key = _parse_order(term, positions)
            if sort_key is not None:
                order.append(sort_key)
            continue
        is_or = term.startswith("OR")
        condition = parse_condition(term[2:] if is_or else term, positions)
        if condition is None:
            continue
        if is_or and groups:
            groups[-1].append(condition)
        else:
            groups.append([condition])
    return tuple(tuple(group) for group in groups)


def parse_query(text: str, positions: Mapping[str, int]) -> EncodedQuery:
    """Parse an encoded query against a table's field positions, dropping what does not apply."""
    order: list[tuple[int, bool]] = []
    parts = [_parse_part(chunk, positions, order) for chunk in text.replace("^^", _ESCAPED_CARET).split("^NQ")]
    return EncodedQuery(tuple(part for part in parts if part), tuple(order))
