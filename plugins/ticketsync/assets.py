"""The Airflow Assets of the sync: the source table (inlet of the load) and the ServiceNow table (its outlet).

They must be known when the DAG file is parsed, when no connection may be read, so their URIs are logical and
static, built from the connection ids and table names rather than from hosts:
``ticketsync://ticket_source/ticket_requests`` and ``servicenow://servicenow_default/sn_bom_loan_service``. They stay
the same when a connection is repointed (a new password, a failover host), which is what a downstream DAG scheduled
on "cases were created" wants. The exact hosts are in the OpenLineage datasets (:mod:`ticketsync.lineage`), which are
computed at run time. This module imports nothing but the SDK's ``Asset``: it is read at parse time.
"""

from __future__ import annotations

from airflow.sdk import Asset

SOURCE_ASSET_SCHEME = "ticketsync"
SERVICENOW_ASSET_SCHEME = "servicenow"


def source_asset(conn_id: str = "ticket_source", table: str = "ticket_requests") -> Asset:
    """The source table as an Airflow Asset (static: no connection is read at parse time)."""
    return Asset(uri=f"{SOURCE_ASSET_SCHEME}://{conn_id}/{table}", name=f"{conn_id}.{table}", group="ticketsync")


def servicenow_asset(conn_id: str = "servicenow_default", table: str = "sn_bom_loan_service") -> Asset:
    """The ServiceNow table as an Airflow Asset: "cases were created" for downstream DAGs."""
    return Asset(uri=f"{SERVICENOW_ASSET_SCHEME}://{conn_id}/{table}", name=f"{conn_id}.{table}", group="ticketsync")
