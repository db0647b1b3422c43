"""A sync definition: which source table feeds which ServiceNow table, field by field, with its rules.

A definition is a YAML file validated by :class:`SyncDefinition` (docs/definitions.md, docs/adr/0009). It names
the target table, the source table, each target field's source column or constant and its rules (required, max
length, choices, sys_id shape), how a business key resolves the field (reference table, key field, what to do
with no match), and the correlation columns.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Self

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,79}")
_DAG_ID = re.compile(r"[A-Za-z0-9_.\-]{1,250}")


def _identifier(value: str) -> str:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"must be a lower-case name of letters, digits and underscores, got {value!r}")
    return value


def _dag_id(value: str) -> str:
    if not _DAG_ID.fullmatch(value):
        raise ValueError(f"must be a DAG id of letters, digits, '_', '.' and '-', got {value!r}")
    return value


def _target_field(value: str) -> str:
    _identifier(value)
    if value.startswith("sys_"):
        raise ValueError(f"{value!r}: fields starting with sys_ are written by the instance, never sent")
    return value


Name = Annotated[str, AfterValidator(_identifier)]
TargetField = Annotated[str, AfterValidator(_target_field)]
DagId = Annotated[str, AfterValidator(_dag_id)]
_STRICT = ConfigDict(extra="forbid", frozen=True)


class KeySpec(BaseModel):
    """A business key that fills a reference field: looked up in ``table`` by ``field``, one query per batch."""

    model_config = _STRICT

    column: Name = Field(description="the source column holding the key")
    table: Name = Field(description="the table the key is looked up in (the field's reference table or a subclass)")
    field: Name = Field(description="the key's field in that table")
    on_no_match: Literal["reject", "empty"] = Field("reject", description="reject the row, or leave the field empty")
    max_length: PositiveInt | None = Field(None, description="longest key accepted")


class FieldSpec(BaseModel):
    """One target field: where its value comes from, and the rules it must pass before anything is sent."""

    model_config = _STRICT

    column: Name | None = Field(None, description="the source column the value is read from")
    value: str | None = Field(None, description="a constant sent in every record")
    required: bool = False
    max_length: PositiveInt | None = None
    choices: tuple[str, ...] | None = Field(None, description="the values accepted (compared without case)")
    labels: dict[str, str] = Field(default_factory=dict, description="label -> value, e.g. question -> 0")
    sys_id: bool = Field(False, description="the value must be a 32-character hexadecimal sys_id")
    reference: Name | None = Field(None, description="the table a reference field points to (sys_dictionary)")
    key: KeySpec | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.column is not None and self.value is not None:
            raise ValueError("give column or value, not both")
        if self.column is None and self.value is None and self.key is None:
            raise ValueError("give a source column, a constant value, or a business key")
        if self.key is not None and not self.sys_id:
            raise ValueError("a business key fills a reference field: set sys_id: true")
        if self.key is not None and self.key.column == self.column:
            raise ValueError("the key column must differ from the sys_id column")
        unknown = sorted(set(self.labels.values()) - set(self.choices or ()))
        if unknown:
            raise ValueError(f"labels map to values that are not choices: {', '.join(unknown)}")
        if self.value is not None:
            self._check_constant(self.value)
        return self

    def _check_constant(self, value: str) -> None:
        if self.max_length is not None and len(value) > self.max_length:
            raise ValueError(f"the constant {value!r} is longer than max_length {self.max_length}")
        if self.choices is not None and value.lower() not in {c.lower() for c in self.choices}:
            raise ValueError(f"the constant {value!r} is not one of the choices")
        if self.sys_id and not re.fullmatch(r"[0-9a-f]{32}", value):
            raise ValueError(f"the constant {value!r} is not a sys_id")


class SourceSpec(BaseModel):
    model_config = _STRICT

    table: Name = Field(description="the source table the rows are claimed from")
    conn_id: str = Field("ticket_source", description="the Airflow connection of the source database")


class CorrelationSpec(BaseModel):
    """The columns that identify a row on the instance: ``correlation_id`` (the idempotency key) and its label."""

    model_config = _STRICT

    id: Name = Field(description="the source column sent as correlation_id (unique per row)")
    display: Name | None = Field(None, description="the source column sent as correlation_display")


class SyncDefinition(BaseModel):
    """One sync: a source table to one ServiceNow table (one DAG)."""

    model_config = _STRICT

    dag_id: DagId
    status_dag_id: DagId | None = Field(
        None, description="the DAG id of its status DAG; default: dag_id with _sync replaced by _status"
    )
    target_table: Name
    description: str = ""
    source: SourceSpec
    correlation: CorrelationSpec
    fields: dict[TargetField, FieldSpec]

    @field_validator("status_dag_id")
    @classmethod
    def _other_than_dag_id(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and value == info.data.get("dag_id"):
            raise ValueError(f"{value!r} is the dag_id of the sync DAG; give another")
        return value

    @model_validator(mode="after")
    def _fields(self) -> Self:
        if not self.fields:
            raise ValueError("fields: at least one field is needed")
        clash = sorted({"correlation_id", "correlation_display"} & set(self.fields))
        if clash:
            raise ValueError(f"fields: {', '.join(clash)} come from correlation, not from fields")
        columns: dict[str, str] = {}
        for name, spec in self.fields.items():
            for column in (spec.column, spec.key.column if spec.key else None):
                if column is None:
                    continue
                if column in columns:
                    raise ValueError(f"fields.{name}: column {column!r} is already used by {columns[column]}")
                columns[column] = name
        return self

    def source_columns(self) -> tuple[str, ...]:
        """Every producer column the definition reads, correlation columns first."""
        found = [self.correlation.id, *([self.correlation.display] if self.correlation.display else [])]
        for spec in self.fields.values():
            found += [c for c in (spec.column, spec.key.column if spec.key else None) if c and c not in found]
        return tuple(found)

    def status_id(self) -> str:
        """The DAG id of the definition's status DAG: ``status_dag_id``, or ``dag_id`` with its ``_sync`` ending
        replaced by ``_status`` (``_status`` appended when it has none)."""
        if self.status_dag_id:
            return self.status_dag_id
        stem = self.dag_id.removesuffix("_sync")
        return f"{stem}_status"

    def updatable_fields(self) -> tuple[str, ...]:
        """The case fields an update may change: ``correlation_display`` (when mapped) and every field read from a
        column or a business key. Not the correlation id (the case's identity), not a constant (the same in every
        record, it never changes), not ``work_notes`` (a journal input: a new note is appended, never replaced)."""
        display = ("correlation_display",) if self.correlation.display else ()
        return (*display, *(name for name, spec in self.fields.items()
                             if spec.value is None and name != "work_notes"))
