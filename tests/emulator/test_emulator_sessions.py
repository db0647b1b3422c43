"""Sessions and the session synchroniser: one transaction at a time per JSESSIONID, as on the instance."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER
from tests.support.tls import make_server_cert
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.__main__ import build_parser, config_from_args
from ticketsync_dev.emulator.sessions import SessionPolicy, SessionPolicyError

pytestmark = pytest.mark.integration
LATENCY_MS = 200


@pytest.fixture(autouse=True)
def default_policy(emulator: RunningEmulator) -> Iterator[None]:
    yield
    emulator.set_session_policy(SessionPolicy())


def _get(url: str, cookie: str | None = None) -> requests.Response:
    headers = {"Accept": "application/json", **({"Cookie": f"JSESSIONID={cookie}"} if cookie else {})}
    return requests.get(url, auth=(USER, PASSWORD), headers=headers, timeout=30)


def _new_session(table_url: str) -> str:
    response = _get(table_url)
    assert response.status_code == 200, response.text
    return response.cookies["JSESSIONID"]


def _at_once(table_url: str, cookies: list[str | None]) -> tuple[list[requests.Response], float]:
    started = time.monotonic()
    with ThreadPoolExecutor(len(cookies)) as pool:
        responses = list(pool.map(lambda cookie: _get(table_url, cookie), cookies))
    return responses, time.monotonic() - started


def test_a_request_without_a_cookie_starts_a_session_and_the_cookie_keeps_it(
    emulator: RunningEmulator, table_url: str
) -> None:
    first = _get(table_url)

    assert first.status_code == 200
    assert set(first.cookies.keys()) == {"JSESSIONID", "glide_user_route"}
    assert "HttpOnly" in first.headers["Set-Cookie"]
    with requests.Session() as http:
        http.auth = (USER, PASSWORD)
        answers = [http.get(table_url, timeout=10) for _ in range(5)]
    again = _get(table_url, first.cookies["JSESSIONID"])

    assert [answer.status_code for answer in answers] == [200] * 5
    assert "Set-Cookie" not in again.headers  # a known session: no new cookie
    assert emulator.stats()["sessions_created"] == 2  # `first`, then the Session's one (kept for its 5 requests)


def test_requests_without_a_cookie_each_create_a_session(emulator: RunningEmulator, table_url: str) -> None:
    for _ in range(4):
        assert _get(table_url).status_code == 200

    assert emulator.stats()["sessions_created"] == 4


def test_one_session_runs_one_transaction_at_a_time_and_separate_sessions_run_together(
    emulator: RunningEmulator, table_url: str
) -> None:
    shared = _new_session(table_url)
    own = [_new_session(table_url) for _ in range(4)]
    emulator.set_faults(latency_ms=LATENCY_MS)
    emulator.reset()

    responses, elapsed = _at_once(table_url, [shared] * 4)
    assert [r.status_code for r in responses] == [200] * 4
    assert emulator.stats()["max_transactions"] == 1  # the control: one cookie, one at a time
    assert elapsed >= 4 * LATENCY_MS / 1000

    emulator.reset()
    responses, elapsed = _at_once(table_url, own)  # type: ignore[arg-type]
    assert [r.status_code for r in responses] == [200] * 4
    assert emulator.stats()["max_transactions"] == 4
    assert elapsed < 3 * LATENCY_MS / 1000
    assert emulator.stats()["sessions_created"] == 0  # the four sessions were reused, none created


def test_two_transactions_per_session_when_configured_and_none_held_when_off(
    emulator: RunningEmulator, table_url: str
) -> None:
    shared = _new_session(table_url)
    emulator.set_faults(latency_ms=LATENCY_MS)

    emulator.set_session_policy(SessionPolicy(transactions=2))
    emulator.reset()
    _at_once(table_url, [shared] * 4)
    assert emulator.stats()["max_transactions"] == 2

    emulator.set_session_policy(SessionPolicy(transactions=0))
    emulator.reset()
    _at_once(table_url, [shared] * 4)
    assert emulator.stats()["max_transactions"] == 4


def test_too_many_waiting_requests_of_one_session_are_refused_with_429(
    emulator: RunningEmulator, table_url: str
) -> None:
    shared = _new_session(table_url)
    emulator.set_session_policy(SessionPolicy(max_waiters=2))
    emulator.set_faults(latency_ms=500)
    emulator.reset()

    responses, _ = _at_once(table_url, [shared] * 6)  # one runs, two wait, three are refused

    refused = [r for r in responses if r.status_code == 429]
    assert len(refused) == 3, [r.status_code for r in responses]
    assert refused[0].json()["error"]["message"] == "Rejecting request"
    assert "Retry-After" not in refused[0].headers  # not a rate-limit rule
    assert emulator.stats()["sessions_refused"] == 3


def test_by_default_ten_requests_of_one_session_wait_and_the_eleventh_is_refused(
    emulator: RunningEmulator, table_url: str
) -> None:
    shared = _new_session(table_url)
    assert emulator.session_policy == SessionPolicy(transactions=1, max_waiters=10, idle_timeout=300.0)  # the default
    emulator.set_faults(latency_ms=300)
    emulator.reset()

    responses, _ = _at_once(table_url, [shared] * 12)  # one runs, ten wait, one is refused

    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 11 + [429], statuses
    assert emulator.stats()["sessions_refused"] == 1


def test_an_idle_session_expires_and_the_next_request_gets_a_new_cookie(
    emulator: RunningEmulator, table_url: str
) -> None:
    emulator.set_session_policy(SessionPolicy(idle_timeout=0.3))
    emulator.reset()
    with requests.Session() as http:
        http.auth = (USER, PASSWORD)
        http.get(table_url, timeout=10)
        before = http.cookies["JSESSIONID"]
        http.get(table_url, timeout=10)
        time.sleep(0.5)
        response = http.get(table_url, timeout=10)
        after = http.cookies["JSESSIONID"]

    assert response.status_code == 200
    assert after != before
    stats = emulator.stats()
    assert stats["sessions_created"] == 2
    assert stats["sessions_expired"] >= 1  # sessions of earlier tests, idle too, may be swept at the same time


def test_bad_credentials_create_no_session(emulator: RunningEmulator, table_url: str) -> None:
    response = requests.get(table_url, auth=(USER, "wrong"), timeout=10)

    assert response.status_code == 401
    assert "Set-Cookie" not in response.headers
    assert emulator.stats()["sessions_created"] == 0


def test_the_policy_can_be_read_and_changed_over_http(emulator: RunningEmulator) -> None:
    url = f"{emulator.url}/_emulator/sessions"

    changed = requests.put(url, json={"transactions": 2, "idle_timeout": 60}, timeout=5)
    refused = requests.put(url, json={"transactions": 3}, timeout=5)

    assert changed.json() == {"transactions": 2, "max_waiters": 10, "idle_timeout": 60.0}
    assert refused.status_code == 400
    assert requests.get(url, timeout=5).json()["session_policy"]["transactions"] == 2
    emulator.reset(reset_faults=True)  # back to the start configuration
    assert emulator.session_policy == SessionPolicy()


def test_the_command_line_sets_the_policy() -> None:
    args = build_parser().parse_args(["--session-transactions", "2", "--session-idle-timeout", "30"])

    assert config_from_args(args, {}).sessions == SessionPolicy(transactions=2, idle_timeout=30.0)
    with pytest.raises(SessionPolicyError):
        SessionPolicy(max_waiters=-1)


def test_cookies_are_secure_under_tls(tmp_path: Path) -> None:
    tls = make_server_cert(tmp_path)
    config = EmulatorConfig(user=USER, password=PASSWORD, tls_cert=str(tls.cert), tls_key=str(tls.key))
    with start_emulator(config) as emulator:
        url = f"{emulator.url}/api/now/table/{LOAN}"
        response = requests.get(url, auth=(USER, PASSWORD), verify=str(tls.ca_bundle), timeout=10)

    cookies = response.raw.headers.getlist("Set-Cookie")
    assert len(cookies) == 2
    assert all(cookie.endswith("; Secure") for cookie in cookies)
