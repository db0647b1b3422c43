"""What every ticketsync task shares: the source connection, the table, and the run's claim token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from airflow.sdk import BaseHook, BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from ticketsync.definitions import SyncDefinition
from ticketsync.definitions.transform import Prepare, transform_for
from ticketsync.models import PRODUCER_COLUMNS
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
    :param definition: the sync definition whose rows the task works on (its own columns are read, its transform
        applied), or its data (as the DAG factory passes it); None for the loan definition of ``ticket_requests``.
    """

    template_fields: tuple[str, ...] = ("source_conn_id", "source_table")

    def __init__(
        self,
        *,
        source_conn_id: str = DEFAULT_SOURCE_CONN_ID,
        source_table: str = DEFAULT_SOURCE_TABLE,
        definition: SyncDefinition | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.source_conn_id = source_conn_id
        self.source_table = source_table
        self.definition = definition

    def sync_definition(self) -> SyncDefinition | None:
        """The task's definition, validated (the factory passes it as data)."""
        if self.definition is None or isinstance(self.definition, SyncDefinition):
            return self.definition
        return SyncDefinition.model_validate(self.definition)

    def open_source(self) -> SourceTable:
        definition = self.sync_definition()
        own = [c for c in definition.source_columns() if c not in PRODUCER_COLUMNS] if definition else []
        return SourceTable.from_conn_id(self.source_conn_id, validate_identifier(self.source_table), extra_columns=own)

    def transform(self) -> Prepare:
        """The pure transform of this task's rows (:func:`ticketsync.definitions.transform.transform_for`)."""
        return transform_for(self.sync_definition())

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
