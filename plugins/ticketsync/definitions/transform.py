"""The transform a sync definition drives: a source row becomes the body of the definition's table, or a rejection
naming every bad column. Pure, like :mod:`ticketsync.transform`; the same rules give the same messages.

The loan definition keeps its hand-written transform (:func:`ticketsync.transform.prepare`, the contract of
``ticket_requests`` with its per-row ``target_table``); a test keeps it equal to its definition. Every other
definition is transformed here, from its fields, constants, rules, business keys and correlation columns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import ConfigDict, ValidationError, create_model

from ticketsync.definitions import FieldSpec, SyncDefinition, packaged_definition
from ticketsync.models import (
    DEFAULT_TARGET_TABLE,
    BusinessKey,
    CaseBody,
    Correlation,
    FieldError,
    KeyLookup,
    PreparedCase,
    Rejection,
    RequestId,
    SourceRow,
    _business_key,
    _max_length,
    _rule,
    _sys_id,
    _text,
    preview,
)
from ticketsync.transform import _field_errors, _given, prepare

Prepare = Callable[[SourceRow], PreparedCase | Rejection]


def _choice(spec: FieldSpec) -> Callable[[str], str]:
    """A choice value (compared without case) or one of its labels, mapped to its value."""
    choices = {choice.lower(): choice for choice in spec.choices or ()}
    labels = {label.lower(): value for label, value in spec.labels.items()}
    accepted = ", ".join(spec.choices or ()) + (f" or {', '.join(spec.labels)}" if labels else "")

    def check(value: str) -> str:
        candidate = value.strip().lower()
        if candidate in choices:
            return choices[candidate]
        if candidate in labels:
            return labels[candidate]
        raise ValueError(f"must be one of {accepted}, got {preview(value)}")

    return check


def _choice_text(value: Any) -> str:
    """A choice may be written as a whole number (``priority`` 2), as the loan's ``category`` may."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _text(value)


def _column_rule(spec: FieldSpec) -> Any:
    steps: list[Callable[[Any], Any]] = [_choice_text if spec.choices else _text]
    if spec.sys_id:
        steps.append(_sys_id)
    if spec.choices:
        steps.append(_choice(spec))
    if spec.max_length:
        steps.append(_max_length(spec.max_length))
    return Annotated[str | None, _rule(*steps, required=spec.required and spec.key is None)]


def _key_rule(spec: FieldSpec) -> Any:
    assert spec.key is not None
    steps: list[Callable[[Any], Any]] = [_text, _business_key]
    if spec.key.max_length:
        steps.append(_max_length(spec.key.max_length))
    return Annotated[str | None, _rule(*steps)]


class DefinitionTransform:
    """The transform of one definition's rows.

    :param definition: the sync definition whose fields, rules, keys and correlation columns apply
    """

    def __init__(self, definition: SyncDefinition) -> None:
        self.definition = definition
        self.table = definition.target_table
        self.columns = definition.source_columns()
        correlation = definition.correlation
        fields: dict[str, Any] = {correlation.id: (RequestId, ...)}
        if correlation.display:
            fields[correlation.display] = (Correlation, None)
        keys = []
        for name, spec in definition.fields.items():
            if spec.column:
                fields[spec.column] = (_column_rule(spec), None)
            if spec.key:
                fields[spec.key.column] = (_key_rule(spec), None)
                keys.append(BusinessKey(spec.key.column, name, spec.key.table, spec.key.field, spec.key.on_no_match))
        self.keys = tuple(keys)
        self.request_model = create_model(  # type: ignore[call-overload]
            f"{self.table}_request", __config__=ConfigDict(frozen=True, extra="forbid"), **fields
        )
        own = {name: (str | None, None) for name in definition.fields if name not in CaseBody.model_fields}
        self.body_model: type[CaseBody] = create_model(f"{self.table}_body", __base__=CaseBody, **own)  # type: ignore[call-overload]
        self.body_model.updatable_fields = definition.updatable_fields()  # what an update of its cases may change

    def prepare(self, row: SourceRow) -> PreparedCase | Rejection:
        """Validate the row by the definition's rules, then build the body; every broken rule is named."""
        values = {column: getattr(row, column, None) for column in self.columns}
        errors: list[FieldError] = []
        try:
            request = self.request_model.model_validate(values)
        except ValidationError as exc:
            errors = _field_errors(exc)
            request = None
        named = {error.column for error in errors}
        errors += [e for e in self._required_errors(values) + self._both_given_errors(values) if e.column not in named]
        if errors or request is None:
            order = {column: index for index, column in enumerate(self.columns)}
            ordered = sorted(errors, key=lambda e: order.get(e.column, len(order)))
            return Rejection(row_id=row.id, errors=tuple(ordered))
        return PreparedCase(row_id=row.id, table=self.table, body=self._body(request), keys=self._lookups(request))

    def _required_errors(self, values: dict[str, Any]) -> list[FieldError]:
        """A required reference with a key is given by its sys_id column or its key (as in ticket_requests)."""
        errors = []
        for spec in self.definition.fields.values():
            if not spec.required or spec.key is None:
                continue
            if (spec.column and _given(values[spec.column])) or _given(values[spec.key.column]):
                continue
            either = f" (give {spec.column} or {spec.key.column})" if spec.column else ""
            errors.append(FieldError(spec.column or spec.key.column, f"is required for {self.table}{either}"))
        return errors

    def _both_given_errors(self, values: dict[str, Any]) -> list[FieldError]:
        return [
            FieldError(
                spec.key.column,
                f"give either {spec.column} (the sys_id) or {spec.key.column} (the key), not both "
                f"({spec.column} is {preview(str(values[spec.column]))}, "
                f"{spec.key.column} is {preview(str(values[spec.key.column]))})",
            )
            for spec in self.definition.fields.values()
            if spec.key and spec.column and _given(values[spec.column]) and _given(values[spec.key.column])
        ]

    def _body(self, request: Any) -> CaseBody:
        correlation = self.definition.correlation
        body: dict[str, Any] = dict.fromkeys(self.body_model.model_fields)
        body["correlation_id"] = getattr(request, correlation.id)
        body["correlation_display"] = getattr(request, correlation.display) if correlation.display else None
        for name, spec in self.definition.fields.items():
            if spec.value is not None:
                body[name] = spec.value
            elif spec.column:
                body[name] = getattr(request, spec.column)
        # validated field by field above, by the definition's rules: built without the loan's rules
        return self.body_model.model_construct(**body)

    def _lookups(self, request: Any) -> tuple[KeyLookup, ...]:
        return tuple(
            KeyLookup(key, value) for key in self.keys if (value := getattr(request, key.column)) is not None
        )


def is_loan(definition: SyncDefinition | None) -> bool:
    """The loan definition (or none): its rows keep the ``ticket_requests`` contract, each naming its
    ``target_table``; every other definition's cases are all in its own target table."""
    return definition is None or definition == packaged_definition(DEFAULT_TARGET_TABLE)


def transform_for(definition: SyncDefinition | None) -> Prepare:
    """The transform of a definition's rows: the loan's own for the loan definition (or none), else a
    :class:`DefinitionTransform`."""
    if definition is None or is_loan(definition):
        return prepare
    return DefinitionTransform(definition).prepare
