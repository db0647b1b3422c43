"""The DAG a new Airflow user writes first: read the pending rows, then one mapped ``HttpOperator`` task per row.

Only the benchmark loads it (``bench/bench.py`` points ``dags test`` at ``bench/dags/``). It is the baseline ticketsync
is measured against, and has none of its guarantees: no look-up before create, no write-back, no pacing.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.http.operators.http import HttpOperator
from airflow.providers.postgres.hooks.postgres import PostgresHook
from airflow.sdk import DAG, Param, task

with DAG(
    dag_id="naive_http_mapped",
    doc_md=__doc__,
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["bench"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=1)},
    params={"limit": Param(50, type="integer", minimum=1, description="Rows to send")},
) as dag:

    @task
    def pending_bodies(params: dict[str, Any] | None = None) -> list[str]:
        rows = PostgresHook(postgres_conn_id="ticket_source").get_records(
            "SELECT request_id, short_description, consumer, sold_product FROM ticket_requests "
            "WHERE status = 'pending' ORDER BY id LIMIT %s",
            parameters=((params or {}).get("limit", 50),),
        )
        return [
            json.dumps({"correlation_id": r[0], "short_description": r[1], "consumer": r[2], "sold_product": r[3]})
            for r in rows
        ]

    HttpOperator.partial(
        task_id="create_case",
        http_conn_id="naive_servicenow",
        endpoint="api/now/table/sn_bom_loan_service",
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    ).expand(data=pending_bodies())
