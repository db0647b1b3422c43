"""The instance's data around a case: reference tables with seeded records, and the table dictionary.

* Reference tables (FSO table definitions): consumers (``csm_consumer``, key ``number``), financial accounts
  (``sn_bom_financial_account``, keys ``account_number`` and ``external_id``), groups (``sys_user_group``, key
  ``name``; not unique on a real instance), service definitions and product models. Seeded with fixed records whose
  sys_ids are derived from table and key (:func:`seeded_sys_id`), so a demo and a test know them in advance. The
  seed holds deliberate duplicates (:data:`AMBIGUOUS_KEYS`), as real instances do.
* ``sys_db_object``: the table hierarchy (``name``, ``super_class``: a reference to the parent's row). A case table
  descends from ``task`` -> ``sn_customerservice_case`` -> ``sn_bom_case`` -> an application base -> the table
  (:data:`TABLE_PARENTS`), as on the instance.
* ``sys_dictionary``: one row per field, on the table that **declares** it (``name`` = that table, ``element`` =
  field, ``internal_type``, ``max_length``, ``reference``, ``mandatory``, ``column_label``), plus each table's
  collection row (``element`` empty), as the instance has them: ``name=sn_bom_loan_service`` alone finds none of the
  case's fields (``short_description`` is declared on ``task``); a reader walks ``super_class`` up first.
* ``sys_choice``: the choice lists (``name`` = the table that defines them, ``element``, ``value``, ``label``,
  ``sequence``, ``inactive``), defined on an ancestor as the instance does for the case tables.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

DICTIONARY_TABLE = "sys_dictionary"
TABLES_TABLE = "sys_db_object"
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

# The writable fields of an FSO case table, by the table of the hierarchy that declares them.
DECLARED_CASE_FIELDS: dict[str, tuple[FieldDef, ...]] = {
    "task": (
        FieldDef("number", "string", 40),
        _ref("assignment_group", "sys_user_group"),
        FieldDef("contact_type", "string", 40),
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
    ),
    "sn_customerservice_case": (
        _ref("consumer", "csm_consumer"),
        _ref("sold_product", "sn_install_base_sold_product"),
        _ref("account", "customer_account"),
        _ref("product", "cmdb_model"),
        FieldDef("category", "integer", 40),
        _ref("contact", "customer_contact"),
    ),
    "sn_bom_case": (_ref("service_definition", "sn_bom_service_definition"),),
}
CASE_FIELD_DEFS: tuple[FieldDef, ...] = tuple(d for defs in DECLARED_CASE_FIELDS.values() for d in defs)
# Which table defines each case choice list (sys_choice.name): the state list is the CSM case's.
CHOICES_DEFINED_ON: dict[str, str] = {
    "state": "sn_customerservice_case", "category": "sn_customerservice_case", "priority": "task",
    "contact_type": "task",
}
# sys_db_object.super_class, by name ("" for a root). A case table not listed descends from sn_bom_case.
TABLE_PARENTS: dict[str, str] = {
    "task": "",
    "sn_customerservice_case": "task",
    "sn_bom_case": "sn_customerservice_case",
    "sn_bom_loan_base": "sn_bom_case",
    "sn_bom_card_base": "sn_bom_case",
    "sn_bom_payment_base": "sn_bom_case",
    "sn_bom_loan_service": "sn_bom_loan_base",
    "sn_bom_loan_b2b_service": "sn_bom_loan_base",
    "sn_bom_credit_card_service": "sn_bom_card_base",
    "sn_bom_payment_inquiry": "sn_bom_payment_base",
    "sn_install_base_sold_product": "",
    "sn_bom_financial_account": "sn_install_base_sold_product",
}
CASE_BASE = "sn_bom_case"


def ancestors(table: str, *, case: bool = False) -> tuple[str, ...]:
    """The table and its ancestors, leaf first (``case``: a table not in :data:`TABLE_PARENTS` is a case table)."""
    chain, current = [table], TABLE_PARENTS.get(table, CASE_BASE if case else "")
    while current:
        chain.append(current)
        current = TABLE_PARENTS.get(current, "")
    return tuple(chain)


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
TABLE_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("name", "table_name", 80),
    FieldDef("label", "string", 80),
    _ref("super_class", TABLES_TABLE),
)
CHOICE_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("name", "table_name", 80),
    FieldDef("element", "string", 80),
    FieldDef("value", "string", 40),
    FieldDef("label", "string", 100),
    FieldDef("sequence", "integer", 40),
    FieldDef("inactive", "boolean", 40),
)
DICTIONARY_FIELD_DEFS: tuple[FieldDef, ...] = (
    FieldDef("name", "table_name", 80),
    FieldDef("element", "string", 80),
    FieldDef("internal_type", "string", 40),
    FieldDef("max_length", "integer", 40),
    FieldDef("reference", "table_name", 80),
    FieldDef("mandatory", "boolean", 40),
    FieldDef("column_label", "string", 80),
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


META_TABLES: dict[str, tuple[FieldDef, ...]] = {}  # filled below: the tables that describe the others


def dictionary_records(tables: tuple[str, ...], case_tables: tuple[str, ...]) -> list[dict[str, str]]:
    """``sys_dictionary`` rows for the given tables the emulator serves and their ancestors, each field on the table
    that declares it (the system fields on the root of each hierarchy)."""
    rows: list[dict[str, str]] = []
    done: set[str] = set()
    for table in tables:
        for name, defs in _declared(table, case=table in case_tables):
            if name not in done:
                done.add(name)
                rows.append(_dictionary_row(name, FieldDef("", "collection", 40)))
                rows.extend(_dictionary_row(name, definition) for definition in defs)
    return rows


def table_records(tables: tuple[str, ...], case_tables: tuple[str, ...]) -> list[dict[str, str]]:
    """``sys_db_object`` rows for the given tables and their ancestors (``super_class`` the parent's sys_id)."""
    names: dict[str, None] = {}
    for table in tables:
        if table in case_tables or table in REFERENCE_TABLES or table in META_TABLES:
            names.update(dict.fromkeys(ancestors(table, case=table in case_tables)))
    return [
        {"sys_id": seeded_sys_id(TABLES_TABLE, name), "name": name, "label": name.replace("_", " ").title(),
         "super_class": seeded_sys_id(TABLES_TABLE, parent) if (parent := _parent(name, case_tables)) else ""}
        for name in names
    ]


def choice_records(case_tables: tuple[str, ...], choices: dict[str, dict[str, str]]) -> list[dict[str, str]]:
    """``sys_choice`` rows of the case choice lists, on the ancestor that defines each (when a case table is
    served)."""
    if not case_tables:
        return []
    rows = []
    for element, values in choices.items():
        table = CHOICES_DEFINED_ON.get(element)
        if table is None:
            continue
        for sequence, (value, label) in enumerate(values.items()):
            rows.append({"sys_id": seeded_sys_id(CHOICE_TABLE, f"{table}.{element}.{value}"), "name": table,
                         "element": element, "value": value, "label": label, "sequence": str(sequence),
                         "inactive": "false"})
    return rows


def _parent(name: str, case_tables: tuple[str, ...]) -> str:
    return TABLE_PARENTS.get(name, CASE_BASE if name in case_tables else "")


def _declared(table: str, *, case: bool) -> list[tuple[str, tuple[FieldDef, ...]]]:
    """(table, the fields it declares) for ``table`` and its ancestors, root first."""
    if case:
        chain = ancestors(table, case=True)
        return [(name, (*SYSTEM_FIELD_DEFS, *DECLARED_CASE_FIELDS[name]) if name == chain[-1]
                 else DECLARED_CASE_FIELDS.get(name, ())) for name in reversed(chain)]
    if table in REFERENCE_TABLES:
        return [(table, (*SYSTEM_FIELD_DEFS, *REFERENCE_TABLES[table]))]
    if table in META_TABLES:
        return [(table, (*SYSTEM_FIELD_DEFS, *META_TABLES[table]))]
    return []


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


META_TABLES.update({DICTIONARY_TABLE: DICTIONARY_FIELD_DEFS, TABLES_TABLE: TABLE_FIELD_DEFS,
                    CHOICE_TABLE: CHOICE_FIELD_DEFS})
