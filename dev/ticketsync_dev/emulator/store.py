"""In-memory tables: schemas, rows in insertion order, a sys_id index and lazily built hash indexes per field."""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from ticketsync_dev.emulator.choices import CASE_CHOICES, INACTIVE_STATES
from ticketsync_dev.emulator.query import EncodedQuery, Part, fold, parse_query
from ticketsync_dev.emulator.reference import (
    CHOICE_TABLE,
    DICTIONARY_TABLE,
    META_TABLES,
    REFERENCE_NUMBER_PREFIXES,
    REFERENCE_TABLES,
    TABLES_TABLE,
    FieldDef,
    choice_records,
    dictionary_records,
    seed_records,
    table_records,
)

Row = list[str]
Record = dict[str, str]

JOURNAL_TABLE = "sys_journal_field"
CASE_TABLES: dict[str, str] = {  # table -> number prefix (the emulator's choice: ServiceNow does not document them)
    "sn_bom_loan_service": "LSC",
    "sn_bom_credit_card_service": "CCS",
    "sn_bom_payment_inquiry": "PIQ",
    "sn_bom_loan_b2b_service": "LBS",
}
DEFAULT_TABLES: tuple[str, ...] = (
    *CASE_TABLES, JOURNAL_TABLE, *REFERENCE_TABLES, DICTIONARY_TABLE, TABLES_TABLE, CHOICE_TABLE,
)
DEFAULT_CASE_PREFIX = "CS"
FIRST_NUMBER = 1001

CASE_REFERENCES: dict[str, str] = {
    "consumer": "csm_consumer",
    "sold_product": "sn_install_base_sold_product",
    "account": "customer_account",
    "assignment_group": "sys_user_group",
    "product": "cmdb_model",
    "service_definition": "sn_bom_service_definition",
    "contact": "customer_contact",
}
CASE_FIELDS: tuple[str, ...] = (
    "consumer",
    "sold_product",
    "account",
    "assignment_group",
    "product",
    "service_definition",
    "contact_type",
    "category",
    "priority",
    "short_description",
    "description",
    "work_notes",
    "comments",
    "correlation_id",
    "correlation_display",
    "state",
    "opened_at",
    "active",
    "contact",
)
CASE_SYSTEM_FIELDS: tuple[str, ...] = (
    "sys_id",
    "number",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
    "sys_mod_count",
    "sys_class_name",
)
CASE_DEFAULTS: dict[str, str] = {"category": "1", "priority": "4", "state": "1", "active": "true"}
JOURNAL_FIELDS: tuple[str, ...] = ("element_id", "name", "element", "value")
JOURNAL_SYSTEM_FIELDS: tuple[str, ...] = ("sys_id", "sys_created_on", "sys_created_by")
_INTERN_MAX = 40  # short values (sys_ids, choices, timestamps) repeat a lot: share one string object each


class UnknownTableError(KeyError):
    """The table is not served by this emulator."""


@dataclass(frozen=True)
class TableSchema:
    """The fields of one table: generated system fields first, then the fields a client may write."""

    name: str
    system_fields: tuple[str, ...]
    writable_fields: tuple[str, ...]
    references: Mapping[str, str] = field(default_factory=dict)
    journal_fields: tuple[str, ...] = ()
    number_prefix: str | None = None
    defaults: Mapping[str, str] = field(default_factory=dict)
    opened_at_field: str | None = None
    choices: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    inactive_states: frozenset[str] = frozenset()

    @property
    def fields(self) -> tuple[str, ...]:
        return self.system_fields + self.writable_fields


REFERENCE_SYSTEM_FIELDS: tuple[str, ...] = tuple(name for name in CASE_SYSTEM_FIELDS if name != "number")


def _data_table_schema(table: str, defs: tuple[FieldDef, ...]) -> TableSchema:
    return TableSchema(
        name=table,
        system_fields=REFERENCE_SYSTEM_FIELDS,
        writable_fields=tuple(d.element for d in defs),
        references={d.element: d.reference for d in defs if d.reference},
        number_prefix=REFERENCE_NUMBER_PREFIXES.get(table),
    )


def schema_for(table: str) -> TableSchema:
    """The schema the emulator uses for a table name: the journal, a reference table, the dictionary, or a case
    table (any other name)."""
    if table == JOURNAL_TABLE:
        return TableSchema(table, JOURNAL_SYSTEM_FIELDS, JOURNAL_FIELDS)
    if table in REFERENCE_TABLES:
        return _data_table_schema(table, REFERENCE_TABLES[table])
    if table in META_TABLES:
        return _data_table_schema(table, META_TABLES[table])
    return TableSchema(
        name=table,
        system_fields=CASE_SYSTEM_FIELDS,
        writable_fields=CASE_FIELDS,
        references=CASE_REFERENCES,
        journal_fields=("work_notes", "comments"),
        number_prefix=CASE_TABLES.get(table, DEFAULT_CASE_PREFIX),
        defaults=CASE_DEFAULTS,
        opened_at_field="opened_at",
        choices=CASE_CHOICES,
        inactive_states=INACTIVE_STATES,
    )


def utc_timestamp() -> str:
    """Now as ServiceNow writes it: `YYYY-MM-DD HH:MM:SS`, UTC."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())


def as_field_value(value: Any) -> str:
    """A JSON value as the string the Table API stores."""
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = ""
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False)
    return sys.intern(text) if len(text) <= _INTERN_MAX else text


def _unlink(index: dict[str, dict[str, None]], key: str, sys_id: str) -> None:
    bucket = index.get(key)
    if bucket is not None:
        bucket.pop(sys_id, None)
        if not bucket:
            del index[key]


class Table:
    """The rows of one table. Not thread-safe on its own: the Store serialises access."""

    def __init__(self, schema: TableSchema) -> None:
        self.schema = schema
        self.positions: dict[str, int] = {name: pos for pos, name in enumerate(schema.fields)}
        self.writable = frozenset(schema.writable_fields)
        self.rows: dict[str, Row] = {}  # by sys_id, in insertion order
        self._seq: dict[str, int] = {}
        self._next_seq = 0
        # position -> case-folded value -> sys_ids (queries compare without case, as on the instance)
        self._indexes: dict[int, dict[str, dict[str, None]]] = {}
        self._sys_id_pos = self.positions["sys_id"]
        self.counter = FIRST_NUMBER - 1

    def clear(self) -> None:
        self.rows.clear()
        self._seq.clear()
        self._indexes.clear()
        self.counter = FIRST_NUMBER - 1

    def next_number(self) -> str:
        self.counter += 1
        return f"{self.schema.number_prefix}{self.counter:07d}"

    def to_record(self, row: Row, fields: Sequence[str] | None = None) -> Record:
        if fields is None:
            return dict(zip(self.schema.fields, row, strict=True))
        return {name: row[self.positions[name]] for name in fields if name in self.positions}

    def insert(self, row: Row) -> None:
        sys_id = row[self._sys_id_pos]
        self.rows[sys_id] = row
        self._seq[sys_id] = self._next_seq
        self._next_seq += 1
        for pos, index in self._indexes.items():
            index.setdefault(fold(row[pos]), {})[sys_id] = None

    def replace(self, sys_id: str, new: Row) -> None:
        old = self.rows[sys_id]
        self.rows[sys_id] = new
        for pos, index in self._indexes.items():
            if fold(old[pos]) != fold(new[pos]):
                _unlink(index, fold(old[pos]), sys_id)
                index.setdefault(fold(new[pos]), {})[sys_id] = None

    def remove(self, sys_id: str) -> bool:
        row = self.rows.pop(sys_id, None)
        if row is None:
            return False
        del self._seq[sys_id]
        for pos, index in self._indexes.items():
            _unlink(index, fold(row[pos]), sys_id)
        return True

    def select(self, query: EncodedQuery) -> list[Row]:
        """The matching rows, in insertion order unless the query says ORDERBY."""
        rows = self._matching(query)
        for pos, descending in reversed(query.order):
            rows.sort(key=itemgetter(pos), reverse=descending)
        return rows

    def _matching(self, query: EncodedQuery) -> list[Row]:
        if query.matches_all:
            return list(self.rows.values())
        candidates = self._candidates(query)
        if candidates is None:
            return [row for row in self.rows.values() if query.matches(row)]
        if len(candidates) * 4 > len(self.rows):
            return [row for sys_id, row in self.rows.items() if sys_id in candidates and query.matches(row)]
        rows = map(self.rows.__getitem__, sorted(candidates, key=self._seq.__getitem__))
        if _exact(query):
            return list(rows)
        return [row for row in rows if query.matches(row)]

    def _candidates(self, query: EncodedQuery) -> set[str] | None:
        """A superset of the matching sys_ids from the hash indexes, or None when a full scan is needed."""
        found: set[str] = set()
        for part in query.parts:
            ids = self._part_candidates(part)
            if ids is None:
                return None
            found |= ids
        return found

    def _part_candidates(self, part: Part) -> set[str] | None:
        best: set[str] | None = None
        for group in part:
            if not all(condition.indexable for condition in group):
                continue
            ids: set[str] = set()
            for condition in group:
                for key in condition.accepted_values():
                    ids.update(self._lookup(condition.position, key))
            if best is None or len(ids) < len(best):
                best = ids
        return best

    def _lookup(self, pos: int, key: str) -> Iterable[str]:
        """The sys_ids whose value at ``pos`` folds to ``key`` (a case-folded value)."""
        if pos == self._sys_id_pos:
            return (key,) if key in self.rows else ()  # sys_ids are generated in lower case
        index = self._indexes.get(pos)
        if index is None:
            index = {}
            for sys_id, row in self.rows.items():
                index.setdefault(fold(row[pos]), {})[sys_id] = None
            self._indexes[pos] = index
        return index.get(key, {}).keys()


class Store:
    """All tables of the emulator, behind one lock. Records go in and come out as dicts of strings."""

    def __init__(self, tables: Iterable[str] = DEFAULT_TABLES) -> None:
        self._lock = threading.RLock()
        self._tables: dict[str, Table] = {name: Table(schema_for(name)) for name in tables}

    @property
    def table_names(self) -> tuple[str, ...]:
        return tuple(self._tables)

    def has_table(self, name: str) -> bool:
        return name in self._tables

    def schema(self, name: str) -> TableSchema:
        return self._table(name).schema

    def _table(self, name: str) -> Table:
        table = self._tables.get(name)
        if table is None:
            raise UnknownTableError(name)
        return table

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {name: len(table.rows) for name, table in self._tables.items()}

    def clear(self) -> None:
        with self._lock:
            for table in self._tables.values():
                table.clear()

    def seed(self, user: str = "system") -> dict[str, int]:
        """Fill the reference tables and the dictionary the store serves with the fixed seed; returns the counts
        added. Idempotent: a seeded record already present (same sys_id) is left as it is."""
        with self._lock:
            case_tables = tuple(name for name, table in self._tables.items() if table.schema.journal_fields)
            wanted = {
                **seed_records(),
                DICTIONARY_TABLE: dictionary_records(self.table_names, case_tables),
                TABLES_TABLE: table_records(self.table_names, case_tables),
                CHOICE_TABLE: choice_records(case_tables, {k: dict(v) for k, v in CASE_CHOICES.items()}),
            }
            added: dict[str, int] = {}
            for name, records in wanted.items():
                table = self._tables.get(name)
                if table is None:
                    continue
                now = utc_timestamp()
                for record in records:
                    if record["sys_id"] in table.rows:
                        continue
                    row = self._new_row(table, _writable_values(table, record), now, user)
                    row[table.positions["sys_id"]] = record["sys_id"]
                    table.insert(row)
                    added[name] = added.get(name, 0) + 1
            return added

    def create(self, name: str, body: Mapping[str, Any], user: str, fields: Sequence[str] | None = None) -> Record:
        """Insert a record from a request body; unknown and `sys_` fields are ignored."""
        with self._lock:
            table = self._table(name)
            values = _business_rules(table.schema, _writable_values(table, body))
            now = utc_timestamp()
            row = self._new_row(table, values, now, user)
            table.insert(row)
            self._write_journal(table, row[table.positions["sys_id"]], values, now, user)
            return table.to_record(row, fields)

    def get(self, name: str, sys_id: str, fields: Sequence[str] | None = None) -> Record | None:
        with self._lock:
            table = self._table(name)
            row = table.rows.get(sys_id)
            return None if row is None else table.to_record(row, fields)

    def update(
        self,
        name: str,
        sys_id: str,
        body: Mapping[str, Any],
        user: str,
        fields: Sequence[str] | None = None,
        *,
        updated_on: str | None = None,
    ) -> Record | None:
        """Apply the writable fields of a body; bumps sys_mod_count and sys_updated_on when anything changed.

        :param updated_on: the `sys_updated_on` to stamp instead of now (an agent's transaction that committed
            after the second it started in; admin endpoint only).
        """
        with self._lock:
            table = self._table(name)
            row = table.rows.get(sys_id)
            if row is None:
                return None
            values = _business_rules(table.schema, _writable_values(table, body))
            new = _changed_row(table, row, values)
            journaled = any(values.get(element) for element in table.schema.journal_fields)
            if new is not None or journaled:
                now = updated_on or utc_timestamp()
                new = _touch(table, new or row.copy(), now, user)
                table.replace(sys_id, new)
                self._write_journal(table, sys_id, values, now, user)
                row = new
            return table.to_record(row, fields)

    def delete(self, name: str, sys_id: str) -> bool:
        with self._lock:
            return self._table(name).remove(sys_id)

    def query(
        self,
        name: str,
        encoded: str = "",
        limit: int | None = None,
        offset: int = 0,
        fields: Sequence[str] | None = None,
    ) -> tuple[list[Record], int]:
        """One page of the records matching an encoded query, and the total number matching."""
        with self._lock:
            table = self._table(name)
            rows = table.select(parse_query(encoded, table.positions))
            end = None if limit is None else offset + limit
            page = rows[offset:end]
        return [table.to_record(row, fields) for row in page], len(rows)

    def records(self, name: str) -> list[Record]:
        """Every record of a table, as stored, in insertion order."""
        with self._lock:
            table = self._table(name)
            rows = list(table.rows.values())
        return [table.to_record(row) for row in rows]

    def _new_row(self, table: Table, values: Mapping[str, str], now: str, user: str) -> Row:
        schema = table.schema
        row: Row = [""] * len(schema.fields)
        generated = {
            "sys_id": uuid.uuid4().hex,
            "sys_created_on": now,
            "sys_created_by": user,
            "sys_updated_on": now,
            "sys_updated_by": user,
            "sys_mod_count": "0",
            "sys_class_name": schema.name,
        }
        if schema.number_prefix is not None:
            generated["number"] = table.next_number()
        if schema.opened_at_field is not None:
            generated[schema.opened_at_field] = now
        for source in (generated, schema.defaults, values):
            for name, value in source.items():
                if name in table.positions:
                    row[table.positions[name]] = value
        for name in schema.journal_fields:
            row[table.positions[name]] = ""
        return row

    def _write_journal(self, table: Table, sys_id: str, values: Mapping[str, str], now: str, user: str) -> None:
        journal = self._tables.get(JOURNAL_TABLE)
        if journal is None:
            return
        for element in table.schema.journal_fields:
            text = values.get(element, "")
            if text:
                entry = {"element_id": sys_id, "name": table.schema.name, "element": element, "value": text}
                journal.insert(self._new_row(journal, entry, now, user))


def _exact(query: EncodedQuery) -> bool:
    """Whether the index lookups answer the query exactly: one part, one group of `=`/`IN` conditions."""
    return len(query.parts) == 1 and len(query.parts[0]) == 1 and all(c.indexable for c in query.parts[0][0])


def _writable_values(table: Table, body: Mapping[str, Any]) -> dict[str, str]:
    return {name: as_field_value(value) for name, value in body.items() if name in table.writable}


def _business_rules(schema: TableSchema, values: dict[str, str]) -> dict[str, str]:
    """The instance's business rule on case tables: a case moved to a closed state becomes inactive."""
    if values.get("state") in schema.inactive_states:
        values["active"] = "false"
    return values


def _changed_row(table: Table, row: Row, values: Mapping[str, str]) -> Row | None:
    """A copy of the row with the values applied, or None when no stored value changes."""
    journal = table.schema.journal_fields
    changes = {
        table.positions[name]: value
        for name, value in values.items()
        if name not in journal and row[table.positions[name]] != value
    }
    if not changes:
        return None
    new = row.copy()
    for pos, value in changes.items():
        new[pos] = value
    return new


def _touch(table: Table, row: Row, now: str, user: str) -> Row:
    positions = table.positions
    if "sys_mod_count" in positions:
        pos = positions["sys_mod_count"]
        row[pos] = str(int(row[pos] or "0") + 1)
    for name, value in (("sys_updated_on", now), ("sys_updated_by", user)):
        if name in positions:
            row[positions[name]] = value
    return row
