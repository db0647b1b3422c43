"""Check a sync definition against the instance's table dictionary before any case is sent.

``python -m ticketsync.definitions.check FILE…`` reads ``sys_dictionary`` for the target table and for each business
key's table through the ServiceNow connection, and reports what the definition gets wrong: an unknown field, a wrong
reference table, a max length larger than the instance's, a key field the key table does not have. Exit status 1
when anything is wrong (an error), 0 otherwise (warnings only).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ticketsync.definitions import DefinitionError, FieldSpec, SyncDefinition, load_definition

DICTIONARY_FIELDS = ("name", "element", "internal_type", "max_length", "reference", "mandatory")
TEXT_TYPES = frozenset({"string", "journal_input", "email", "url"})


@dataclass(frozen=True)
class DictionaryEntry:
    """One field of one table as ``sys_dictionary`` describes it."""

    element: str
    internal_type: str
    max_length: int | None
    reference: str
    mandatory: bool

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DictionaryEntry:
        length = str(record.get("max_length") or "").strip()
        return cls(
            element=str(record.get("element") or ""),
            internal_type=str(record.get("internal_type") or ""),
            max_length=int(length) if length.isdigit() else None,
            reference=str(record.get("reference") or ""),
            mandatory=str(record.get("mandatory") or "").lower() == "true",
        )


@dataclass(frozen=True)
class Finding:
    level: Literal["error", "warning"]
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.level:<7} {self.where}: {self.message}"


Dictionary = Callable[[str], dict[str, DictionaryEntry]]


def check_definition(definition: SyncDefinition, dictionary: Dictionary) -> list[Finding]:
    """Everything the definition gets wrong against the instance's dictionary (``dictionary(table)``: field ->
    entry, empty for a table the instance does not know)."""
    table = definition.target_table
    entries = dictionary(table)
    if not entries:
        return [Finding("error", "target_table", f"{table} has no sys_dictionary entries (no such table, or "
                                                 "the integration user cannot read sys_dictionary)")]
    findings: list[Finding] = []
    for name in ("correlation_id", "correlation_display"):
        if name not in entries:
            findings.append(Finding("error", "correlation", f"{table} has no field {name}"))
    for name, spec in definition.fields.items():
        entry = entries.get(name)
        if entry is None:
            findings.append(Finding("error", f"fields.{name}", f"{table} has no field {name}"))
            continue
        findings += _check_field(table, name, spec, entry)
        if spec.key is not None:
            findings += _check_key(name, spec, dictionary)
    return findings


def _check_field(table: str, name: str, spec: FieldSpec, entry: DictionaryEntry) -> list[Finding]:
    where = f"fields.{name}"
    found: list[Finding] = []
    if entry.internal_type == "reference":
        if not spec.sys_id:
            found.append(Finding("warning", where, f"is a reference to {entry.reference}: set sys_id: true so a "
                                                   "malformed sys_id is rejected before it is sent"))
        if spec.reference and spec.reference != entry.reference:
            found.append(Finding("error", f"{where}.reference", f"the instance's {table}.{name} references "
                                                                 f"{entry.reference}, not {spec.reference}"))
    elif spec.sys_id or spec.reference:
        found.append(Finding("error", where, f"is not a reference on the instance (its type is {entry.internal_type})"))
    if spec.max_length and entry.max_length and spec.max_length > entry.max_length:
        found.append(Finding("error", f"{where}.max_length", f"{spec.max_length} is larger than the instance's "
                                                             f"{entry.max_length} for {table}.{name}"))
    if not spec.max_length and not spec.choices and entry.internal_type in TEXT_TYPES and entry.max_length:
        found.append(Finding("warning", f"{where}.max_length", f"not set; the instance allows {entry.max_length}"))
    if entry.mandatory and not spec.required:
        found.append(Finding("warning", f"{where}.required", f"{table}.{name} is mandatory on the instance"))
    return found


def _check_key(name: str, spec: FieldSpec, dictionary: Dictionary) -> list[Finding]:
    key = spec.key
    assert key is not None
    where = f"fields.{name}.key"
    entries = dictionary(key.table)
    if not entries:
        return [Finding("error", f"{where}.table", f"{key.table} has no sys_dictionary entries")]
    entry = entries.get(key.field)
    if entry is None:
        return [Finding("error", f"{where}.field", f"{key.table} has no field {key.field}")]
    if key.max_length and entry.max_length and key.max_length > entry.max_length:
        return [Finding("error", f"{where}.max_length", f"{key.max_length} is larger than the instance's "
                                                        f"{entry.max_length} for {key.table}.{key.field}")]
    return []


def instance_dictionary(hook: Any) -> Dictionary:
    """``dictionary(table)`` read through a :class:`~ticketsync.hooks.servicenow.ServiceNowHook`, one GET per
    table, cached."""
    cache: dict[str, dict[str, DictionaryEntry]] = {}

    def read(table: str) -> dict[str, DictionaryEntry]:
        if table not in cache:
            records = hook.list_records("sys_dictionary", query=f"name={table}", fields=DICTIONARY_FIELDS)
            entries = (DictionaryEntry.from_record(record) for record in records if record.get("name") == table)
            cache[table] = {entry.element: entry for entry in entries if entry.element}
        return cache[table]

    return read


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ticketsync.definitions.check", description=__doc__)
    parser.add_argument("definitions", nargs="+", type=Path, help="definition files (YAML)")
    parser.add_argument("--conn-id", default="servicenow_default", help="the ServiceNow Airflow connection")
    args = parser.parse_args(argv)
    from ticketsync.hooks.servicenow import ServiceNowHook

    hook = ServiceNowHook(args.conn_id, pool_size=1)
    dictionary = instance_dictionary(hook)
    errors = 0
    try:
        for path in args.definitions:
            try:
                definition = load_definition(path)
            except DefinitionError as exc:
                print(f"{path}: {exc}")
                errors += 1
                continue
            findings = check_definition(definition, dictionary)
            errors += sum(1 for finding in findings if finding.level == "error")
            verdict = "OK" if not findings else f"{len(findings)} finding(s)"
            print(f"{path} ({definition.dag_id} -> {definition.target_table}): {verdict}")
            for finding in findings:
                print(f"  {finding}")
    finally:
        hook.close()
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
