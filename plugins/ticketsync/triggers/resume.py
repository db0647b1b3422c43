"""The trigger a deferred load waits on: it fires at a moment, carrying the load's counts so far."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ResumeLoadTrigger(BaseTrigger):
    """Fire once ``moment`` has passed, with the deferred load's counts as the event's payload.

    The counts travel in the event (not in the task's ``next_kwargs``), so they reach the resumed task the same way
    under the triggerer and under ``dag.test()``, which runs triggers inline and keeps only the event.

    :param moment: when to fire (timezone-aware).
    :param counts: the load's counts so far (small integers only).
    :param legs: how many legs the load has run so far.
    """

    def __init__(self, moment: datetime, counts: dict[str, int], legs: int = 1) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        if moment.tzinfo is None:
            raise ValueError("the moment to resume a load must be timezone-aware")
        self.moment = moment.astimezone(UTC)
        self.counts = dict(counts)
        self.legs = legs

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {"moment": self.moment, "counts": self.counts, "legs": self.legs},
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Sleep until the moment (in steps of at most a minute, so a changed clock is noticed), then fire."""
        self.log.info("the load resumes at %s", self.moment.isoformat())
        while (left := (self.moment - datetime.now(UTC)).total_seconds()) > 0:
            await asyncio.sleep(min(left, 60.0))
        yield TriggerEvent(  # type: ignore[no-untyped-call]
            {"counts": self.counts, "legs": self.legs, "moment": self.moment.isoformat()}
        )
