"""ServiceNowHook with OAuth 2.0 against the emulator over real HTTP: both grants, the shared token, renewal
before expiry, one renewal on 401, and refusals that name the problem without the secret."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from ticketsync.hooks.servicenow import ServiceNowAuthError, ServiceNowHook
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator

TABLE = "sn_bom_loan_service"
USER, PASSWORD = "integration.user", "user-pa55word-e7"
CLIENT_ID, CLIENT_SECRET = "ticketsync-client", "cl1ent-s3cret-9f"


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEmulator]:
    config = EmulatorConfig(user=USER, password=PASSWORD, oauth_client_id=CLIENT_ID, oauth_client_secret=CLIENT_SECRET)
    with start_emulator(config) as emulator:
        yield emulator


@pytest.fixture
def emulator(running: RunningEmulator) -> RunningEmulator:
    running.reset(reset_faults=True)
    running.set_token_lifetime(1799)
    return running


def oauth_hook(monkeypatch: pytest.MonkeyPatch, emulator: RunningEmulator, auth_type: str, *,
               client_secret: str = CLIENT_SECRET, password: str = PASSWORD, login: str = USER) -> ServiceNowHook:
    conn_id = f"sn_{auth_type}"
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
        "login": login, "password": password,
        "extra": {"auth_type": auth_type, "client_id": CLIENT_ID, "client_secret": client_secret, "timeout": 5},
    }))
    return ServiceNowHook(conn_id, pool_size=8)


@pytest.fixture(params=["oauth_client_credentials", "oauth_password"])
def hook(request: pytest.FixtureRequest, emulator: RunningEmulator,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    hook = oauth_hook(monkeypatch, emulator, request.param)
    yield hook
    hook.close()


def token_requests(emulator: RunningEmulator) -> int:
    return int(emulator.stats()["oauth"]["token_requests"])


def test_both_grants_create_records_with_a_bearer_token_and_no_basic_auth(
    hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    created = hook.create_record(TABLE, {"correlation_id": "REQ-1", "short_description": "x"})
    assert hook.find_by_correlation(TABLE, ["REQ-1"])["REQ-1"][0].sys_id == created.sys_id
    assert hook.get_conn().auth is None  # the password never travels with Table API calls
    assert token_requests(emulator) == 1


def test_one_token_serves_many_calls_from_many_threads(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda i: hook.create_record(TABLE, {"correlation_id": f"R-{i}", "short_description": "x"}),
                      range(40)))
    assert len(emulator.store.records(TABLE)) == 40
    assert token_requests(emulator) == 1
    assert "401" not in emulator.stats()["by_status"]


def test_the_token_is_renewed_before_it_expires(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    emulator.set_token_lifetime(2)
    hook.create_record(TABLE, {"correlation_id": "A", "short_description": "x"})
    time.sleep(1.9)  # past lifetime minus the margin (a tenth of 2 s), still before the emulator expires it
    hook.create_record(TABLE, {"correlation_id": "B", "short_description": "x"})
    assert token_requests(emulator) == 2
    assert "401" not in emulator.stats()["by_status"], "the hook waited for a 401 instead of renewing"


def test_a_revoked_token_is_renewed_once_and_the_call_succeeds(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    hook.create_record(TABLE, {"correlation_id": "A", "short_description": "x"})
    emulator.revoke_tokens()
    hook.create_record(TABLE, {"correlation_id": "B", "short_description": "x"})
    assert token_requests(emulator) == 2
    assert emulator.stats()["by_status"]["401"] == 1
    assert len(emulator.store.records(TABLE)) == 2  # the refused POST did nothing, its retry created one record


def test_a_401_that_persists_after_renewal_is_an_auth_error(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    hook.create_record(TABLE, {"correlation_id": "A", "short_description": "x"})
    emulator.set_faults(fail_auth=True)
    with pytest.raises(ServiceNowAuthError, match="freshly issued OAuth token"):
        hook.create_record(TABLE, {"correlation_id": "B", "short_description": "x"})
    assert token_requests(emulator) == 2  # exactly one renewal, no loop
    assert emulator.stats()["by_status"]["401"] == 2


@pytest.mark.parametrize("auth_type", ["oauth_client_credentials", "oauth_password"])
def test_a_wrong_client_secret_is_an_auth_error_that_does_not_show_it(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch, auth_type: str
) -> None:
    wrong = "wrong-s3cret-Zq81"
    hook = oauth_hook(monkeypatch, emulator, auth_type, client_secret=wrong)
    with pytest.raises(ServiceNowAuthError) as caught:
        hook.create_record(TABLE, {"correlation_id": "A", "short_description": "x"})
    text = f"{caught.value} {caught.value!r} {caught.value.__cause__!r}"
    assert "OAuth token request refused" in text
    assert "access_denied" in text
    assert "client_secret" in text  # names what to check
    assert wrong not in text
    assert PASSWORD not in text
    assert emulator.store.records(TABLE) == []


def test_a_wrong_user_password_with_the_password_grant_is_an_auth_error(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    hook = oauth_hook(monkeypatch, emulator, "oauth_password", password="not-it-42")
    with pytest.raises(ServiceNowAuthError, match="login and password") as caught:
        hook.create_record(TABLE, {"correlation_id": "A", "short_description": "x"})
    assert "not-it-42" not in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"auth_type": "kerberos"}, "extra auth_type must be one of basic, oauth_client_credentials, oauth_pass"),
        ({"auth_type": "oauth_client_credentials", "client_id": "x"}, "has no client_secret"),
        ({"auth_type": "oauth_client_credentials", "client_secret": "s"}, "has no client_id"),
    ],
)
def test_an_incomplete_oauth_connection_is_refused_before_any_request(
    monkeypatch: pytest.MonkeyPatch, extra: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SN_HALF", json.dumps({
        "conn_type": "http", "host": "x.service-now.com", "schema": "https", "extra": extra,
    }))
    with pytest.raises(ValueError, match=message) as caught:
        ServiceNowHook("sn_half").get_conn()
    assert "'s'" not in str(caught.value)


def test_the_password_grant_needs_login_and_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SN_NOUSER", json.dumps({
        "conn_type": "http", "host": "x.service-now.com", "schema": "https",
        "extra": {"auth_type": "oauth_password", "client_id": "c", "client_secret": "s"},
    }))
    with pytest.raises(ValueError, match="has no login, password"):
        ServiceNowHook("sn_nouser").get_conn()
