"""Lineage: the Airflow Assets the load declares, and the OpenLineage datasets and run facet it reports.

Two layers, on purpose:

* **Airflow Assets** (inlets/outlets, for data-aware scheduling; :mod:`ticketsync.assets`) are static, since they
  must be known when the DAG file is parsed, when no connection may be read.
* **OpenLineage datasets** are computed at run time, from the connections, with the exact namespaces of
  OpenLineage's naming spec: PostgreSQL ``postgres://{host}:{port}`` + ``{database}.{schema}.{table}``; SQLite,
  which the spec does not list, as a local file (the OpenLineage maintainers' advice): ``file://{hostname}`` +
  ``{absolute path}.{table}``; ServiceNow as the instance's base URL ``https://{instance host}`` + the table name.

Nothing here is needed for the sync to run: without an OpenLineage transport the provider emits nothing.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import attr
from openlineage.client.facet_v2 import RunFacet

if TYPE_CHECKING:
    from airflow.sdk import Connection

RUN_FACET_KEY = "ticketsync"
RUN_FACET_SCHEMA = "urn:ticketsync:openlineage:facet:TicketSyncRunFacet:1-0-0"


@dataclass(frozen=True)
class DatasetName:
    namespace: str
    name: str


def source_dataset(conn: Connection, table: str, schema: str | None = None) -> DatasetName:
    """The source table's OpenLineage namespace and name, from its Airflow connection."""
    if conn.conn_type in ("postgres", "postgresql"):
        host = conn.host or "localhost"
        port = conn.port or 5432
        database = conn.schema or "postgres"
        return DatasetName(f"postgres://{host}:{port}", f"{database}.{schema or 'public'}.{table}")
    if conn.conn_type == "mysql":
        host = conn.host or "localhost"
        port = conn.port or 3306
        return DatasetName(f"mysql://{host}:{port}", f"{conn.schema}.{table}" if conn.schema else table)
    if conn.conn_type == "sqlite":
        path = os.path.abspath(conn.host or "")
        return DatasetName(f"file://{socket.gethostname()}", f"{path}.{table}")
    raise ValueError(f"no OpenLineage naming for conn_type {conn.conn_type!r}")


def servicenow_dataset(base_url: str, table: str) -> DatasetName:
    """The ServiceNow table on one instance: namespace is the instance's scheme://host[:port]."""
    parsed = urlparse(base_url)
    default_port = {"https": 443, "http": 80}.get(parsed.scheme)
    netloc = parsed.hostname or ""
    if parsed.port and parsed.port != default_port:
        netloc = f"{netloc}:{parsed.port}"
    return DatasetName(f"{parsed.scheme}://{netloc}", table)


@attr.define
class TicketSyncRunFacet(RunFacet):  # type: ignore[misc]
    """The load's outcome counts, as a custom OpenLineage run facet (key ``ticketsync``)."""

    taken: int = attr.field(default=0)
    created: int = attr.field(default=0)
    adopted: int = attr.field(default=0)
    rejected: int = attr.field(default=0)
    failed: int = attr.field(default=0)
    stillPending: int = attr.field(default=0)  # camelCase, as OpenLineage facets are
    posts: int = attr.field(default=0)
    lookups: int = attr.field(default=0)
    dryRun: bool = attr.field(default=False)

    @staticmethod
    def _get_schema() -> str:
        return RUN_FACET_SCHEMA


def run_facet(counts: dict[str, Any], *, dry_run: bool = False) -> TicketSyncRunFacet:
    return TicketSyncRunFacet(
        taken=int(counts.get("taken", 0)),
        created=int(counts.get("created", 0)),
        adopted=int(counts.get("adopted", 0)),
        rejected=int(counts.get("rejected", 0)),
        failed=int(counts.get("failed", 0)),
        stillPending=int(counts.get("still_pending", 0)),
        posts=int(counts.get("posts", 0)),
        lookups=int(counts.get("lookups", 0)),
        dryRun=dry_run,
    )


def operator_lineage(
    source: DatasetName, target: DatasetName | None, counts: dict[str, Any] | None, *, dry_run: bool = False
) -> Any:
    """The ``OperatorLineage`` the OpenLineage provider asks the load operator for.

    A dry run reads the source and writes nothing, so it reports no output dataset.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    outputs = [Dataset(namespace=target.namespace, name=target.name)] if target and not dry_run else []
    return OperatorLineage(
        inputs=[Dataset(namespace=source.namespace, name=source.name)],
        outputs=outputs,
        run_facets={RUN_FACET_KEY: run_facet(counts or {}, dry_run=dry_run)},
    )


def status_lineage(instance_tables: list[DatasetName], source: DatasetName, counts: dict[str, Any] | None) -> Any:
    """The ``OperatorLineage`` of the case status pull: the instance tables it read in, the source table out.

    Its run facet (key ``ticketsyncStatus``) carries the pull's counts.
    """
    from airflow.providers.openlineage.extractors import OperatorLineage
    from openlineage.client.event_v2 import Dataset

    return OperatorLineage(
        inputs=[Dataset(namespace=d.namespace, name=d.name) for d in instance_tables],
        outputs=[Dataset(namespace=source.namespace, name=source.name)],
        run_facets={STATUS_FACET_KEY: status_run_facet(counts or {})},
    )


STATUS_FACET_KEY = "ticketsyncStatus"
STATUS_FACET_SCHEMA = "urn:ticketsync:openlineage:facet:TicketSyncStatusRunFacet:1-0-0"


@attr.define
class TicketSyncStatusRunFacet(RunFacet):  # type: ignore[misc]
    """What one status pull did: pages and requests sent, cases read, source rows changed, cases not found."""

    pages: int = attr.field(default=0)
    listRequests: int = attr.field(default=0)  # camelCase, as OpenLineage facets are
    casesRead: int = attr.field(default=0)
    rowsChanged: int = attr.field(default=0)
    notFound: int = attr.field(default=0)

    @staticmethod
    def _get_schema() -> str:
        return STATUS_FACET_SCHEMA


def status_run_facet(counts: dict[str, Any]) -> TicketSyncStatusRunFacet:
    return TicketSyncStatusRunFacet(
        pages=int(counts.get("pages", 0)),
        listRequests=int(counts.get("list_requests", 0)),
        casesRead=int(counts.get("cases_read", 0)),
        rowsChanged=int(counts.get("rows_changed", 0)),
        notFound=int(counts.get("not_found", 0)),
    )
