"""The :class:`SourceTable` facade: every concern of the source table on one connection."""

from __future__ import annotations

from ticketsync.source.case_status import CaseStatusRows
from ticketsync.source.claims import Claims
from ticketsync.source.outcomes import Outcomes
from ticketsync.source.replay import Replay
from ticketsync.source.reports import Reports
from ticketsync.source.schema import Schema


class SourceTable(Schema, Claims, Outcomes, Reports, Replay, CaseStatusRows):
    """Access to the ``ticket_requests`` table through one DB-API connection, opened on first use.

    :param connect: opens a new DB-API connection (called again after a lost connection)
    :param dialect: the database's :class:`Dialect`
    :param table: the table's name (a plain SQL identifier); the replay audit table is ``<table>_replays``
    """
