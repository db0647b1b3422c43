"""Session lanes: each thread that calls the hook holds its own ServiceNow session, so the instance (the emulator's
session synchroniser, one transaction at a time per session) runs the requests of separate threads at once.

The control is the same hook with one cookie jar shared by every thread (``shared_session=True``), which is what
the hook did before: the instance then runs them one at a time."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync_dev.emulator import RunningEmulator

TABLE = "sn_bom_loan_service"
LANES = 4
LATENCY_MS = 150


@pytest.fixture
def connection(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_LANES", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 10},
    }))
    emulator.set_faults(latency_ms=LATENCY_MS)
    return "servicenow_lanes"


def _hook(conn_id: str, *, shared_session: bool) -> Iterator[ServiceNowHook]:
    hook = ServiceNowHook(conn_id, pool_size=LANES, shared_session=shared_session)
    yield hook
    hook.close()


def _create_in_lanes(hook: ServiceNowHook, per_lane: int) -> float:
    """LANES threads, each creating `per_lane` records one after the other; returns the seconds it took."""
    def lane(index: int) -> None:
        for number in range(per_lane):
            hook.create_record(TABLE, {"correlation_id": f"L{index}-{number}", "short_description": "lane"})

    started = time.monotonic()
    with ThreadPoolExecutor(LANES) as pool:
        list(pool.map(lane, range(LANES)))
    return time.monotonic() - started


def test_each_thread_has_its_own_session_and_they_run_at_once(connection: str, emulator: RunningEmulator) -> None:
    hook = ServiceNowHook(connection, pool_size=LANES)
    try:
        elapsed = _create_in_lanes(hook, per_lane=3)
    finally:
        hook.close()

    stats = emulator.stats()
    assert stats["sessions_created"] == LANES  # one per lane, reused for its three requests
    assert hook.sessions_started == 0  # closed: a new transport counts afresh
    assert stats["max_transactions"] == LANES
    assert elapsed < 3 * LANES * LATENCY_MS / 1000 * 0.6
    assert len(emulator.store.records(TABLE)) == 3 * LANES


def test_control_one_shared_session_runs_one_request_at_a_time(connection: str, emulator: RunningEmulator) -> None:
    hook = ServiceNowHook(connection, pool_size=LANES, shared_session=True)
    try:
        hook.create_record(TABLE, {"correlation_id": "first", "short_description": "opens the session"})
        elapsed = _create_in_lanes(hook, per_lane=3)
        started = hook.sessions_started
    finally:
        hook.close()

    stats = emulator.stats()
    assert started == 1
    assert stats["sessions_created"] == 1
    assert stats["max_transactions"] == 1  # the instance serialised every request of the one session
    assert elapsed >= 3 * LANES * LATENCY_MS / 1000 * 0.95


def test_a_lane_whose_session_expired_gets_a_new_one_and_carries_on(
    connection: str, emulator: RunningEmulator
) -> None:
    from ticketsync_dev.emulator.sessions import SessionPolicy

    emulator.set_faults(latency_ms=0)
    emulator.set_session_policy(SessionPolicy(idle_timeout=0.3))
    hook = ServiceNowHook(connection, pool_size=1)
    try:
        hook.create_record(TABLE, {"correlation_id": "a", "short_description": "x"})
        before = hook._connect().cookies().as_dict()
        time.sleep(0.5)
        hook.create_record(TABLE, {"correlation_id": "b", "short_description": "x"})
        hook.create_record(TABLE, {"correlation_id": "c", "short_description": "x"})
        after = hook._connect().cookies().as_dict()
        started = hook.sessions_started
    finally:
        hook.close()

    assert before["JSESSIONID"] != after["JSESSIONID"]
    assert started == 2
    assert emulator.stats()["sessions_created"] == 2
    assert len(emulator.store.records(TABLE)) == 3


def test_a_lane_whose_request_timed_out_leaves_that_session_and_does_not_queue_behind_it(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The instance goes on with a request after the client stopped waiting, on the lane's session: the lane's next
    request would wait behind it and could commit later than settle_seconds allows for. It starts a new session."""
    from ticketsync.hooks.servicenow import ServiceNowTimeout

    monkeypatch.setenv("AIRFLOW_CONN_SERVICENOW_LANE_TIMEOUT", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": "admin", "password": "s3cret-emulator", "extra": {"timeout": 0.3},
    }))
    hook = ServiceNowHook("servicenow_lane_timeout", pool_size=1)
    try:
        hook.create_record(TABLE, {"correlation_id": "opens", "short_description": "x"})
        emulator.set_faults(slow_before_commit=1.0, slow_before_commit_ms=4000, methods=["POST"])
        with pytest.raises(ServiceNowTimeout):
            hook.create_record(TABLE, {"correlation_id": "slow", "short_description": "x"})
        emulator.set_faults(slow_before_commit=0.0)
        started = time.monotonic()
        hook.create_record(TABLE, {"correlation_id": "next", "short_description": "x"})
        elapsed = time.monotonic() - started
    finally:
        hook.close()

    assert elapsed < 2.0  # not queued behind the 4 s write still running on the old session (~3.5 s left)
    assert emulator.stats()["sessions_created"] == 2
