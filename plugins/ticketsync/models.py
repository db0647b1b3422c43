"""Pydantic models: the source row as read, the validated request, the Table API body, and outcomes.

Three shapes, one direction:

* :class:`SourceRow` holds a ``ticket_requests`` row exactly as the database returned it. Every producer column is
  untrusted, so its values are typed ``Any``: a number or a blob in a text column must reach validation and be
  rejected there with a reason, not crash the reader.
* :class:`ValidatedRequest` is the same request after validation, still named in the source's terms, so a
  validation error names the column the bank's team has to fix (``notes``, not ``work_notes``).
* :class:`CaseBody` is the JSON body of ``POST /api/now/table/{table}``, named in ServiceNow's terms. It forbids
  extra fields, so no ``sys_`` field can ever be sent.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, PlainValidator

from ticketsync.definitions import SyncDefinition, packaged_definition

DEFAULT_TARGET_TABLE = "sn_bom_loan_service"

SYS_ID_PATTERN = re.compile(r"[0-9a-f]{32}")
# Correlation ids are looked up with an encoded query (`correlation_idINa,b,c`); ServiceNow has no escape for `,`
# or `^` there, so the id alphabet is restricted to characters that can never change the query's meaning.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:/#@+\-]+")
MAX_CORRELATION = 100
MAX_SHORT_DESCRIPTION = 160
MAX_JOURNAL = 4000
# Business keys (sys_dictionary max lengths of csm_consumer.number, sn_bom_financial_account.account_number,
# sys_user_group.name).
MAX_CONSUMER_NUMBER = 40
MAX_ACCOUNT_NUMBER = 40
MAX_GROUP_NAME = 80
CONTACT_TYPES = ("chat", "email", "phone", "social", "web")
CATEGORY_LABELS = {"question": "0", "issue": "1", "feature": "2"}
_ALLOWED_CONTROLS = {"\t", "\n", "\r"}
# Unicode category Cc (U+0000-U+001F, U+007F-U+009F) except the allowed controls, and Cs (U+D800-U+DFFF).
_FORBIDDEN_CHARACTER = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class SyncStatus(StrEnum):
    """The public lifecycle of a source row: ``pending`` until it ends in one of the three final states."""

    PENDING = "pending"
    CREATED = "created"
    REJECTED = "rejected"
    FAILED = "failed"


class SyncAction(StrEnum):
    """How a ``created`` row got its record: posted by us now, or found by correlation id and adopted."""

    CREATED = "created"
    ADOPTED = "adopted"


# --------------------------------------------------------------------------------------------------------------
# Field rules. Each raises ValueError with the sentence the user sees after "<column>: ".
# --------------------------------------------------------------------------------------------------------------


def preview(value: str, limit: int = 40) -> str:
    """How messages quote a value: its first `limit` characters, escaped."""
    shown = value if len(value) <= limit else value[:limit] + "…"
    return repr(shown)


def _clean_text(value: str) -> str:
    """Refuse text that ServiceNow or a JSON reader downstream would mangle: control characters, lone surrogates."""
    found = _FORBIDDEN_CHARACTER.search(value)
    if found is None:
        return value
    char, position = found.group(), found.start()
    if unicodedata.category(char) == "Cs":
        if 0xDC80 <= ord(char) <= 0xDCFF:  # how the SQLite reader carries a byte that is not UTF-8
            raise ValueError(f"is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02X} at position {position})")
        raise ValueError(f"contains an unpaired surrogate U+{ord(char):04X} at position {position}")
    raise ValueError(f"contains control character U+{ord(char):04X} at position {position}")


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be text, got {type(value).__name__}")
    return _clean_text(value)


def _max_length(limit: int) -> Callable[[str], str]:
    def check(value: str) -> str:
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long, at most {limit} allowed")
        return value

    return check


def _sys_id(value: str) -> str:
    candidate = value.strip().lower()
    if not SYS_ID_PATTERN.fullmatch(candidate):
        raise ValueError(f"must be a 32-character hexadecimal sys_id, got {preview(value)}")
    return candidate


def _request_id(value: str) -> str:
    if value != value.strip():
        raise ValueError("must not start or end with whitespace")
    if not REQUEST_ID_PATTERN.fullmatch(value):
        raise ValueError(f"may only contain letters, digits and . _ : / # @ + -, got {preview(value)}")
    return value


def _business_key(value: str) -> str:
    """A key looked up with ``<field>IN<k1>,<k2>``: the encoded query has no escape for ``,`` or ``^``."""
    candidate = value.strip()
    for forbidden in (",", "^"):
        if forbidden in candidate:
            raise ValueError(
                f"must not contain {forbidden!r} (the look-up query cannot carry it), got {preview(value)}"
            )
    return candidate


def _contact_type(value: str) -> str:
    candidate = value.strip().lower()
    if candidate not in CONTACT_TYPES:
        raise ValueError(f"must be one of {', '.join(CONTACT_TYPES)}, got {preview(value)}")
    return candidate


def _category(value: Any) -> str:
    """Accept the choice value (0/1/2, as text or integer) or its label (Question/Issue/Feature)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be text or a whole number, got {type(value).__name__}")
    candidate = str(value).strip().lower()
    if candidate in CATEGORY_LABELS.values():
        return candidate
    if candidate in CATEGORY_LABELS:
        return CATEGORY_LABELS[candidate]
    raise ValueError(f"must be 0/1/2 or Question/Issue/Feature, got {preview(str(value))}")


def _strip_not_blank(value: str) -> str:
    return value.strip()


def _rule(*steps: Callable[[Any], Any], required: bool = False) -> PlainValidator:
    """One validator per column, so each broken column yields exactly one readable message.

    Blank text counts as missing; a missing optional value stays ``None``; the steps run in order on the rest.
    """

    def validate(value: Any) -> Any:
        if isinstance(value, str) and not value.strip():  # empty or whitespace-only text means "not given"
            value = None
        if value is None:
            if required:
                raise ValueError("is required and must not be blank")
            return None
        for step in steps:
            value = step(value)
        return value

    return PlainValidator(validate)


SysId = Annotated[str | None, _rule(_text, _sys_id)]
RequestId = Annotated[str, _rule(_text, _request_id, _max_length(MAX_CORRELATION), required=True)]
ContactType = Annotated[str | None, _rule(_text, _contact_type)]
Category = Annotated[str | None, _rule(_category)]
ShortDescription = Annotated[
    str, _rule(_text, _strip_not_blank, _max_length(MAX_SHORT_DESCRIPTION), required=True)
]
Correlation = Annotated[str | None, _rule(_text, _max_length(MAX_CORRELATION))]
Journal = Annotated[str | None, _rule(_text, _max_length(MAX_JOURNAL))]
TableName = Annotated[str | None, _rule(_text)]
ConsumerNumber = Annotated[str | None, _rule(_text, _business_key, _max_length(MAX_CONSUMER_NUMBER))]
AccountNumber = Annotated[str | None, _rule(_text, _business_key, _max_length(MAX_ACCOUNT_NUMBER))]
GroupName = Annotated[str | None, _rule(_text, _business_key, _max_length(MAX_GROUP_NAME))]


# --------------------------------------------------------------------------------------------------------------
# The rows
# --------------------------------------------------------------------------------------------------------------

PRODUCER_COLUMNS: tuple[str, ...] = (
    "request_id",
    "source_system",
    "target_table",
    "consumer",
    "sold_product",
    "assignment_group",
    "contact_type",
    "product",
    "service_definition",
    "category",
    "short_description",
    "notes",
    # business keys, each in place of one reference sys_id above (pending migration 0002_business_keys)
    "consumer_number",
    "account_number",
    "assignment_group_name",
)
KEY_COLUMNS: frozenset[str] = frozenset({"consumer_number", "account_number", "assignment_group_name"})


class SourceRow(BaseModel):
    """A ``ticket_requests`` row as read from the source database; nothing about its values is trusted yet.

    A sync definition's own columns (``description``…) are kept as extra attributes, read by its transform."""

    model_config = ConfigDict(frozen=True, extra="allow")

    id: int
    request_id: Any = None
    source_system: Any = None
    target_table: Any = None
    consumer: Any = None
    sold_product: Any = None
    assignment_group: Any = None
    contact_type: Any = None
    product: Any = None
    service_definition: Any = None
    category: Any = None
    short_description: Any = None
    notes: Any = None
    consumer_number: Any = None
    account_number: Any = None
    assignment_group_name: Any = None
    attempts: int = 0
    error: str | None = None

    @property
    def label(self) -> str:
        """How logs and messages name the row: its database id and, if readable, its request id."""
        if isinstance(self.request_id, str) and self.request_id:
            return f"row {self.id} (request_id {self.request_id[:100]!r})"
        return f"row {self.id}"


class ValidatedRequest(BaseModel):
    """A request that passed every rule, still in the source's column names."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request_id: RequestId
    source_system: Correlation = None
    target_table: TableName = None
    consumer: SysId = None
    sold_product: SysId = None
    assignment_group: SysId = None
    contact_type: ContactType = None
    product: SysId = None
    service_definition: SysId = None
    category: Category = None
    short_description: ShortDescription
    notes: Journal = None
    consumer_number: ConsumerNumber = None
    account_number: AccountNumber = None
    assignment_group_name: GroupName = None


class CaseBody(BaseModel):
    """The JSON body of ``POST /api/now/table/{table}`` for an FSO case table.

    Every value is a string, as the Table API expects. ``extra="forbid"`` means no field outside this list can be
    built, and none of these starts with ``sys_``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")
    # The case fields an update may change (:mod:`ticketsync.updates`): every body field but the correlation id (the
    # case's identity, never rewritten) and work_notes (a journal input, compared as the note). A definition's body
    # (:class:`ticketsync.definitions.transform.DefinitionTransform`) has its own: the definition's mapped fields.
    updatable_fields: ClassVar[tuple[str, ...]] = ()  # derived from the fields below, after the class

    correlation_id: RequestId
    correlation_display: Correlation = None
    short_description: ShortDescription
    consumer: SysId = None
    sold_product: SysId = None
    assignment_group: SysId = None
    contact_type: ContactType = None
    product: SysId = None
    service_definition: SysId = None
    category: Category = None
    work_notes: Journal = None

    def to_json(self) -> dict[str, str]:
        """The body as sent: unset fields are left out so the instance's defaults apply.

        Every field is text or None and has no serializer, so this is ``model_dump(exclude_none=True)`` read
        straight from the fields (a test holds them equal), at a tenth of its cost: it runs three times per row.
        """
        return {key: value for key, value in self.__dict__.items() if value is not None}


CaseBody.updatable_fields = tuple(
    name for name in CaseBody.model_fields if name not in ("correlation_id", "work_notes")
)


@dataclass(frozen=True)
class BusinessKey:
    """A source column holding the bank's key for a reference field, resolved on the instance to a sys_id.

    :param column: the source column with the key (``consumer_number``)
    :param field: the reference field it fills, also the source column of its sys_id (``consumer``)
    :param table: the table the key is looked up in (``csm_consumer``)
    :param key_field: the key's field in that table (``number``)
    :param on_no_match: ``reject`` the row, or leave the field ``empty``, when no record has the key
    """

    column: str
    field: str
    table: str
    key_field: str
    on_no_match: Literal["reject", "empty"] = "reject"


@dataclass(frozen=True)
class TargetSpec:
    """What ticketsync knows about one ServiceNow target table.

    Another FSO case table (``sn_bom_credit_card_service``, ``sn_bom_payment_inquiry``…) is one more entry in
    :data:`TARGETS`, with its own required columns, once its field list has been checked against the instance.
    A required reference field is satisfied by its sys_id or by its business key (``keys``).
    """

    table: str
    required: tuple[str, ...]
    body_model: type[CaseBody] = CaseBody
    keys: tuple[BusinessKey, ...] = ()

    def key_for(self, field_name: str) -> BusinessKey | None:
        for key in self.keys:
            if key.field == field_name:
                return key
        return None


def target_spec(definition: SyncDefinition) -> TargetSpec:
    """The required columns and business keys of a definition whose reference fields are read from source columns
    of the same name (the ``ticket_requests`` contract)."""
    keys = []
    for name, spec in definition.fields.items():
        if spec.key is not None:
            if spec.column != name:
                raise ValueError(f"{definition.dag_id}: fields.{name}: the sys_id column must be named {name}")
            keys.append(BusinessKey(spec.key.column, name, spec.key.table, spec.key.field, spec.key.on_no_match))
    required = tuple(spec.column or name for name, spec in definition.fields.items() if spec.required)
    return TargetSpec(table=definition.target_table, required=required, keys=tuple(keys))


# A loan service case is about one consumer's loan account: without both, an agent cannot act on it. The required
# fields and the business keys come from the packaged loan definition (definitions/sn_bom_loan_service.yaml).
TARGETS: dict[str, TargetSpec] = {
    DEFAULT_TARGET_TABLE: target_spec(packaged_definition(DEFAULT_TARGET_TABLE)),
}


@dataclass(frozen=True)
class FieldError:
    """One broken rule on one source column."""

    column: str
    message: str

    def __str__(self) -> str:
        return f"{self.column}: {self.message}"


@dataclass(frozen=True)
class Rejection:
    """A row that failed validation: it is never sent, and every broken rule is named."""

    row_id: int
    errors: tuple[FieldError, ...] = field(default_factory=tuple)

    @property
    def reason(self) -> str:
        return "; ".join(str(error) for error in self.errors)


@dataclass(frozen=True)
class KeyLookup:
    """One business key of one row, to be resolved before the row is sent."""

    key: BusinessKey
    value: str


@dataclass(frozen=True)
class PreparedCase:
    """A row ready to send: its database id, the table, and the body.

    ``keys`` are the business keys still to resolve (their fields are empty in ``body`` until then);
    ``resolved`` the sys_ids they resolved to (reference field -> sys_id), written back with the outcome.
    """

    row_id: int
    table: str
    body: CaseBody
    keys: tuple[KeyLookup, ...] = ()
    resolved: tuple[tuple[str, str], ...] = ()

    @property
    def correlation_id(self) -> str:
        return self.body.correlation_id
