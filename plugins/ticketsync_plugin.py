"""Airflow plugin of ticketsync: registers the load task's "ServiceNow records" extra link.

Airflow's plugin loader imports every top-level ``.py`` here by its bare file name, so the plugin lives in this
one small file and imports the link from the ``ticketsync`` package (kept out of the loader by ``.airflowignore``).
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from ticketsync.links import ServiceNowRecordsLink


class TicketSyncPlugin(AirflowPlugin):
    name = "ticketsync"
    operator_extra_links = [ServiceNowRecordsLink()]  # noqa: RUF012 (AirflowPlugin declares it as a list)
