"""Proxies from the environment (``HTTPS_PROXY``, ``HTTP_PROXY``, ``NO_PROXY``, read when the connection trusts the
environment): https goes through a ``CONNECT`` tunnel with the certificate still verified end to end, plain http
to loopback is forwarded in absolute form, and without a proxy nothing reaches one. The transport sends straight to
the instance's pool, so these pin that it still honours the proxy the pool manager chose."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.proxy import running_proxy
from tests.support.tls import ServerCert, make_server_cert
from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowTLSError
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator

TABLE = "sn_bom_loan_service"
PASSWORD = "proxy-s3cret"
BODY = {"correlation_id": "REQ-PROXY-1", "short_description": "through a proxy"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> ServerCert:
    return make_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_emulator(certs: ServerCert) -> Iterator[RunningEmulator]:
    config = EmulatorConfig(password=PASSWORD, tls_cert=str(certs.cert), tls_key=str(certs.key))
    with start_emulator(config) as emulator:
        yield emulator


@pytest.fixture(autouse=True)
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def hook_for(monkeypatch: pytest.MonkeyPatch, conn_id: str, schema: str, port: int, **extra: Any) -> ServiceNowHook:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": schema, "login": "admin",
        "password": PASSWORD, "extra": {"timeout": 10, **extra},
    }))
    return ServiceNowHook(conn_id)


def test_https_goes_through_the_proxys_tunnel_and_is_still_verified(
    https_emulator: RunningEmulator, certs: ServerCert, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        hook = hook_for(monkeypatch, "sn_tunnel", "https", https_emulator.port, verify=str(certs.ca_bundle))
        created = [hook.create_record(TABLE, {**BODY, "correlation_id": f"REQ-PROXY-{i}"}) for i in range(3)]
        found = hook.find_by_correlation(TABLE, ["REQ-PROXY-0", "REQ-PROXY-2"])
        hook.close()
        assert all(https_emulator.store.get(TABLE, record.sys_id) is not None for record in created)
        assert set(found) == {"REQ-PROXY-0", "REQ-PROXY-2"}
        # one tunnel, kept alive for every request; nothing sent to the proxy in the clear
        assert proxy.seen == [("CONNECT", f"127.0.0.1:{https_emulator.port}")]

        # the certificate is checked through the tunnel: without the CA bundle it is refused
        untrusting = hook_for(monkeypatch, "sn_tunnel_untrusted", "https", https_emulator.port)
        with pytest.raises(ServiceNowTLSError):
            untrusting.create_record(TABLE, BODY)
        assert proxy.seen[-1] == ("CONNECT", f"127.0.0.1:{https_emulator.port}")


def test_plain_http_to_loopback_is_forwarded_by_the_proxy(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("AIRFLOW_CONN_SN_FORWARD", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http", "login": "admin",
            "password": "s3cret-emulator", "extra": {"timeout": 10},
        }))
        hook = ServiceNowHook("sn_forward")
        first = hook.create_record(TABLE, BODY)
        second = hook.create_record(TABLE, {**BODY, "correlation_id": "REQ-PROXY-2"})
        hook.close()
        assert emulator.store.get(TABLE, first.sys_id) is not None
        assert emulator.store.get(TABLE, second.sys_id) is not None
        origin = f"http://127.0.0.1:{emulator.port}/api/now/table/{TABLE}?"
        assert [method for method, _ in proxy.seen] == ["POST", "POST"]
        assert all(target.startswith(origin) for _, target in proxy.seen), proxy.seen


def test_the_lane_keeps_its_session_through_a_forward_proxy(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("AIRFLOW_CONN_SN_FORWARD_LANE", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http", "login": "admin",
            "password": "s3cret-emulator", "extra": {"timeout": 10},
        }))
        hook = ServiceNowHook("sn_forward_lane")
        for i in range(3):
            hook.create_record(TABLE, {**BODY, "correlation_id": f"REQ-LANE-{i}"})
        assert hook.sessions_started == 1
        assert len(proxy.seen) == 3
        hook.close()


def test_without_a_proxy_in_the_environment_nothing_reaches_one(
    emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        monkeypatch.setenv("AIRFLOW_CONN_SN_BYPASS", json.dumps({
            "conn_type": "http", "host": "127.0.0.1", "port": emulator.port, "schema": "http", "login": "admin",
            "password": "s3cret-emulator", "extra": {"timeout": 10},
        }))
        hook = ServiceNowHook("sn_bypass")
        created = hook.create_record(TABLE, BODY)
        hook.close()
        assert emulator.store.get(TABLE, created.sys_id) is not None
        assert proxy.seen == []
