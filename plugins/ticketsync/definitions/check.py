"""Check a sync definition against the instance's table dictionary before any case is sent.

``python -m ticketsync.definitions.check FILE…`` reads, through the ServiceNow connection, the target table's place in
the table hierarchy (``sys_db_object``, walking ``super_class`` up: a case table's fields are declared on ``task``,
``sn_customerservice_case``, ``sn_bom_case``…), the ``sys_dictionary`` entries of that chain (a child's entry
overrides its parent's) and its choice lists (``sys_choice``, the nearest table that defines a field's list wins),
and the same for each business key's table. It reports what the definition gets wrong: an unknown field, a wrong
reference table, a max length larger than the instance's, a choice the instance does not offer, a key field the key
table does not have. Exit status 1 when anything is wrong (an error), 0 otherwise (warnings only).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ticketsync.definitions import DefinitionError, FieldSpec, SyncDefinition, load_definition

DICTIONARY_FIELDS = ("name", "element", "internal_type", "max_length", "reference", "mandatory")
TABLE_FIELDS = ("sys_id", "name", "super_class")
CHOICE_FIELDS = ("name", "element", "value", "inactive")
MAX_DEPTH = 20  # a super_class chain longer than this is a loop
TEXT_TYPES = frozenset({"string", "journal_input", "email", "url"})


@dataclass(frozen=True)
class DictionaryEntry:
    """One field of one table as ``sys_dictionary`` describes it."""

    element: str
    internal_type: str
    max_length: int | None
    reference: str
    mandatory: bool
    choices: frozenset[str] | None = None  # the active values of its choice list (None: no list on the instance)

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
        findings += _check_choices(table, name, spec, entry)
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


def _check_choices(table: str, name: str, spec: FieldSpec, entry: DictionaryEntry) -> list[Finding]:
    if not spec.choices or entry.choices is None:
        return []
    offered = {value.lower() for value in entry.choices}
    unknown = [choice for choice in spec.choices if choice.lower() not in offered]
    if not unknown:
        return []
    listed = ", ".join(sorted(entry.choices))
    return [Finding("error", f"fields.{name}.choices", f"{', '.join(map(repr, unknown))} not in the instance's "
                                                       f"choices for {table}.{name} ({listed})")]


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
    """``dictionary(table)`` read through a :class:`~ticketsync.hooks.servicenow.ServiceNowHook` (see
    :class:`InstanceDictionary`)."""
    return InstanceDictionary(hook).read


class InstanceDictionary:
    """The instance's dictionary of a table and its ancestors: the chain from ``sys_db_object`` (one read per table
    not seen yet), then one ``sys_dictionary`` and one ``sys_choice`` read for the whole chain; cached per table.

    :param hook: the ServiceNow hook.
    """

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self._cache: dict[str, dict[str, DictionaryEntry]] = {}
        self._by_id: dict[str, tuple[str, str]] = {}  # sys_id -> (name, super_class sys_id)
        self._by_name: dict[str, str] = {}  # name -> super_class sys_id

    def read(self, table: str) -> dict[str, DictionaryEntry]:
        """Field -> entry for ``table`` (its own and inherited fields); empty when the instance has none."""
        if table not in self._cache:
            names = self.chain(table)
            wanted = "nameIN" + ",".join(names)
            depth = {name: index for index, name in enumerate(names)}  # 0 = the table itself
            records = self.hook.list_records("sys_dictionary", query=wanted, fields=DICTIONARY_FIELDS)
            records = sorted((r for r in records if r.get("name") in depth), key=lambda r: -depth[str(r["name"])])
            entries = {entry.element: entry for entry in map(DictionaryEntry.from_record, records) if entry.element}
            if entries:
                for element, values in _choices(self.hook, wanted, depth).items():
                    if element in entries:
                        entries[element] = replace(entries[element], choices=values)
            self._cache[table] = entries
        return self._cache[table]

    def chain(self, table: str) -> list[str]:
        """The table and its ancestors, leaf first; just the table when ``sys_db_object`` does not list it."""
        names = [table]
        parent = self._by_name[table] if table in self._by_name else self._row(f"name={table}")[1]
        while parent and len(names) < MAX_DEPTH:
            name, parent = self._by_id[parent] if parent in self._by_id else self._row(f"sys_id={parent}")
            if not name:
                break
            names.append(name)
        return names

    def _row(self, query: str) -> tuple[str, str]:
        """(name, super_class sys_id) of the one ``sys_db_object`` row the query finds; ("", "") for none."""
        for record in self.hook.list_records("sys_db_object", query=query, fields=TABLE_FIELDS, limit=1):
            sys_id, name, parent = (_value(record.get(key)) for key in TABLE_FIELDS)
            self._by_id[sys_id], self._by_name[name] = (name, parent), parent
            return name, parent
        return "", ""


def _choices(hook: Any, query: str, depth: dict[str, int]) -> dict[str, frozenset[str]]:
    """Each field's active choice values, from the nearest table of the chain that defines a list for it."""
    lists: dict[str, tuple[int, set[str]]] = {}
    for record in hook.list_records("sys_choice", query=query, fields=CHOICE_FIELDS):
        table, element = str(record.get("name") or ""), str(record.get("element") or "")
        if table not in depth or not element:
            continue
        level, values = lists.get(element, (depth[table], set()))
        if depth[table] < level:
            level, values = depth[table], set()
        if depth[table] == level and str(record.get("inactive") or "").lower() != "true":
            values.add(str(record.get("value") or ""))
        lists[element] = (level, values)
    return {element: frozenset(values) for element, (_, values) in lists.items()}


def _value(field: Any) -> str:
    """A field as text (a reference may come as ``{"value": …}`` when links are not excluded)."""
    if isinstance(field, dict):
        field = field.get("value")
    return str(field or "")


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
