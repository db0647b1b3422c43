"""Transform: validate every claimed row; reject the invalid ones with their reasons before anything is sent."""

from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from ticketsync.models import Rejection, SyncStatus
from ticketsync.operators.base import SourceTaskOperator, claim_token
from ticketsync.source import Outcome
from ticketsync.typed import flag


class ValidateRequestsOperator(SourceTaskOperator):
    """Stream the run's claimed rows, apply the pure transform, and write ``rejected`` + reason for bad ones.

    Valid rows are left as they are: the load transforms them again (it is cheap and pure), so no body is stored
    or passed between tasks. Returns ``{"valid": n, "rejected": m}``.

    :param chunk_size: rows read per statement (templated).
    :param is_dry_run: write nothing (templated).
    """

    template_fields = (*SourceTaskOperator.template_fields, "chunk_size", "is_dry_run")
    ui_color = "#fdf6e3"

    def __init__(self, *, chunk_size: int | str = 500, is_dry_run: bool | str = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.chunk_size = chunk_size
        self.is_dry_run = is_dry_run

    def execute(self, context: Context) -> dict[str, int]:
        if flag(self.is_dry_run, name="is_dry_run"):
            self.log.info("dry run: nothing is written here; the load validates and plans the rows")
            return {"valid": 0, "rejected": 0}
        token = claim_token(context)
        valid = rejected = 0
        prepare = self.transform()
        with self.open_source() as source:
            for rows in source.iter_claimed(token, chunk_size=int(self.chunk_size)):
                outcomes = []
                for row in rows:
                    result = prepare(row)
                    if isinstance(result, Rejection):
                        outcomes.append(Outcome(row.id, SyncStatus.REJECTED, error=result.reason))
                        self.log.warning("rejected %s: %s", row.label, result.reason)
                    else:
                        valid += 1
                rejected += source.write_outcomes(token, outcomes)
        self.log.info("%d valid, %d rejected", valid, rejected)
        return {"valid": valid, "rejected": rejected}
