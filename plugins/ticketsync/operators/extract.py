"""Extract: make sure the table exists, then claim pending rows for this run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from ticketsync.operators.base import SourceTaskOperator, claim_token


class ClaimRequestsOperator(SourceTaskOperator):
    """Create ``ticket_requests`` if missing and claim up to ``limit`` pending rows in chunks, under a lease.

    Idempotent: a retry re-claims the rows this run already holds. Returns ``{"claimed": n}``.
    """

    template_fields = (*SourceTaskOperator.template_fields, "limit", "chunk_size", "lease_seconds")
    ui_color = "#e8f4fd"

    def __init__(
        self, *, limit: int | str = 10_000, chunk_size: int | str = 500, lease_seconds: float | str = 900, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.chunk_size = chunk_size
        self.lease_seconds = lease_seconds

    def execute(self, context: Context) -> dict[str, int]:
        token = claim_token(context)
        with self.open_source() as source:
            source.ensure_schema()
            claimed = source.claim(
                token, limit=int(self.limit), chunk_size=int(self.chunk_size), lease_seconds=float(self.lease_seconds)
            )
            backlog = source.backlog()
        self.log.info("claimed %d pending requests for %s; table by status: %s", claimed, token, backlog)
        return {"claimed": claimed}
