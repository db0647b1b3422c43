"""Hypothesis strategies for hostile source rows: what people and producing systems really put in text columns.

Two families:

* ``hostile_row()``: anything at all in every producer column: text from every Unicode plane with control
  characters, NUL and lone surrogates, SQL and template syntax, blank values, strings far past every limit,
  numbers, floats (NaN, infinities), booleans and blobs. Whether a database can hold each value is decided by
  ``storable()``, per dialect.
* ``valid_row()``: rows that must be accepted, whose free text is still as hostile as the rules allow (any
  printable character of any plane, tab/newline/CR, SQL and template syntax, limits hit exactly), so the whole
  path can be checked byte for byte.
"""

from __future__ import annotations

import string
from typing import Any

from hypothesis import strategies as st

from ticketsync.models import (
    CONTACT_TYPES,
    MAX_CORRELATION,
    MAX_JOURNAL,
    MAX_SHORT_DESCRIPTION,
    PRODUCER_COLUMNS,
)
from ticketsync.source import Dialect

INJECTIONS = (
    "{{ params.limit }}", "{{ conn.servicenow_default.password }}", "{% for x in y %}{% endfor %}", "${jndi:ldap://x}",
    "%s", "%(password)s", "%d%n", "?", "$1", ":name", "'; DROP TABLE ticket_requests; --", "\" OR 1=1 --",
    "Robert'); DELETE FROM ticket_requests;--", "correlation_idINa,b^ORcorrelation_id=x", "a^NQb", "\\", "\\x00",
    "<script>alert(1)</script>", "&amp;", "\u202eevil", "\ufeffBOM", "\u200b", "\u2028\u2029", "e\u0301",
    "\U0001F4B8\U0001F3E6", "\U000E0001", "\U0010FFFF", "\uFFFE\uFFFF", "𝕿𝖎𝖈𝖐𝖊𝖙", "٣٤٥", "İı", "ß", "ﬃ",
)
BLANKS = ("", " ", "\t", "\n", "\r\n", "   \t  ", "\u00a0", "\u3000", "\u2003", "\x1c\x1d\x1e\x1f", "\x85")

# every plane, every category, surrogates included
ANY_CHAR = st.characters(min_codepoint=0, max_codepoint=0x10FFFF, exclude_categories=())
# what the rules allow in free text: no control characters but tab, newline and CR; no surrogates
FREE_CHAR = st.one_of(st.characters(exclude_categories=("Cc", "Cs")), st.sampled_from("\t\n\r"))


def _glued(parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.lists(parts, max_size=4).map("".join)


def _repeat(alphabet: st.SearchStrategy[str], sizes: list[int]) -> st.SearchStrategy[str]:
    return st.tuples(alphabet, st.sampled_from(sizes)).map(lambda pair: pair[0] * pair[1])


LIMITS = [MAX_CORRELATION, MAX_CORRELATION + 1, MAX_SHORT_DESCRIPTION, MAX_SHORT_DESCRIPTION + 1, MAX_JOURNAL,
          MAX_JOURNAL + 1, 100_000]

hostile_text: st.SearchStrategy[str] = st.one_of(
    st.text(ANY_CHAR, max_size=30),
    st.sampled_from(INJECTIONS),
    st.sampled_from(BLANKS),
    _glued(st.one_of(st.sampled_from(INJECTIONS), st.sampled_from(BLANKS), st.text(ANY_CHAR, max_size=8))),
    _repeat(ANY_CHAR, LIMITS),
)

hostile_value: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    hostile_text,
    st.integers(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.binary(max_size=40),
    st.sampled_from([b"\x00", b"\xff\xfe", b"caf\xe9", b"sn_bom_loan_service"]),
)

SYS_ID = st.text("0123456789abcdefABCDEF", min_size=32, max_size=32)
REQUEST_ID_CHARS = string.ascii_letters + string.digits + "._:/#@+-"


def _valid_values(column: str) -> st.SearchStrategy[Any]:
    free_text = st.one_of(st.text(FREE_CHAR, max_size=60), st.sampled_from(INJECTIONS), st.sampled_from(BLANKS))
    choices: dict[str, st.SearchStrategy[Any]] = {
        "source_system": st.one_of(st.none(), st.text(FREE_CHAR, max_size=MAX_CORRELATION)),
        "target_table": st.sampled_from([None, "sn_bom_loan_service", " sn_bom_loan_service "]),
        "assignment_group": st.one_of(st.none(), SYS_ID),
        "product": st.one_of(st.none(), SYS_ID),
        "service_definition": st.one_of(st.none(), SYS_ID),
        "contact_type": st.one_of(st.none(), st.sampled_from(CONTACT_TYPES), st.sampled_from(["WEB", " Phone "])),
        "category": st.one_of(st.none(), st.sampled_from(["0", "1", "2", "Question", "issue", " FEATURE "])),
        "notes": st.one_of(st.none(), free_text, _repeat(FREE_CHAR, [MAX_JOURNAL])),
        # the rows give sys_ids for consumer, sold_product (and maybe assignment_group): a key as well is refused
        "consumer_number": st.none(),
        "account_number": st.none(),
        "assignment_group_name": st.none(),
    }
    return choices[column]


def _short_description() -> st.SearchStrategy[str]:
    visible = st.characters(exclude_categories=("Cc", "Cs", "Z"))  # at least one character that is not blank
    inner = st.text(FREE_CHAR, max_size=MAX_SHORT_DESCRIPTION - 2)
    return st.one_of(
        st.tuples(visible, inner).map(lambda pair: pair[0] + pair[1]),
        st.sampled_from([value for value in INJECTIONS if value.strip()]),
        _repeat(visible, [MAX_SHORT_DESCRIPTION]),
    )


@st.composite
def valid_row(draw: st.DrawFn, index: int) -> dict[str, Any]:
    """A row every rule accepts; ``index`` keeps its request_id unique."""
    row = {column: draw(_valid_values(column)) for column in PRODUCER_COLUMNS
           if column not in ("request_id", "consumer", "sold_product", "short_description")}
    prefix = draw(st.text(REQUEST_ID_CHARS, max_size=MAX_CORRELATION - 8))
    row.update(
        request_id=f"{prefix}-{index}",
        consumer=draw(SYS_ID),
        sold_product=draw(SYS_ID),
        short_description=draw(_short_description()),
    )
    return row


@st.composite
def hostile_row(draw: st.DrawFn) -> dict[str, Any]:
    """Any value in any producer column; each column is sometimes left valid, so single bad columns show up."""
    valid = draw(valid_row(0))
    return {column: draw(st.one_of(st.just(valid[column]), hostile_value)) for column in PRODUCER_COLUMNS}


def storable(value: Any, dialect: Dialect) -> bool:
    """Whether the producing system could have written this value to a TEXT column of the dialect at all.

    SQLite keeps NUL in text and bytes as blobs, but its driver cannot encode a lone surrogate nor bind an integer
    past 64 bits. PostgreSQL TEXT refuses NUL (its insert fails: the producer's problem, not ours) and casts bytes
    (bound as bytea) to their hex text `\\x…`, so blobs reach ticketsync there as text. MariaDB's utf8mb4 LONGTEXT
    keeps NUL; bytes that are UTF-8 become that text and others fail the producer's insert (strict mode), as do
    NaN and infinities (PyMySQL refuses them).
    """
    if isinstance(value, str):
        if any(0xD800 <= ord(char) <= 0xDFFF for char in value):
            return False
        return dialect in (Dialect.SQLITE, Dialect.MYSQL) or "\x00" not in value
    if isinstance(value, int) and not isinstance(value, bool) and dialect is Dialect.SQLITE:
        return -(2**63) <= value < 2**63
    return True
