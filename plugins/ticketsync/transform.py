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
    PreparedCase,
    Rejection,
    SourceRow,
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


def _required_errors(values: dict[str, Any], required: tuple[str, ...], table: str) -> list[FieldError]:
    """Columns the target table needs; judged on the raw values so they are named even when other rules fail."""
    return [
        FieldError(column, f"is required for {table}")
        for column in required
        if values[column] is None or (isinstance(values[column], str) and not values[column].strip())
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
        errors.extend(e for e in _required_errors(values, spec.required, spec.table) if e.column not in already)
    if errors or request is None:
        return Rejection(row_id=row.id, errors=tuple(sorted(errors, key=_column_order)))
    return request.model_copy(update={"target_table": table})


def to_body(request: ValidatedRequest) -> CaseBody:
    """Map source names to ServiceNow names: request_id → correlation_id, notes → work_notes, and so on."""
    spec = TARGETS[request.target_table or DEFAULT_TARGET_TABLE]
    return spec.body_model(
        correlation_id=request.request_id,
        correlation_display=request.source_system,
        short_description=request.short_description,
        consumer=request.consumer,
        sold_product=request.sold_product,
        assignment_group=request.assignment_group,
        contact_type=request.contact_type,
        product=request.product,
        service_definition=request.service_definition,
        category=request.category,
        work_notes=request.notes,
    )


def prepare(row: SourceRow) -> PreparedCase | Rejection:
    """The whole transform of one row: validate, then build the body for its target table."""
    validated = validate_row(row)
    if isinstance(validated, Rejection):
        return validated
    return PreparedCase(
        row_id=row.id,
        table=validated.target_table or DEFAULT_TARGET_TABLE,
        body=to_body(validated),
    )
