"""Extract: bring the table to the latest schema version, then claim pending rows for this run."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException

from ticketsync import dryrun
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.source import SourceTable
from ticketsync.typed import flag, id_list


class ClaimRequestsOperator(SourceTaskOperator):
    """Create ``ticket_requests`` if missing or apply its pending schema migrations (unless the source connection's
    extra ``ticketsync_auto_migrate`` is false: then fail at once if any is pending, docs/migrations.md), and claim up
    to ``limit`` pending rows in chunks, under a lease.

    Idempotent: a retry re-claims the rows this run already holds. Returns the shard indexes ``[0, …, loaders-1]``
    that the mapped load expands over (each loader takes the rows with ``id % loaders = index``; Airflow maps only
    over a return value), and pushes the number of rows claimed under the XCom key ``claimed``.

    ``request_ids`` (a replay): claim exactly those rows instead, whatever their status, after resetting them to
    ``pending`` with their previous state kept in ``<table>_replays`` (see :meth:`SourceTable.replay`).
    ``is_dry_run``: only count what would be claimed (plain SELECTs; no table is created, no row touched), and
    return ``[0]``: one loader plans the whole selection.

    :param limit: at most this many rows per run (templated).
    :param chunk_size: rows claimed per statement (templated).
    :param lease_seconds: how long the claim holds the rows before another run may take them (templated).
    :param loaders: the number of mapped loaders (shards) to return (templated).
    :param is_dry_run: count only; touch nothing (templated).
    :param request_ids: replay exactly these requests: a list or a comma-separated string (templated).
    """

    template_fields = (
        *SourceTaskOperator.template_fields, "limit", "chunk_size", "lease_seconds", "loaders", "is_dry_run",
        "request_ids",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        limit: int | str = 10_000,
        chunk_size: int | str = 500,
        lease_seconds: float | str = 900,
        loaders: int | str = 1,
        is_dry_run: bool | str = False,
        request_ids: list[str] | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.limit = limit
        self.chunk_size = chunk_size
        self.lease_seconds = lease_seconds
        self.loaders = loaders
        self.is_dry_run = is_dry_run
        self.request_ids = request_ids

    def execute(self, context: Context) -> list[int]:
        token = claim_token(context)
        loaders = int(self.loaders)
        if loaders < 1:
            raise ValueError(f"loaders must be at least 1, got {loaders}")
        request_ids = id_list(self.request_ids, name="request_ids")
        if flag(self.is_dry_run, name="is_dry_run"):
            context["ti"].xcom_push(key="claimed", value=0)
            context["ti"].xcom_push(key="selected", value=self.dry_run_count(request_ids))
            return [0]
        with self.open_source() as source:
            self.ensure_schema(source)
            if request_ids:
                claimed = self.replay(source, token, request_ids)
            else:
                claimed = source.claim(
                    token, limit=int(self.limit), chunk_size=int(self.chunk_size),
                    lease_seconds=float(self.lease_seconds),
                )
            backlog = source.backlog()
        self.log.info("claimed %d pending requests for %s, to be sent by %d loaders; table by status: %s",
                      claimed, token, loaders, backlog)
        context["ti"].xcom_push(key="claimed", value=claimed)
        return list(range(loaders))

    def replay(self, source: SourceTable, token: str, request_ids: list[str]) -> int:
        try:
            result = source.replay(token, request_ids, lease_seconds=float(self.lease_seconds))
        except ValueError as exc:  # unknown request ids: bad input, nothing was changed, a retry cannot help
            raise AirflowFailException(str(exc)) from exc
        for row in result.reset:
            self.log.warning(
                "replay %s: was %s (attempts %d, record %s, error %s); now pending for this run (previous state "
                "kept in %s)", row.request_id, row.status, row.attempts, row.number or row.sys_id or "none",
                (row.error or "none")[:200], source.replays_table,
            )
        if result.held:
            self.log.info("already held by this run (a retried extract): %s", ", ".join(result.held))
        if result.busy:
            self.log.warning("not replayed, held by another run under a live lease: %s", ", ".join(result.busy))
        return result.claimed

    def dry_run_count(self, request_ids: list[str]) -> int:
        with self.open_source() as source:
            selected = sum(
                len(rows)
                for rows in dryrun.selection(
                    source, limit=int(self.limit), chunk_size=int(self.chunk_size), request_ids=request_ids
                )
            )
        self.log.info("dry run: a run would claim %d rows; nothing was claimed", selected)
        return selected
