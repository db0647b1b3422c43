"""Rows as the source returns them: the columns read, and their conversion to :class:`SourceRow`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ticketsync.models import PRODUCER_COLUMNS, SourceRow

ROW_COLUMNS: tuple[str, ...] = ("id", *PRODUCER_COLUMNS, "attempts", "error")


def source_row(values: Sequence[Any], columns: Sequence[str] = ROW_COLUMNS) -> SourceRow:
    """A row read as ``columns`` (``ROW_COLUMNS``, then a definition's own columns; bytes from a bytea/blob column are
    passed on for validation to reject)."""
    data = dict(zip(columns, values, strict=True))
    for column in ("notes", *columns[len(ROW_COLUMNS):]):
        if isinstance(data.get(column), memoryview):
            data[column] = bytes(data[column])
    return SourceRow.model_validate(data)


def printable(value: Any) -> str:
    """A producer's value as safe text for logs and alerts: undecodable bytes shown as escapes, not raised on."""
    return str(value).encode("utf-8", "backslashreplace").decode("utf-8")
