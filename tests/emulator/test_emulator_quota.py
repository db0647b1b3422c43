"""The transaction quota ("REST Table API request timeout", 60 s in the base system), over real HTTP: a Table API
transaction that runs longer is cancelled with a 500 and writes nothing; on by default."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER, assert_envelope, create, query
from ticketsync_dev.emulator import FaultConfig, FaultConfigError, RunningEmulator
from ticketsync_dev.emulator.__main__ import build_parser, config_from_args
from ticketsync_dev.emulator.sessions import Admission, SessionPolicy, SessionSynchronizer

pytestmark = pytest.mark.integration
CANCELLED = "Transaction cancelled: maximum execution time exceeded"
QUOTA = 0.3


def committed(emulator: RunningEmulator) -> int:
    count: int = emulator.stats()["records"][LOAN]
    return count


def test_the_quota_is_on_by_default_at_60_seconds(emulator: RunningEmulator) -> None:
    assert FaultConfig().transaction_quota_seconds == 60.0
    assert emulator.faults.transaction_quota_seconds == 60.0
    assert config_from_args(build_parser().parse_args([]), {}).faults.transaction_quota_seconds == 60.0
    args = build_parser().parse_args(["--transaction-quota", "0.3"])
    assert config_from_args(args, {}).faults.transaction_quota_seconds == QUOTA


def test_a_post_that_outlasts_the_quota_is_cancelled_and_creates_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(transaction_quota_seconds=QUOTA, latency_ms=1500)

    started = time.monotonic()
    response = session.post(table_url, json={"correlation_id": "REQ-slow"})
    elapsed = time.monotonic() - started

    assert_envelope(response, 500, CANCELLED)
    assert QUOTA <= elapsed < 1.2  # cancelled when the quota ran out, not after the whole latency
    assert committed(emulator) == 0
    assert emulator.stats()["faults"]["transaction_quota"] == 1
    listed = session.get(table_url)
    assert_envelope(listed, 500, CANCELLED)  # a read is a Table API transaction too

    emulator.set_faults(latency_ms=100)  # the control: below the quota
    assert session.post(table_url, json={"correlation_id": "REQ-fast"}).status_code == 201
    emulator.set_faults(latency_ms=0)
    assert [r["correlation_id"] for r in query(session, table_url, "")] == ["REQ-fast"]


def test_a_patch_that_outlasts_the_quota_is_cancelled_and_changes_nothing(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    case = create(session, table_url, correlation_id="REQ-1", state="1")
    url = f"{table_url}/{case['sys_id']}"
    emulator.set_faults(transaction_quota_seconds=QUOTA, latency_ms=800)

    response = session.patch(url, json={"state": "10", "work_notes": "late note"})

    assert_envelope(response, 500, CANCELLED)
    emulator.set_faults(latency_ms=0)
    stored = emulator.store.get(LOAN, case["sys_id"])
    assert stored is not None
    assert (stored["state"], stored["sys_mod_count"], stored["sys_updated_on"]) == ("1", "0", case["sys_updated_on"])
    assert emulator.stats()["records"]["sys_journal_field"] == 0
    patched = session.patch(url, json={"state": "10"})  # the control, under the quota
    assert patched.status_code == 200
    assert patched.json()["result"]["state"] == "10"


def test_a_slow_write_before_the_commit_counts_towards_the_quota(
    emulator: RunningEmulator, session: requests.Session, table_url: str
) -> None:
    emulator.set_faults(transaction_quota_seconds=QUOTA, slow_before_commit=1.0, slow_before_commit_ms=800)

    assert_envelope(session.post(table_url, json={"correlation_id": "REQ-1"}), 500, CANCELLED)
    assert committed(emulator) == 0

    emulator.set_faults(transaction_quota_seconds=0)  # the control: quota off, the slow write commits
    assert session.post(table_url, json={"correlation_id": "REQ-2"}).status_code == 201
    assert committed(emulator) == 1


def test_time_waiting_for_the_session_counts_towards_the_quota(emulator: RunningEmulator, table_url: str) -> None:
    """Each request alone fits (0.4 s of 0.6 s); the second of one session waits 0.4 s first and is cancelled."""
    emulator.set_faults(transaction_quota_seconds=0.6, latency_ms=400)

    def post(cookie: str | None, number: int) -> requests.Response:
        headers = {"Cookie": f"JSESSIONID={cookie}"} if cookie else {}
        return requests.post(table_url, json={"correlation_id": f"REQ-{number}"}, auth=(USER, PASSWORD),
                             headers=headers, timeout=10)

    shared = post(None, 0).cookies["JSESSIONID"]
    with ThreadPoolExecutor(2) as pool:
        same_session = sorted(r.status_code for r in pool.map(post, [shared, shared], [1, 2]))
    assert same_session == [201, 500]
    assert committed(emulator) == 2

    with ThreadPoolExecutor(2) as pool:  # the control: a session each, no wait
        own_sessions = [r.status_code for r in pool.map(post, [None, None], [3, 4])]
    assert own_sessions == [201, 201]


def test_a_request_whose_quota_runs_out_while_it_waits_gives_up_waiting() -> None:
    sessions = SessionSynchronizer(SessionPolicy())
    session, _ = sessions.open(None, USER)
    assert sessions.enter(session) is Admission.ENTERED

    started = time.monotonic()
    assert sessions.enter(session, timeout=0.2) is Admission.TIMED_OUT
    assert 0.2 <= time.monotonic() - started < 1.0
    assert sessions.snapshot()["transactions_running"] == 1

    threading.Timer(0.1, sessions.leave, args=(session,)).start()  # the control: the session frees in time
    assert sessions.enter(session, timeout=5) is Admission.ENTERED


def test_the_quota_is_set_over_the_admin_api_and_reset_to_the_default(emulator: RunningEmulator) -> None:
    url = f"{emulator.url}/_emulator/faults"

    changed = requests.put(url, json={"transaction_quota_seconds": 0.5}, timeout=5)
    refused = requests.put(url, json={"transaction_quota_seconds": -1}, timeout=5)

    assert changed.status_code == 200
    assert changed.json()["transaction_quota_seconds"] == 0.5
    assert refused.status_code == 400
    assert emulator.faults.transaction_quota_seconds == 0.5
    emulator.reset(reset_faults=True)
    assert emulator.faults.transaction_quota_seconds == 60.0
    with pytest.raises(FaultConfigError):
        FaultConfig(transaction_quota_seconds=-0.1)
