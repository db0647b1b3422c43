"""Extract: make sure the table exists, then claim pending rows for this run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from ticketsync.operators.base import SourceTaskOperator, claim_token


class ClaimRequestsOperator(SourceTaskOperator):
    """Create ``ticket_requests`` if missing and claim up to ``limit`` pending rows in chunks, under a lease.

    Idempotent: a retry re-claims the rows this run already holds. Returns the shard indexes ``[0, …, loaders-1]``
    that the mapped load expands over (each loader takes the rows with ``id % loaders = index``; Airflow maps only
    over a return value), and pushes the number of rows claimed under the XCom key ``claimed``.
    """

    template_fields = (*SourceTaskOperator.template_fields, "limit", "chunk_size", "lease_seconds", "loaders")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        limit: int | str = 10_000,
        chunk_size: int | str = 500,
        lease_seconds: float | str = 900,
        loaders: int | str = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.chunk_size = chunk_size
        self.lease_seconds = lease_seconds
        self.loaders = loaders

    def execute(self, context: Context) -> list[int]:
        token = claim_token(context)
        loaders = int(self.loaders)
        if loaders < 1:
            raise ValueError(f"loaders must be at least 1, got {loaders}")
        with self.open_source() as source:
            source.ensure_schema()
            claimed = source.claim(
                token, limit=int(self.limit), chunk_size=int(self.chunk_size), lease_seconds=float(self.lease_seconds)
            )
            backlog = source.backlog()
        self.log.info("claimed %d pending requests for %s, to be sent by %d loaders; table by status: %s",
                      claimed, token, loaders, backlog)
        context["ti"].xcom_push(key="claimed", value=claimed)
        return list(range(loaders))
