"""The Airflow Assets of the sync: the source table (inlet of the load) and the ServiceNow table (its outlet).

They must be known when the DAG file is parsed, when no connection may be read, so their URIs are logical and
static, built from the connection ids and table names rather than from hosts:
``ticketsync://ticket_source/ticket_requests`` and ``servicenow://servicenow_default/sn_bom_loan_service``. They stay
the same when a connection is repointed (a new password, a failover host), which is what a downstream DAG scheduled
on "cases were created" wants. The exact hosts are in the OpenLineage datasets (:mod:`ticketsync.lineage`), which are
computed at run time. This module imports nothing but the SDK's assets: it is read at parse time.

The load declares the ServiceNow table through an ``AssetAlias`` (:func:`cases_created_alias`), so that it emits an
event for the table only when its rows came to cases (created or adopted), with the counts in the event's extra
(:func:`cases_event_extra`); a run that created nothing emits none (docs/operations.md, "Asset events").
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias

SOURCE_ASSET_SCHEME = "ticketsync"
SERVICENOW_ASSET_SCHEME = "servicenow"


def source_asset(conn_id: str = "ticket_source", table: str = "ticket_requests") -> Asset:
    """The source table as an Airflow Asset (static: no connection is read at parse time)."""
    return Asset(uri=f"{SOURCE_ASSET_SCHEME}://{conn_id}/{table}", name=f"{conn_id}.{table}", group="ticketsync")


def servicenow_asset(conn_id: str = "servicenow_default", table: str = "sn_bom_loan_service") -> Asset:
    """The ServiceNow table as an Airflow Asset: "cases were created" for downstream DAGs."""
    return Asset(uri=f"{SERVICENOW_ASSET_SCHEME}://{conn_id}/{table}", name=f"{conn_id}.{table}", group="ticketsync")


def cases_created_alias(conn_id: str = "servicenow_default", table: str = "sn_bom_loan_service") -> AssetAlias:
    """The load's outlet: an alias through which it emits :func:`servicenow_asset` events, only when cases came of
    the run (an outlet ``Asset`` would have Airflow emit an event after every successful load, even an empty one)."""
    return AssetAlias(name=f"{conn_id}.{table}.cases", group="ticketsync")


def cases_event_extra(dag_id: str, run_id: str, shard: tuple[int, int], summary: dict[str, int]) -> dict[str, Any]:
    """The extra of a cases event: which run and loader (``shard`` is (index, count)), and how its rows ended, over
    all tries: ``created`` (posted), ``adopted`` (an existing record linked), ``failed``, ``rejected``."""
    index, count = shard
    return {
        "dag_id": dag_id, "run_id": run_id, "loader": index, "loaders": count,
        **{key: int(summary.get(key, 0)) for key in ("created", "adopted", "failed", "rejected")},
    }
