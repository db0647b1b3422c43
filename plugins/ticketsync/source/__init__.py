"""The source table ``ticket_requests``: schema, claims and leases, outcomes, reports, replays.

One :class:`SourceTable` over one DB-API connection, for each :class:`Dialect`. Every statement uses bound
parameters, and every statement that runs again after a lost connection is safe to repeat (docs/adr/0007).
"""

from ticketsync.source.claims import Shard
from ticketsync.source.connection import (
    DBAPIConnection,
    SourceConnection,
    is_connection_error,
    is_row_refusal,
    refusal_text,
)
from ticketsync.source.dialects import Dialect, validate_identifier
from ticketsync.source.outcomes import Outcome
from ticketsync.source.replay import ReplayResult, StoredRequest
from ticketsync.source.rows import ROW_COLUMNS
from ticketsync.source.table import SourceTable

__all__ = [
    "ROW_COLUMNS",
    "DBAPIConnection",
    "Dialect",
    "Outcome",
    "ReplayResult",
    "Shard",
    "SourceConnection",
    "SourceTable",
    "StoredRequest",
    "is_connection_error",
    "is_row_refusal",
    "refusal_text",
    "validate_identifier",
]
