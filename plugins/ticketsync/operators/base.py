"""What every ticketsync task shares: the source connection, the table, and the run's claim token."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook, BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from ticketsync.source import SourceTable, validate_identifier
from ticketsync.source.migrator import SchemaVersionError, auto_migrate_enabled, migrate_command

DEFAULT_SOURCE_CONN_ID = "ticket_source"
DEFAULT_SOURCE_TABLE = "ticket_requests"


def claim_token(context: Context) -> str:
    """Every task of one DAG run derives the same token, so no task has to pass it to the next.

    It is stamped on each row the run claims and stays there, which tells an auditor which run synced a row.
    """
    ti = context["ti"]
    return f"{ti.dag_id}:{ti.run_id}"


class SourceTaskOperator(BaseOperator):
    """Base of the tasks that work on the source table. ``__init__`` only stores arguments.

    :param source_conn_id: the Airflow connection of the source database (templated).
    :param source_table: the source table's name (templated).
    """

    template_fields: tuple[str, ...] = ("source_conn_id", "source_table")

    def __init__(
        self,
        *,
        source_conn_id: str = DEFAULT_SOURCE_CONN_ID,
        source_table: str = DEFAULT_SOURCE_TABLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_conn_id = source_conn_id
        self.source_table = source_table

    def open_source(self) -> SourceTable:
        return SourceTable.from_conn_id(self.source_conn_id, validate_identifier(self.source_table))

    def ensure_schema(self, source: SourceTable) -> None:
        """Bring the table to the latest schema version, or fail at once (no retry can help) when the source
        connection's extra ``ticketsync_auto_migrate`` is false and migrations are pending (docs/migrations.md)."""
        extra = BaseHook.get_connection(self.source_conn_id).extra_dejson
        try:
            applied = source.ensure_schema(
                auto_migrate=auto_migrate_enabled(extra),
                command=migrate_command(self.source_conn_id, source.table),
            )
        except (SchemaVersionError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        if applied:
            self.log.info("applied schema migrations %s to %s", applied, source.table)
