"""The connection's extras as one typed model: defaults for missing or blank extras, a named error for a bad one."""

from __future__ import annotations

import json

import pytest

from ticketsync.hooks.servicenow import (
    DEFAULT_TIMEOUT,
    ServiceNowConfigurationError,
    ServiceNowExtras,
    ServiceNowHook,
    ServiceNowInvalidConnection,
)


def test_missing_and_blank_extras_take_their_defaults() -> None:
    for extra in ({}, {"timeout": "", "verify": " ", "rate_limit": "None", "allow_insecure_http": None}):
        extras = ServiceNowExtras.from_extra("sn", extra)
        assert extras.timeouts == DEFAULT_TIMEOUT
        assert (extras.verify, extras.trust_env, extras.allow_insecure_http) == (True, True, False)
        assert (extras.auth_type, extras.rate_limit, extras.cert) == ("basic", None, None)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"timeout": "30"}, {"timeouts": (30.0, 30.0)}),
        ({"timeout": [3, "45"]}, {"timeouts": (3.0, 45.0)}),
        ({"verify": "FALSE"}, {"verify": False}),
        ({"verify": "yes"}, {"verify": True}),
        ({"verify": "/etc/ssl/bank-ca.pem"}, {"verify": "/etc/ssl/bank-ca.pem"}),
        ({"verify_ssl": False}, {"verify": False}),
        ({"verify": True, "verify_ssl": False}, {"verify": True}),
        ({"allow_insecure_http": "On", "trust_env": "0"}, {"allow_insecure_http": True, "trust_env": False}),
        ({"auth_type": " OAuth_Password "}, {"auth_type": "oauth_password"}),
        ({"rate_limit": "2.5"}, {"rate_limit": 2.5}),
    ],
)
def test_extras_are_parsed_into_their_types(extra: dict[str, object], expected: dict[str, object]) -> None:
    extras = ServiceNowExtras.from_extra("sn", extra)
    assert {name: getattr(extras, name) for name in expected} == expected


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"timeout": "soon"}, "extra timeout must be a positive number of seconds, or [connect, read] seconds, got"),
        ({"timeout": [1, 2, 3]}, "extra timeout must be"),
        ({"timeout": 0}, "extra timeout must be"),
        ({"allow_insecure_http": "maybe"}, "extra allow_insecure_http must be true or false, got 'maybe'"),
        ({"trust_env": 2}, "extra trust_env must be true or false, got 2"),
        ({"verify": 7}, "extra verify must be true, false, or the path of a CA bundle, got 7"),
        ({"rate_limit": "fast"}, "extra rate_limit must be a positive number of requests per second, got 'fast'"),
    ],
)
def test_an_invalid_extra_is_refused_naming_the_connection_and_the_extra(
    extra: dict[str, object], message: str
) -> None:
    with pytest.raises(ServiceNowInvalidConnection) as caught:
        ServiceNowExtras.from_extra("sn_bad", extra)
    assert str(caught.value).startswith(f"connection 'sn_bad': {message}")
    # configuration: the load operator fails the task at once instead of burning retries; still a ValueError
    assert isinstance(caught.value, ServiceNowConfigurationError)
    assert isinstance(caught.value, ValueError)


def test_a_secret_extra_is_never_echoed_in_the_error() -> None:
    with pytest.raises(ServiceNowInvalidConnection, match=r"extra client_secret must be a string$"):
        ServiceNowExtras.from_extra("sn", {"client_secret": {"value": "hunter2-secret"}})
    extras = ServiceNowExtras.from_extra("sn", {"client_secret": "hunter2-secret"})
    assert "hunter2-secret" not in repr(extras)


def test_the_hook_refuses_a_bad_extra_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SN_BADTIMEOUT", json.dumps({
        "conn_type": "http", "host": "x.service-now.com", "schema": "https", "extra": {"timeout": "-5"},
    }))
    with pytest.raises(ServiceNowInvalidConnection, match="'sn_badtimeout': extra timeout must be"):
        ServiceNowHook("sn_badtimeout").get_conn()
