"""Pure transform: a source row becomes a Table API body, or a rejection naming every bad column.

No I/O, no Airflow: this module is tested on its own and called by the validate and load tasks alike.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ticketsync.models import (
    DEFAULT_TARGET_TABLE,
    PRODUCER_COLUMNS,
    TARGETS,
    CaseBody,
    FieldError,
    KeyLookup,
    PreparedCase,
    Rejection,
    SourceRow,
    TargetSpec,
    ValidatedRequest,
    preview,
)


def _field_errors(error: ValidationError) -> list[FieldError]:
    found = []
    for item in error.errors(include_url=False):
        column = ".".join(str(part) for part in item["loc"]) or "row"
        context = item.get("ctx") or {}
        message = str(context["error"]) if "error" in context else str(item["msg"])
        found.append(FieldError(column, message))
    return found


def _column_order(error: FieldError) -> int:
    """Report errors in the table's column order, so the same row always gets the same reason."""
    if error.column in PRODUCER_COLUMNS:
        return PRODUCER_COLUMNS.index(error.column)
    return len(PRODUCER_COLUMNS)


def _given(value: Any) -> bool:
    return value is not None and not (isinstance(value, str) and not value.strip())


def _required_errors(values: dict[str, Any], spec: TargetSpec) -> list[FieldError]:
    """Columns the target table needs; judged on the raw values so they are named even when other rules fail.
    A reference field is given by its sys_id or by its business key."""
    errors = []
    for column in spec.required:
        key = spec.key_for(column)
        if _given(values[column]) or (key is not None and _given(values[key.column])):
            continue
        either = f" (give {column} or {key.column})" if key is not None else ""
        errors.append(FieldError(column, f"is required for {spec.table}{either}"))
    return errors


def _both_given_errors(values: dict[str, Any], spec: TargetSpec) -> list[FieldError]:
    """A reference given both as a sys_id and as a business key: which one is meant is not ours to guess."""
    return [
        FieldError(
            key.column,
            f"give either {key.field} (the sys_id) or {key.column} (the key), not both "
            f"({key.field} is {preview(str(values[key.field]))}, {key.column} is {preview(str(values[key.column]))})",
        )
        for key in spec.keys
        if _given(values[key.field]) and _given(values[key.column])
    ]


def validate_row(row: SourceRow) -> ValidatedRequest | Rejection:
    """Apply every rule to the producer's columns; collect all broken ones, not just the first."""
    values: dict[str, Any] = {column: getattr(row, column) for column in PRODUCER_COLUMNS}
    errors: list[FieldError] = []
    try:
        request = ValidatedRequest.model_validate(values)
    except ValidationError as exc:
        errors.extend(_field_errors(exc))
        request = None
    table = values["target_table"] if isinstance(values["target_table"], str) else None
    table = (table or "").strip() or DEFAULT_TARGET_TABLE
    spec = TARGETS.get(table)
    if spec is None:
        supported = ", ".join(sorted(TARGETS))
        errors.append(FieldError("target_table", f"{preview(table)} is not supported (supported: {supported})"))
    else:
        already = {error.column for error in errors}
        extra = [*_required_errors(values, spec), *_both_given_errors(values, spec)]
        errors.extend(e for e in extra if e.column not in already)
    if errors or request is None:
        return Rejection(row_id=row.id, errors=tuple(sorted(errors, key=_column_order)))
    if request.target_table == table:  # already the table's name as given: the copy would be equal
        return request
    return request.model_copy(update={"target_table": table})


# Each body field and the request field it is filled from. Both have the same type (the same rules: a test holds
# them equal), so a value that passed the request's rules passes the body's unchanged.
BODY_SOURCES: dict[str, str] = {
    "correlation_id": "request_id",
    "correlation_display": "source_system",
    "short_description": "short_description",
    "consumer": "consumer",
    "sold_product": "sold_product",
    "assignment_group": "assignment_group",
    "contact_type": "contact_type",
    "product": "product",
    "service_definition": "service_definition",
    "category": "category",
    "work_notes": "notes",
}


def to_body(request: ValidatedRequest) -> CaseBody:
    """Map source names to ServiceNow names: request_id → correlation_id, notes → work_notes, and so on.

    The values are not validated a second time: they passed the same rules as ``request``'s fields.
    """
    spec = TARGETS[request.target_table or DEFAULT_TARGET_TABLE]
    return spec.body_model.model_construct(**{name: getattr(request, source) for name, source in BODY_SOURCES.items()})


def prepare(row: SourceRow) -> PreparedCase | Rejection:
    """The whole transform of one row: validate, then build the body for its target table."""
    validated = validate_row(row)
    if isinstance(validated, Rejection):
        return validated
    table = validated.target_table or DEFAULT_TARGET_TABLE
    return PreparedCase(row_id=row.id, table=table, body=to_body(validated), keys=key_lookups(validated))


def key_lookups(request: ValidatedRequest) -> tuple[KeyLookup, ...]:
    """The business keys a validated request gives, to be resolved on the instance before it is sent."""
    spec = TARGETS[request.target_table or DEFAULT_TARGET_TABLE]
    found = []
    for key in spec.keys:
        value = getattr(request, key.column)
        if value is not None:
            found.append(KeyLookup(key, value))
    return tuple(found)
