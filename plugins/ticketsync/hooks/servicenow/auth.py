"""OAuth 2.0 for the hook: the grant a connection asks for, one shared token cache, and log masking."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from ticketsync.hooks.servicenow.config import ServiceNowExtras
from ticketsync.hooks.servicenow.errors import ServiceNowInvalidConnection

TOKEN_PATH = "/oauth_token.do"  # noqa: S105 - a URL path, not a secret
# A token is renewed this long before it expires (at most a tenth of its lifetime, for short-lived tokens).
TOKEN_REFRESH_MARGIN = 60.0
DEFAULT_TOKEN_LIFETIME = 1799.0


@dataclass(frozen=True)
class OAuthSettings:
    """What the token request sends; built from the connection, never logged (secrets are not in the repr).

    :param grant_type: ``client_credentials`` or ``password``.
    :param client_id: the OAuth client.
    :param client_secret: the OAuth client's secret.
    :param username: the ServiceNow user (``password`` grant only).
    :param password: the ServiceNow user's password (``password`` grant only).
    """

    grant_type: str
    client_id: str
    client_secret: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def form(self) -> dict[str, str]:
        """The form-encoded body of ``POST /oauth_token.do``."""
        data = {"grant_type": self.grant_type, "client_id": self.client_id, "client_secret": self.client_secret}
        if self.grant_type == "password":
            data.update(username=self.username or "", password=self.password or "")
        return data


def oauth_settings(conn_id: str, extras: ServiceNowExtras, connection: Any) -> OAuthSettings | None:
    """The OAuth grant the connection's ``auth_type`` asks for, or None for basic auth; refuses an incomplete one.

    :param conn_id: the connection, named in error messages.
    :param extras: its typed extras.
    :param connection: the connection itself (its login and password, for the password grant).
    """
    if extras.auth_type == "basic":
        return None
    client_id = extras.client_id or ""
    client_secret = extras.client_secret.get_secret_value() if extras.client_secret else ""
    missing = [name for name, value in (("client_id", client_id), ("client_secret", client_secret)) if not value]
    grant = "password" if extras.auth_type == "oauth_password" else "client_credentials"
    if grant == "password":
        missing += [name for name in ("login", "password") if not getattr(connection, name, None)]
    if missing:
        raise ServiceNowInvalidConnection(
            f"connection {conn_id!r} uses auth_type {extras.auth_type} but has no " + ", ".join(missing)
        )
    mask_secret(client_secret)
    return OAuthSettings(
        grant_type=grant, client_id=client_id, client_secret=client_secret,
        username=connection.login if grant == "password" else None,
        password=connection.password if grant == "password" else None,
    )


class TokenCache:
    """One access token shared by every thread of the hook; fetched under a lock, so only one request renews it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def get(self, fetch: Callable[[], tuple[str, float]]) -> str:
        """The cached token, or a new one.

        :param fetch: gets a new token; returns it and its lifetime in seconds.
        """
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                token, lifetime = fetch()
                margin = min(TOKEN_REFRESH_MARGIN, lifetime / 10)
                self._token, self._renew_at = token, time.monotonic() + lifetime - margin
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another thread already replaced it.

        :param token: the token the instance refused.
        """
        with self._lock:
            if self._token == token:
                self._token = None


def mask_secret(secret: str | None) -> None:
    """Tell Airflow's log masker about a secret the connection does not already name (e.g. a fresh token).

    :param secret: the value to mask; nothing happens for an empty one.
    """
    if not secret:
        return
    with suppress(ImportError):
        from airflow.sdk.log import mask_secret as airflow_mask_secret

        airflow_mask_secret(secret)


def oauth_error(payload: Any, reason: str) -> str:
    """The ``error``/``error_description`` of a refused token request (ServiceNow says little: access_denied).

    :param payload: the answer's JSON, or None if it was not JSON.
    :param reason: the HTTP reason phrase, said when the payload says nothing.
    """
    try:
        parts = [str(payload.get(key)) for key in ("error", "error_description") if payload.get(key)]
    except AttributeError:
        parts = []
    return " ".join(" / ".join(parts).split())[:200] or (reason or "refused")
