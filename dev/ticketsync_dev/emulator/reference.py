"""The instance's data around a case: reference tables with seeded records, and the table dictionary.

* Reference tables (FSO table definitions): consumers (``csm_consumer``, key ``number``), financial accounts
  (``sn_bom_financial_account``, keys ``account_number`` and ``external_id``), groups (``sys_user_group``, key
  ``name``; not unique on a real instance), service definitions and product models. Seeded with fixed records whose
  sys_ids are derived from table and key (:func:`seeded_sys_id`), so a demo and a test know them in advance. The
  seed holds deliberate duplicates (:data:`AMBIGUOUS_KEYS`), as real instances do.
* ``sys_dictionary``: one row per field of every table the emulator serves (``name`` = table, ``element`` = field,
  ``internal_type``, ``max_length``, ``reference``, ``mandatory``, ``column_label``), plus the table's collection row
  (``element`` empty), as the instance has them.
* ``sys_choice``: the choice lists of the case tables' choice fields (``name`` = table, ``element``, ``value``,
  ``label``, ``sequence``, ``inactive``, ``language``), from :data:`ticketsync_dev.emulator.choices.CASE_CHOICES`,
  the same lists ``sysparm_display_value`` shows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from ticketsync_dev.emulator.choices import CASE_CHOICES

DICTIONARY_TABLE = "sys_dictionary"
CHOICE_TABLE = "sys_choice"
_SEED_NAMESPACE = uuid.UUID("7b0d3f4e-2a9c-4c51-9a34-5e7c1d0b8f21")


@dataclass(frozen=True)
class FieldDef:
    """One field as the dictionary describes it."""

    element: str
    internal_type: str = "string"
    max_length: int = 40
    reference: str = ""
    mandatory: bool = False

    @property
    def label(self) -> str:
        return self.element.replace("_", " ").title()


def _ref(element: str, table: str) -> FieldDef:
    return FieldDef(element, "reference", 32, table)


SYSTEM_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("sys_id", "GUID", 32),
    FieldDef("sys_created_on", "glide_date_time", 40),
    FieldDef("sys_created_by", "string", 40),
    FieldDef("sys_updated_on", "glide_date_time", 40),
    FieldDef("sys_updated_by", "string", 40),
    FieldDef("sys_mod_count", "integer", 40),
    FieldDef("sys_class_name", "sys_class_name", 80),
)

# The writable fields of an FSO case table (task -> sn_customerservice_case -> sn_bom_case -> ...).
CASE_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("number", "string", 40),
    _ref("consumer", "csm_consumer"),
    _ref("sold_product", "sn_install_base_sold_product"),
    _ref("account", "customer_account"),
    _ref("assignment_group", "sys_user_group"),
    _ref("product", "cmdb_model"),
    _ref("service_definition", "sn_bom_service_definition"),
    FieldDef("contact_type", "string", 40),
    FieldDef("category", "integer", 40),
    FieldDef("priority", "integer", 40),
    FieldDef("short_description", "string", 160),
    FieldDef("description", "string", 4000),
    FieldDef("work_notes", "journal_input", 4000),
    FieldDef("comments", "journal_input", 4000),
    FieldDef("correlation_id", "string", 100),
    FieldDef("correlation_display", "string", 100),
    FieldDef("state", "integer", 40),
    FieldDef("opened_at", "glide_date_time", 40),
    FieldDef("active", "boolean", 40),
    _ref("contact", "customer_contact"),
)

# Reference tables: their writable fields (the first is the business key the seed is keyed on) and number prefix.
REFERENCE_TABLES: dict[str, tuple[FieldDef, ...]] = {
    "csm_consumer": (
        FieldDef("number", "string", 40),
        FieldDef("first_name", "string", 50),
        FieldDef("last_name", "string", 50),
        FieldDef("name", "string", 151),
        FieldDef("email", "email", 100),
        FieldDef("active", "boolean", 40),
    ),
    "sn_bom_financial_account": (
        FieldDef("account_number", "string", 40),
        FieldDef("external_id", "string", 255),
        FieldDef("name", "string", 100),
        _ref("consumer", "csm_consumer"),
        _ref("account", "customer_account"),
        _ref("product", "cmdb_model"),
        FieldDef("status", "string", 40),
    ),
    "sys_user_group": (
        FieldDef("name", "string", 80, mandatory=True),
        FieldDef("description", "string", 1000),
        FieldDef("email", "email", 100),
        FieldDef("active", "boolean", 40),
    ),
    "sn_bom_service_definition": (
        FieldDef("name", "string", 100),
        FieldDef("code", "string", 40),
        FieldDef("short_description", "string", 160),
        FieldDef("active", "boolean", 40),
    ),
    "cmdb_model": (
        FieldDef("name", "string", 100),
        FieldDef("display_name", "string", 255),
        FieldDef("model_number", "string", 40),
    ),
}
DICTIONARY_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("name", "table_name", 80),
    FieldDef("element", "string", 80),
    FieldDef("internal_type", "string", 40),
    FieldDef("max_length", "integer", 40),
    FieldDef("reference", "table_name", 80),
    FieldDef("mandatory", "boolean", 40),
    FieldDef("column_label", "string", 80),
)
CHOICE_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("name", "table_name", 80),
    FieldDef("element", "string", 80),
    FieldDef("value", "string", 40),
    FieldDef("label", "string", 100),
    FieldDef("sequence", "integer", 40),
    FieldDef("inactive", "boolean", 40),
    FieldDef("language", "string", 40),
)
REFERENCE_NUMBER_PREFIXES: dict[str, str] = {"csm_consumer": "CSC"}


def seeded_sys_id(table: str, key: str, ordinal: int = 0) -> str:
    """The fixed sys_id of a seeded record (``ordinal`` tells apart the records that share a key)."""
    suffix = f"#{ordinal}" if ordinal else ""
    return uuid.uuid5(_SEED_NAMESPACE, f"{table}:{key}{suffix}").hex


_CONSUMERS: tuple[tuple[str, str, str], ...] = (
    ("C-0001", "Ada", "Lovelace"),
    ("C-0002", "Alan", "Turing"),
    ("C-0003", "Grace", "Hopper"),
    ("C-0004", "Edsger", "Dijkstra"),
    ("C-0005", "Barbara", "Liskov"),
    ("C-0006", "Donald", "Knuth"),
    ("C-0007", "Frances", "Allen"),
    ("C-0008", "John", "Backus"),
    ("C-0009", "Margaret", "Hamilton"),
    ("C-0010", "Niklaus", "Wirth"),
    ("C-0011", "Radia", "Perlman"),
    ("C-0012", "Tim", "Berners-Lee"),
)
# Loan and card accounts: number, external id (the core banking system's key), owner's consumer number.
_ACCOUNTS: tuple[tuple[str, str, str], ...] = (
    *((f"LN-1000{n:02d}", f"CORE-LN-{n:04d}", f"C-{n:04d}") for n in range(1, 13)),
    *((f"CC-4000{n:02d}", f"CORE-CC-{n:04d}", f"C-{n:04d}") for n in range(1, 13)),
)
GROUPS: tuple[str, ...] = ("Loan Servicing", "Loan Operations", "Card Services", "Card Disputes", "Collections")
SERVICE_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("LOAN-FORGIVENESS", "Loan forgiveness"),
    ("LOAN-DEFERMENT", "Loan deferment"),
    ("LOAN-RESTRUCTURE", "Loan restructure"),
    ("CARD-DISPUTE", "Card transaction dispute"),
    ("CARD-REPLACEMENT", "Card replacement"),
)
MODELS: tuple[tuple[str, str], ...] = (("Personal Loan", "PL-STD"), ("Credit Card", "CC-STD"))
# Keys that name more than one record on purpose (a migrated duplicate account, two groups of one name).
AMBIGUOUS_KEYS: dict[str, tuple[str, str]] = {
    "sn_bom_financial_account": ("account_number", "LN-100099"),
    "sys_user_group": ("name", "Collections"),
}


def seed_records() -> dict[str, list[dict[str, str]]]:
    """Every seeded record by table, each with its fixed ``sys_id``."""
    consumer = {number: seeded_sys_id("csm_consumer", number) for number, _, _ in _CONSUMERS}
    seed: dict[str, list[dict[str, str]]] = {
        "csm_consumer": [
            {"sys_id": consumer[number], "number": number, "first_name": first, "last_name": last,
             "name": f"{first} {last}", "email": f"{first.lower()}@example.com", "active": "true"}
            for number, first, last in _CONSUMERS
        ],
        "sn_bom_financial_account": [
            {"sys_id": seeded_sys_id("sn_bom_financial_account", number), "account_number": number,
             "external_id": external, "name": f"Account {number}", "consumer": consumer[owner], "status": "open"}
            for number, external, owner in _ACCOUNTS
        ],
        "sys_user_group": [
            {"sys_id": seeded_sys_id("sys_user_group", name), "name": name, "active": "true"} for name in GROUPS
        ],
        "sn_bom_service_definition": [
            {"sys_id": seeded_sys_id("sn_bom_service_definition", code), "code": code, "name": name,
             "active": "true"}
            for code, name in SERVICE_DEFINITIONS
        ],
        "cmdb_model": [
            {"sys_id": seeded_sys_id("cmdb_model", name), "name": name, "display_name": name, "model_number": code}
            for name, code in MODELS
        ],
    }
    duplicate_account = AMBIGUOUS_KEYS["sn_bom_financial_account"][1]
    seed["sn_bom_financial_account"].extend(
        {"sys_id": seeded_sys_id("sn_bom_financial_account", duplicate_account, ordinal),
         "account_number": duplicate_account, "external_id": f"CORE-DUP-{ordinal}", "name": "Migrated duplicate",
         "consumer": consumer[owner], "status": "open"}
        for ordinal, owner in ((1, "C-0001"), (2, "C-0002"))
    )
    duplicate_group = AMBIGUOUS_KEYS["sys_user_group"][1]
    seed["sys_user_group"].append(
        {"sys_id": seeded_sys_id("sys_user_group", duplicate_group, 1), "name": duplicate_group, "active": "true"}
    )
    return seed


def dictionary_records(tables: tuple[str, ...], case_tables: tuple[str, ...]) -> list[dict[str, str]]:
    """``sys_dictionary`` rows for the given tables the emulator serves (case, reference and dictionary tables)."""
    rows: list[dict[str, str]] = []
    for table in tables:
        if table in case_tables:
            defs = (*SYSTEM_FIELD_DEFS, *CASE_FIELD_DEFS)
        elif table in REFERENCE_TABLES:
            defs = (*SYSTEM_FIELD_DEFS, *REFERENCE_TABLES[table])
        elif table == DICTIONARY_TABLE:
            defs = (*SYSTEM_FIELD_DEFS, *DICTIONARY_FIELD_DEFS)
        elif table == CHOICE_TABLE:
            defs = (*SYSTEM_FIELD_DEFS, *CHOICE_FIELD_DEFS)
        else:
            continue
        rows.append(_dictionary_row(table, FieldDef("", "collection", 40)))
        rows.extend(_dictionary_row(table, definition) for definition in defs)
    return rows


def choice_records(case_tables: tuple[str, ...]) -> list[dict[str, str]]:
    """``sys_choice`` rows of the choice fields of the given case tables, in English."""
    return [
        {
            "sys_id": seeded_sys_id(CHOICE_TABLE, f"{table}.{element}.{value}"),
            "name": table,
            "element": element,
            "value": value,
            "label": label,
            "sequence": str(sequence),
            "inactive": "false",
            "language": "en",
        }
        for table in case_tables
        for element, choices in CASE_CHOICES.items()
        for sequence, (value, label) in enumerate(choices.items())
    ]


def _dictionary_row(table: str, definition: FieldDef) -> dict[str, str]:
    return {
        "sys_id": seeded_sys_id(DICTIONARY_TABLE, f"{table}.{definition.element}"),
        "name": table,
        "element": definition.element,
        "internal_type": definition.internal_type,
        "max_length": str(definition.max_length),
        "reference": definition.reference,
        "mandatory": "true" if definition.mandatory else "false",
        "column_label": definition.label if definition.element else table,
    }
