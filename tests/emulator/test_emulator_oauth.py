"""The emulator's OAuth 2.0 token endpoint over real HTTP: grants, bearer access, expiry, revocation, counters."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator
from ticketsync_dev.emulator.__main__ import build_parser, config_from_args

CLIENT_ID = "ticketsync-client"
CLIENT_SECRET = "cl1ent-s3cret"


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


def token_request(emulator: RunningEmulator, **form: str) -> requests.Response:
    return requests.post(f"{emulator.url}/oauth_token.do", data=form, timeout=5)


def client_credentials(emulator: RunningEmulator, secret: str = CLIENT_SECRET) -> requests.Response:
    return token_request(emulator, grant_type="client_credentials", client_id=CLIENT_ID, client_secret=secret)


def list_with(emulator: RunningEmulator, token: str) -> requests.Response:
    return requests.get(
        f"{emulator.url}/api/now/table/{LOAN}", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )


def test_client_credentials_grant_issues_a_bearer_token_the_table_api_accepts(emulator: RunningEmulator) -> None:
    response = client_credentials(emulator)
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["token_type"] == "Bearer"
    assert payload["expires_in"] == 1799
    assert response.headers["Cache-Control"] == "no-store"
    assert list_with(emulator, payload["access_token"]).status_code == 200
    created = requests.post(
        f"{emulator.url}/api/now/table/{LOAN}", json={"short_description": "x"},
        headers={"Authorization": f"Bearer {payload['access_token']}"}, timeout=5,
    ).json()["result"]
    assert created["sys_created_by"] == USER  # the OAuth client acts as the instance user it is mapped to


def test_password_grant_needs_the_users_password_too(emulator: RunningEmulator) -> None:
    good = token_request(emulator, grant_type="password", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                         username=USER, password=PASSWORD)
    assert good.status_code == 200
    assert list_with(emulator, good.json()["access_token"]).status_code == 200
    bad = token_request(emulator, grant_type="password", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                        username=USER, password="wrong")
    assert bad.status_code == 401
    assert bad.json() == {"error_description": "access_denied", "error": "server_error"}


@pytest.mark.parametrize(
    "form",
    [
        {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": "wrong"},
        {"grant_type": "client_credentials", "client_id": "someone-else", "client_secret": CLIENT_SECRET},
        {"grant_type": "client_credentials", "client_id": CLIENT_ID},
    ],
)
def test_a_wrong_client_is_refused_with_access_denied(emulator: RunningEmulator, form: dict[str, str]) -> None:
    response = token_request(emulator, **form)
    assert response.status_code == 401
    assert response.json()["error_description"] == "access_denied"
    assert CLIENT_SECRET not in response.text


def test_an_unknown_grant_is_a_400(emulator: RunningEmulator) -> None:
    response = token_request(emulator, grant_type="no_such_grant", client_id=CLIENT_ID, client_secret=CLIENT_SECRET)
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_the_token_request_must_be_form_encoded_not_json(emulator: RunningEmulator) -> None:
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    as_json = requests.post(f"{emulator.url}/oauth_token.do", json=form, timeout=5)
    assert as_json.status_code == 400
    assert as_json.json()["error"] == "unsupported_grant_type"
    assert token_request(emulator, **form).status_code == 200  # the control: the same fields, form-encoded


def test_the_password_grant_returns_a_refresh_token_that_the_refresh_grant_exchanges(
    emulator: RunningEmulator,
) -> None:
    first = token_request(emulator, grant_type="password", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                          username=USER, password=PASSWORD).json()
    assert client_credentials(emulator).json().keys() == {"access_token", "scope", "token_type", "expires_in"}

    refreshed = token_request(emulator, grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                              refresh_token=first["refresh_token"])
    wrong = token_request(emulator, grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                          refresh_token="not-a-refresh-token")
    wrong_client = token_request(emulator, grant_type="refresh_token", client_id=CLIENT_ID, client_secret="wrong",
                                 refresh_token=first["refresh_token"])

    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["refresh_token"] == first["refresh_token"]
    assert refreshed.json()["access_token"] != first["access_token"]
    assert list_with(emulator, refreshed.json()["access_token"]).status_code == 200
    assert (wrong.status_code, wrong_client.status_code) == (401, 401)
    assert first["refresh_token"] in emulator.issued_tokens()
    emulator.revoke_tokens()
    again = token_request(emulator, grant_type="refresh_token", client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
                          refresh_token=first["refresh_token"])
    assert again.status_code == 401  # revoking the client's tokens revokes its refresh tokens too


def test_unknown_and_missing_bearer_tokens_get_the_401_envelope(emulator: RunningEmulator) -> None:
    response = list_with(emulator, "not-a-token")
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "User Not Authenticated"


def test_tokens_expire_after_their_lifetime(emulator: RunningEmulator) -> None:
    emulator.set_token_lifetime(0.5)
    token = client_credentials(emulator).json()["access_token"]
    assert list_with(emulator, token).status_code == 200
    time.sleep(0.6)
    assert list_with(emulator, token).status_code == 401


def test_revoking_invalidates_every_token_and_is_counted(emulator: RunningEmulator) -> None:
    tokens = [client_credentials(emulator).json()["access_token"] for _ in range(3)]
    assert emulator.revoke_tokens() == 3
    assert all(list_with(emulator, token).status_code == 401 for token in tokens)
    client_credentials(emulator, secret="wrong")
    oauth = emulator.stats()["oauth"]
    assert oauth["token_requests"] == 4
    assert oauth["tokens_issued"] == 3
    assert oauth["token_refusals"] == 1
    assert oauth["tokens_revoked"] == 3
    assert oauth["active_tokens"] == 0


def test_admin_endpoints_revoke_and_change_the_lifetime(emulator: RunningEmulator) -> None:
    token = client_credentials(emulator).json()["access_token"]
    changed = requests.put(f"{emulator.url}/_emulator/oauth", json={"token_lifetime": 5}, timeout=5)
    assert changed.json()["token_lifetime"] == 5
    assert client_credentials(emulator).json()["expires_in"] == 5
    revoked = requests.post(f"{emulator.url}/_emulator/oauth/revoke", timeout=5).json()
    assert revoked["revoked"] == 2
    assert list_with(emulator, token).status_code == 401
    refused = requests.put(f"{emulator.url}/_emulator/oauth", json={"token_lifetime": -1}, timeout=5)
    assert refused.status_code == 400


def test_the_client_credentials_grant_can_be_disabled_as_an_instance_has_it_by_default() -> None:
    config = EmulatorConfig(user=USER, password=PASSWORD, oauth_client_id=CLIENT_ID, oauth_client_secret=CLIENT_SECRET,
                            oauth_client_credentials=False)
    with start_emulator(config) as emulator:
        refused = client_credentials(emulator)
        password_grant = token_request(emulator, grant_type="password", client_id=CLIENT_ID,
                                       client_secret=CLIENT_SECRET, username=USER, password=PASSWORD)
    assert refused.status_code == 400
    assert refused.json()["error"] == "unsupported_grant_type"
    assert password_grant.status_code == 200  # the control: the other grants still work
    args = build_parser().parse_args(["--no-oauth-client-credentials"])
    assert config_from_args(args, {}).oauth_client_credentials is False
    assert config_from_args(build_parser().parse_args([]), {}).oauth_client_credentials is True


def test_oauth_is_off_without_a_client_secret() -> None:
    with start_emulator(EmulatorConfig(user=USER, password=PASSWORD)) as emulator:
        response = token_request(emulator, grant_type="client_credentials", client_id="ticketsync", client_secret="")
        assert response.status_code == 401


def test_the_command_line_takes_the_client_secret_from_the_environment() -> None:
    args = build_parser().parse_args(["--oauth-client-id", "cid", "--oauth-token-lifetime", "30"])
    config = config_from_args(args, {"TICKETSYNC_EMULATOR_CLIENT_SECRET": "from-env"})
    assert (config.oauth_client_id, config.oauth_client_secret, config.oauth_token_lifetime) == ("cid", "from-env", 30)
    assert "from-env" not in repr(config)
