"""The load task's extra link "ServiceNow records": the run's records in a ServiceNow list view.

Which filter, and why:

* up to :data:`MAX_LINKED_IDS` records: ``correlation_idIN<request ids>``, exact, and it includes the records the run
  adopted (found by correlation id) as well as those it created. The ids come from the source table (this run's
  ``created`` rows), one small query;
* more than that (a URL of thousands of ids is refused by proxies and browsers): the creation window of the load,
  ``sys_created_on`` between its start and end, narrowed to ``sys_created_by`` = the integration user. Bounded and
  cheap; exact as long as nothing else creates records as that user in the same minutes (a dedicated integration
  user is the documented setup). ServiceNow reads date-times in a list filter in the viewing user's time zone, so
  the window is written in UTC and widened by a minute on each side; a user whose profile is not in UTC sees a
  shifted window (the correlation-id form has no such caveat).

In Airflow 3 the task computes the link when it ends and stores it as an XCom (key ``_link_ServiceNowRecordsLink``);
the UI reads it from there. The class is registered by ``plugins/ticketsync_plugin.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

from airflow.sdk import BaseOperatorLink

MAX_LINKED_IDS = 100
SN_DATETIME = "%Y-%m-%d %H:%M:%S"


def records_url(
    base_url: str,
    table: str,
    *,
    correlation_ids: Sequence[str],
    window: tuple[datetime, datetime] | None = None,
    created_by: str | None = None,
) -> str:
    """The list view URL of ``table`` on the instance at ``base_url``, filtered on a run's records."""
    if correlation_ids and len(correlation_ids) <= MAX_LINKED_IDS:
        query = f"correlation_idIN{','.join(correlation_ids)}^ORDERBYcorrelation_id"
    elif window is not None:
        start, end = window[0] - timedelta(minutes=1), window[1] + timedelta(minutes=1)
        query = f"sys_created_on>={start.strftime(SN_DATETIME)}^sys_created_on<={end.strftime(SN_DATETIME)}"
        if created_by:
            query += f"^sys_created_by={created_by}"
        query += "^ORDERBYsys_created_on"
    else:
        query = "correlation_idISEMPTY^correlation_idISNOTEMPTY"  # no record: an empty list, never the whole table
    return f"{base_url.rstrip('/')}/{table}_list.do?sysparm_query={quote(query, safe='')}"


class ServiceNowRecordsLink(BaseOperatorLink):
    """"ServiceNow records" on the load task: the URL the load computed for its run (empty if it computed none)."""

    name = "ServiceNow records"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return str(getattr(operator, "records_url", None) or "")
