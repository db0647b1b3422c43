"""The connection's extras as one typed model, parsed once when the hook first connects.

Extras are read by name only (never forwarded as headers); a missing or blank extra takes its default, and an
invalid one is refused with a message naming the connection and the extra.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationError

from ticketsync.hooks.servicenow.errors import ServiceNowInvalidConnection
from ticketsync.typed import FALSE, TRUE, Flag, PositiveNumber, blank_is_none, describe

DEFAULT_TIMEOUT = (10.0, 60.0)
AUTH_TYPES = ("basic", "oauth_client_credentials", "oauth_password")
AuthType = Literal["basic", "oauth_client_credentials", "oauth_password"]
SECRET_EXTRAS = frozenset({"client_secret"})
PREFIX = "extra__servicenow__"


def _verify(value: Any) -> Any:
    if isinstance(value, str) and value.lower() in TRUE + FALSE:
        return value.lower() in TRUE
    return value


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


Verify = Annotated[bool | str, BeforeValidator(_verify)]
Timeout = tuple[PositiveNumber, PositiveNumber] | PositiveNumber

MUST_BE = {
    "auth_type": "one of " + ", ".join(AUTH_TYPES),
    "client_id": "a string",
    "client_secret": "a string",
    "timeout": "a positive number of seconds, or [connect, read] seconds",
    "verify": "true, false, or the path of a CA bundle",
    "ca_bundle": "the path of a CA bundle",
    "cert": "the path of a client certificate",
    "connect_timeout": "a positive number of seconds",
    "read_timeout": "a positive number of seconds",
    "trust_env": "true or false",
    "allow_insecure_http": "true or false",
    "rate_limit": "a positive number of requests per second",
}


class ServiceNowExtras(BaseModel):
    """The extras ServiceNowHook reads (every other extra is ignored).

    :param auth_type: ``basic`` (login and password), ``oauth_client_credentials`` or ``oauth_password``.
    :param client_id: the OAuth client (``oauth_*`` only).
    :param client_secret: the OAuth client's secret (``oauth_*`` only).
    :param timeout: seconds to wait, or ``[connect, read]``.
    :param connect_timeout: seconds to wait for a connection (the form's field; wins over ``timeout``).
    :param read_timeout: seconds to wait for an answer (the form's field; wins over ``timeout``).
    :param verify: verify the instance's TLS certificate (true), don't (false, test instances only), or verify it
        against this CA bundle.
    :param ca_bundle: verify the instance's TLS certificate against this CA bundle (the form's field).
    :param cert: client certificate for mutual TLS.
    :param trust_env: let ``requests`` read proxies and CA bundle from the environment.
    :param allow_insecure_http: allow plain http to a host that is not loopback.
    :param rate_limit: requests per second for this integration user, across every loader.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    auth_type: Annotated[AuthType, BeforeValidator(_lower)] = "basic"
    client_id: str | None = None
    client_secret: SecretStr | None = None
    timeout: Timeout = DEFAULT_TIMEOUT
    connect_timeout: PositiveNumber | None = None
    read_timeout: PositiveNumber | None = None
    verify: Verify = True
    ca_bundle: str | None = None
    cert: str | None = None
    trust_env: Flag = True
    allow_insecure_http: Flag = False
    rate_limit: PositiveNumber | None = None

    @classmethod
    def from_extra(cls, conn_id: str, extra: Mapping[str, Any]) -> ServiceNowExtras:
        """The extras of connection ``conn_id``.

        ``verify_ssl`` is read as ``verify`` (as ``HttpHook`` does), and ``extra__servicenow__<name>`` as ``<name>``
        (the prefixed form older connection forms stored).

        :param conn_id: the connection, named in error messages.
        :param extra: the connection's extras (``extra_dejson``).
        """
        values = {name: blank_is_none(extra.get(name, extra.get(f"{PREFIX}{name}"))) for name in cls.model_fields}
        if values["verify"] is None:
            values["verify"] = blank_is_none(extra.get("verify_ssl"))
        try:
            return cls.model_validate({name: value for name, value in values.items() if value is not None})
        except ValidationError as exc:
            name = str(exc.errors()[0]["loc"][0])
            got = "" if name in SECRET_EXTRAS else f", got {describe(values[name])}"
            raise ServiceNowInvalidConnection(
                f"connection {conn_id!r}: extra {name} must be {MUST_BE[name]}{got}"
            ) from None

    @property
    def timeouts(self) -> tuple[float, float]:
        """``(connect, read)`` seconds: ``connect_timeout`` and ``read_timeout`` where set, else ``timeout``."""
        connect, read = self.timeout if isinstance(self.timeout, tuple) else (self.timeout, self.timeout)
        return (self.connect_timeout or connect, self.read_timeout or read)

    @property
    def tls_verify(self) -> bool | str:
        """What ``requests`` gets as ``verify``: False when ``verify`` is false, else the CA bundle if one is named
        (``ca_bundle``, or a path in ``verify``), else True."""
        if self.verify is False:
            return False
        return self.ca_bundle or self.verify


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address.

    :param host: a host name or IP address (IPv6 in brackets or not).
    """
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_https(conn_id: str, base_url: str, *, allow_insecure_http: bool) -> None:
    """Credentials travel over https; plain http only to a loopback emulator, or when the connection allows it.

    :param conn_id: the connection, named in the error.
    :param base_url: where the hook's requests go.
    :param allow_insecure_http: the connection's ``allow_insecure_http`` extra.
    """
    parsed = urlparse(base_url)
    if parsed.scheme == "https":
        return
    if parsed.scheme == "http" and (is_loopback(parsed.hostname) or allow_insecure_http):
        return
    raise ServiceNowInvalidConnection(
        f"connection {conn_id!r} points at {parsed.scheme}://{parsed.hostname}: "
        "ServiceNow credentials must travel over HTTPS. Set the connection's schema to 'https' "
        "(plain http is accepted only for a loopback emulator, or with the extra allow_insecure_http=true)"
    )
