"""ServiceNowLoadOperator: its share of the run (shard) and of the integration user's rate, over real HTTP."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import TaskDeferred

from tests.support.loader_process import context
from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync.operators.load import ServiceNowLoadOperator
from ticketsync.source import Dialect, Shard, SourceTable
from ticketsync.triggers.resume import ResumeLoadTrigger
from ticketsync_dev.emulator import RunningEmulator
from ticketsync_dev.samples import sample_requests


def set_servicenow(monkeypatch: pytest.MonkeyPatch, port: int, **extra: object) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_DEFAULT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 2, **extra},
    }))


@pytest.mark.parametrize(("extra", "expected"), [({}, None), ({"rate_limit": 12.5}, 12.5), ({"rate_limit": "3"}, 3.0)])
def test_the_rate_limit_extra_is_read_by_name(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, object], expected: float | None
) -> None:
    set_servicenow(monkeypatch, 8765, **extra)
    assert ServiceNowHook().rate_limit() == expected


@pytest.mark.parametrize("bad", ["fast", -1, 0, "nan", "inf", [5]])
def test_a_rate_limit_extra_that_is_not_a_positive_rate_is_refused(
    monkeypatch: pytest.MonkeyPatch, bad: object
) -> None:
    set_servicenow(monkeypatch, 8765, rate_limit=bad)
    with pytest.raises(ValueError, match="'servicenow_default': extra rate_limit must be a positive number"):
        ServiceNowHook().rate_limit()


def test_each_loader_takes_its_share_of_the_rate_and_its_shard() -> None:
    """The rate (operator argument, else the connection's) is the integration user's total: N loaders split it."""
    mapped = ServiceNowLoadOperator(task_id="load", shard_index="2", shard_count="4", max_in_flight="6")
    settings = mapped.settings(connection_rate_limit=40.0)
    assert (settings.rate_limit, settings.shard, settings.max_in_flight) == (10.0, Shard(2, 4), 6)
    override = ServiceNowLoadOperator(task_id="load", shard_index=0, shard_count=4, rate_limit="20")
    assert override.settings(connection_rate_limit=40.0).rate_limit == 5.0
    unmapped = ServiceNowLoadOperator(task_id="load")
    assert (unmapped.settings(40.0).rate_limit, unmapped.settings(40.0).shard) == (40.0, None)
    assert unmapped.settings(None).rate_limit is None
    with pytest.raises(ValueError, match="invalid shard 4 of 4"):
        ServiceNowLoadOperator(task_id="load", shard_index=4, shard_count=4).settings()


def test_a_loader_sends_only_its_shard_at_its_share_of_the_connection_rate(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(sample_requests(40))
    source.claim("servicenow_ticket_sync:run-1", limit=100, chunk_size=100, lease_seconds=60)
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    set_servicenow(monkeypatch, emulator.port, rate_limit=40)

    load = ServiceNowLoadOperator(task_id="load", shard_index=1, shard_count=2, chunk_size=50)
    started = time.monotonic()
    counts = load.execute(context("run-1"))
    elapsed = time.monotonic() - started

    assert (counts["taken"], counts["created"], counts["posts"], counts["lookups"]) == (20, 20, 20, 1)
    # 21 requests at 40/2 = 20 per second are spaced 50 ms apart: at least a second (unpaced, ~0.1 s here).
    assert elapsed >= 0.95, elapsed
    created = sorted(int(record["correlation_id"][-7:]) for record in emulator.store.records("sn_bom_loan_service"))
    assert created == list(range(1, 41, 2)), "only the odd ids (shard 1 of 2) were sent"
    source.close()


def test_a_long_wait_defers_the_task_and_execute_complete_finishes_the_claim(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The operator's side of a deferral: ``execute`` raises TaskDeferred with a ResumeLoadTrigger carrying the counts
    so far; the trigger fires at its moment with them; ``execute_complete`` loads the rest and returns both legs."""
    path = tmp_path / "source.db"
    source = SourceTable(lambda: sqlite3.connect(path), Dialect.SQLITE)
    source.ensure_schema()
    source.insert_requests(sample_requests(12))
    source.claim("servicenow_ticket_sync:run-d", limit=100, chunk_size=100, lease_seconds=60)
    monkeypatch.setenv("AIRFLOW_CONN_TICKET_SOURCE", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    set_servicenow(monkeypatch, emulator.port)
    emulator.set_faults(rate_limit_per_window=8, rate_limit_window_seconds=4)  # a look-up and 7 POSTs, then 429
    load = ServiceNowLoadOperator(task_id="load", max_in_flight=2, defer_after_seconds="1", progress_interval="0.5")
    assert load.settings().progress_interval == 0.5

    with pytest.raises(TaskDeferred) as deferred:
        load.execute(context("run-d"))

    trigger = deferred.value.trigger
    assert isinstance(trigger, ResumeLoadTrigger)
    assert deferred.value.method_name == "execute_complete"
    assert 1 < (trigger.moment - datetime.now(UTC)).total_seconds() <= 5
    assert trigger.counts["created"] == 7
    classpath, kwargs = trigger.serialize()
    assert classpath == "ticketsync.triggers.resume.ResumeLoadTrigger"
    event = asyncio.run(_first_event(ResumeLoadTrigger(**kwargs)))
    assert datetime.now(UTC) >= trigger.moment

    counts = load.execute_complete(context("run-d"), event=event.payload)

    assert (counts["created"], counts["taken"], counts["still_pending"]) == (12, 12, 0)
    assert counts["lookups"] == 2
    assert len(emulator.store.records("sn_bom_loan_service")) == 12
    assert load.settings().defer_after == 1.0
    assert ServiceNowLoadOperator(task_id="load", defer_after_seconds=0).settings().defer_after is None
    source.close()


async def _first_event(trigger: ResumeLoadTrigger) -> Any:
    return await anext(trigger.run())
