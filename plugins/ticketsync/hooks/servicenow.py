"""ServiceNowHook: transport to the Table API on top of the HTTP provider's ``HttpHook``.

The hook owns the session (one pooled keep-alive ``requests.Session``), auth, TLS verification, timeouts and the
Table API calls, and turns every answer into either a parsed result or a typed error. It holds no business rules:
whether an error is retried, and how, is the load operator's decision.

Connection (``servicenow_default``, conn_type ``http``): host (``<instance>.service-now.com``), schema (``https``;
``http`` only for a loopback emulator or with ``allow_insecure_http``), port, login, password. Extras are read by
name only, never forwarded as headers: ``timeout`` (seconds, or ``[connect, read]``), ``verify`` (true/false or a
CA bundle path), ``cert`` (client certificate path for mutual TLS), ``allow_insecure_http``, ``rate_limit``
(requests per second for this integration user, across every loader; the load operator paces itself by it),
and for OAuth 2.0
``auth_type`` (``basic``, the default; ``oauth_client_credentials``; ``oauth_password``), ``client_id`` and
``client_secret``. With ``oauth_password`` the login and password are the ServiceNow user's; with
``oauth_client_credentials`` they are not used.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlparse

import requests
import urllib3
from airflow.providers.http.hooks.http import HttpHook
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict

TABLE_NAME = re.compile(r"[a-z0-9_]{1,80}")
DEFAULT_TIMEOUT = (10.0, 60.0)
LOOKUP_PAGE = 1000
TOKEN_PATH = "/oauth_token.do"  # noqa: S105 - a URL path, not a secret
AUTH_TYPES = ("basic", "oauth_client_credentials", "oauth_password")
# A token is renewed this long before it expires (at most a tenth of its lifetime, for short-lived tokens).
TOKEN_REFRESH_MARGIN = 60.0
DEFAULT_TOKEN_LIFETIME = 1799.0


class ServiceNowError(Exception):
    """Base of every error the hook raises; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceNowConfigurationError(ServiceNowError):
    """The connection itself is wrong (credentials, TLS trust): retrying cannot help, a person must fix it."""


class ServiceNowAuthError(ServiceNowConfigurationError):
    """401, or a refused OAuth token request: the credentials are wrong or missing. Retrying cannot help."""


class ServiceNowTLSError(ServiceNowConfigurationError):
    """The server's TLS certificate failed verification (untrusted CA, wrong host name, expired).

    Not transient: an instance that is down does not present a bad certificate, so this fails the task at once.
    """


class ServiceNowRequestError(ServiceNowError):
    """A definitive refusal of one request (400, 403, 404, …): ServiceNow's ``error.message`` and ``detail``."""

    def __init__(self, status: int, message: str, detail: str | None) -> None:
        text = f"{status} {message}" + (f": {detail}" if detail else "")
        super().__init__(text, status=status)
        self.error_message = message
        self.detail = detail


class ServiceNowTransientError(ServiceNowError):
    """The outcome is unknown or temporary (5xx, timeout, cut connection, non-JSON 200): retry later.

    After a transient error on a write, the record may or may not exist: look it up before writing again.
    """


class ServiceNowTimeout(ServiceNowTransientError):
    """The client stopped waiting for the answer: the instance may still be working on the request, and commit it."""


class ServiceNowRateLimited(ServiceNowTransientError):
    """429: the instance refused the request before doing anything. ``retry_after`` is in seconds, if given."""

    def __init__(
        self, message: str, *, retry_after: float | None, rule: str | None, limit_per_hour: float | None = None
    ) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after
        self.rule = rule
        self.limit_per_hour = limit_per_hour


@dataclass(frozen=True)
class OAuthSettings:
    """What the token request sends; built from the connection, never logged (secrets are not in the repr)."""

    grant_type: str
    client_id: str
    client_secret: str = field(repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def form(self) -> dict[str, str]:
        data = {"grant_type": self.grant_type, "client_id": self.client_id, "client_secret": self.client_secret}
        if self.grant_type == "password":
            data.update(username=self.username or "", password=self.password or "")
        return data


class _TokenCache:
    """One access token shared by every thread of the hook; fetched under a lock, so only one request renews it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0

    def get(self, fetch: Callable[[], tuple[str, float]]) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._renew_at:
                token, lifetime = fetch()
                margin = min(TOKEN_REFRESH_MARGIN, lifetime / 10)
                self._token, self._renew_at = token, time.monotonic() + lifetime - margin
            return self._token

    def invalidate(self, token: str) -> None:
        """Forget ``token`` after a 401, unless another thread already replaced it."""
        with self._lock:
            if self._token == token:
                self._token = None


def _mask(secret: str | None) -> None:
    """Tell Airflow's log masker about a secret the connection does not already name (e.g. a fresh token)."""
    if not secret:
        return
    with suppress(ImportError):
        from airflow.sdk.log import mask_secret

        mask_secret(secret)


def _is_certificate_error(exc: BaseException) -> bool:
    """Whether a requests ``SSLError`` is a failed certificate verification (and not, say, a cut handshake)."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current):
            return True
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
        pending += [e for e in (current.__cause__, current.__context__, getattr(current, "reason", None)) if
                    isinstance(e, BaseException)]
    return False


@dataclass(frozen=True)
class CreatedRecord:
    sys_id: str
    number: str | None


@dataclass(frozen=True)
class ExistingRecord:
    sys_id: str
    number: str | None
    correlation_id: str
    created_on: str


class _Answer:
    """One HTTP answer, read in full: what the hook needs of it, with the names ``requests.Response`` uses."""

    __slots__ = ("content", "headers", "reason", "status_code")

    def __init__(self, status_code: int, reason: str, headers: Mapping[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")


@dataclass(frozen=True)
class _Route:
    """Where the hook's requests go: the session's pool, and how requests would call it."""

    pool: urllib3.HTTPConnectionPool
    absolute: bool  # a plain-http proxy wants the whole URL as the request target
    origin_length: int  # len("scheme://host:port"): what precedes the request target in a URL
    timeout: urllib3.Timeout
    retries: urllib3.Retry


def _text_header(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _transport_error(method: str, exc: BaseException) -> ServiceNowTransientError:
    """A failure below HTTP (timeout, refused or cut connection, TLS) as requests would have named it."""
    reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
    timed_out = isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError)
    if timed_out and not isinstance(reason, urllib3.exceptions.NewConnectionError):
        return ServiceNowTimeout(f"{method} timed out ({type(reason).__name__})")
    return ServiceNowTransientError(f"{method} connection failed ({_short(exc)})")


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _as_bool(value: Any, *, default: bool) -> bool:
    """A flag from a connection extra; missing or blank means the default (never a silent ``False``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in _TRUE


def _verify(value: Any) -> bool | str:
    """The ``verify`` extra: true/false, or a CA bundle path; missing or blank means verify with the default CAs."""
    if isinstance(value, str) and value.strip() and value.strip().lower() not in _TRUE + _FALSE:
        return value
    return _as_bool(value, default=True)


def _timeout(value: Any) -> float | tuple[float, float]:
    if value is None or value == "":
        return DEFAULT_TIMEOUT
    if isinstance(value, list | tuple) and len(value) == 2:
        return (float(value[0]), float(value[1]))
    return float(value)


def _rate_limit(value: Any, conn_id: str) -> float | None:
    """The ``rate_limit`` extra: a positive number of requests per second, or absent (no client-side pacing)."""
    if value is None or value == "":
        return None
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = float("nan")
    if not rate > 0 or rate == float("inf"):
        raise ValueError(
            f"connection {conn_id!r}: extra rate_limit must be a positive number of requests per second, got {value!r}"
        )
    return rate


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _retry_after(response: _Answer, header: str = "Retry-After") -> float | None:
    value = response.headers.get(header)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_fields(response: _Answer) -> tuple[str, str | None]:
    """ServiceNow's ``{"error": {"message", "detail"}}``, or the start of whatever else came back."""
    try:
        payload = response.json()
        error = payload.get("error") or {}
        message = str(error.get("message") or response.reason or "error")
        detail = error.get("detail")
        return message, (str(detail) if detail else None)
    except (ValueError, AttributeError):
        text = " ".join(response.text.split())[:200]
        return (response.reason or "error"), (text or None)


def _json_result(response: _Answer) -> Any:
    """The ``result`` of a 2xx answer; an answer that is not a JSON object with ``result`` is not trusted."""
    content_type = response.headers.get("Content-Type", "")
    if "json" not in content_type.lower():
        raise ServiceNowTransientError(
            f"{response.status_code} answer with Content-Type {content_type or 'none'!r} instead of JSON "
            "(a hibernating instance or a proxy page?)",
            status=response.status_code,
        )
    try:
        payload = response.json()
    except ValueError as exc:
        raise ServiceNowTransientError(
            f"{response.status_code} answer with a malformed JSON body ({exc})", status=response.status_code
        ) from exc
    if not isinstance(payload, dict) or "result" not in payload:
        raise ServiceNowTransientError(
            f"{response.status_code} answer without a 'result' member", status=response.status_code
        )
    return payload["result"]


class ServiceNowHook(HttpHook):
    """Table API calls over one pooled keep-alive session.

    :param servicenow_conn_id: the Airflow connection (conn_type ``http``).
    :param pool_size: keep-alive connections kept open; match it to the requests you keep in flight.
    """

    conn_name_attr = "servicenow_conn_id"
    default_conn_name = "servicenow_default"
    conn_type = "http"
    hook_name = "ServiceNow Table API"

    def __init__(self, servicenow_conn_id: str = default_conn_name, *, pool_size: int = 8) -> None:
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size), max_retries=0)
        super().__init__(method="GET", http_conn_id=servicenow_conn_id, adapter=adapter)
        self.servicenow_conn_id = servicenow_conn_id
        self._session: requests.Session | None = None
        self._timeout: float | tuple[float, float] = DEFAULT_TIMEOUT
        self._allow_insecure_http = False
        self._send_settings: Mapping[str, Any] = {}
        self._fast_route: _Route | None = None
        self._oauth: OAuthSettings | None = None
        self._tokens = _TokenCache()

    # ----------------------------------------------------------------------------------------------------------
    # session
    # ----------------------------------------------------------------------------------------------------------

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one session, built on first use and reused by every call (and every thread)."""
        if self._session is None:
            session = super().get_conn(headers=headers, extra_options=extra_options)
            session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})
            self._check_transport()
            # What requests would work out from the environment (proxies, CA bundle) on every request: the same
            # answer for every request to this one host, so it is worked out once. verify and cert are the
            # session's own, passed per request, so REQUESTS_CA_BUNDLE cannot silently replace a path or False.
            self._send_settings = session.merge_environment_settings(
                self.base_url, {}, False, session.verify, session.cert
            )
            self._session = session
        return self._session

    def _configure_session_from_extra(
        self, session: requests.Session, connection: Any, extra_options: dict[str, Any]
    ) -> requests.Session:
        """Read the extras we know by name; unlike ``HttpHook``, never turn the other extras into headers."""
        extra = dict(connection.extra_dejson)
        extra.update(extra_options or {})
        verify = _verify(extra.get("verify", extra.get("verify_ssl")))
        if isinstance(verify, str):
            if not os.path.exists(verify):
                raise ValueError(
                    f"connection {self.servicenow_conn_id!r}: the CA bundle in extra 'verify' does not exist: {verify}"
                )
            session.verify = verify  # a CA bundle file or directory
        else:
            session.verify = verify
            if verify is False:
                self.log.warning(
                    "TLS certificate verification is OFF for connection %r (extra verify=false): "
                    "use it only against a test instance", self.servicenow_conn_id,
                )
        if extra.get("cert"):
            session.cert = str(extra["cert"])
        session.trust_env = _as_bool(extra.get("trust_env"), default=True)
        self._timeout = _timeout(extra.get("timeout"))
        self._allow_insecure_http = _as_bool(extra.get("allow_insecure_http"), default=False)
        self._oauth = self._oauth_settings(extra, connection)
        if self._oauth is not None:
            session.auth = None  # the bearer token goes on each request instead of basic auth
        return session

    def _oauth_settings(self, extra: dict[str, Any], connection: Any) -> OAuthSettings | None:
        """The OAuth grant the extras ask for (``auth_type``), or None for basic auth."""
        auth_type = str(extra.get("auth_type") or "basic").strip().lower()
        if auth_type not in AUTH_TYPES:
            raise ValueError(
                f"connection {self.servicenow_conn_id!r}: extra auth_type {auth_type[:40]!r} is not one of "
                + ", ".join(AUTH_TYPES)
            )
        if auth_type == "basic":
            return None
        client_id, client_secret = str(extra.get("client_id") or ""), str(extra.get("client_secret") or "")
        missing = [name for name, value in (("client_id", client_id), ("client_secret", client_secret)) if not value]
        grant = "password" if auth_type == "oauth_password" else "client_credentials"
        if grant == "password":
            missing += [name for name in ("login", "password") if not getattr(connection, name, None)]
        if missing:
            raise ValueError(
                f"connection {self.servicenow_conn_id!r} uses auth_type {auth_type} but has no "
                + ", ".join(missing)
            )
        _mask(client_secret)
        return OAuthSettings(
            grant_type=grant, client_id=client_id, client_secret=client_secret,
            username=connection.login if grant == "password" else None,
            password=connection.password if grant == "password" else None,
        )

    def _check_transport(self) -> None:
        parsed = urlparse(self.base_url)
        if parsed.scheme == "https":
            return
        if parsed.scheme == "http" and (_is_loopback(parsed.hostname) or self._allow_insecure_http):
            return
        raise ValueError(
            f"connection {self.servicenow_conn_id!r} points at {parsed.scheme}://{parsed.hostname}: "
            "ServiceNow credentials must travel over HTTPS. Set the connection's schema to 'https' "
            "(plain http is accepted only for a loopback emulator, or with the extra allow_insecure_http=true)"
        )

    def rate_limit(self) -> float | None:
        """The connection's ``rate_limit`` extra (requests per second in total for this integration user), if set."""
        extra = self.get_connection(self.servicenow_conn_id).extra_dejson
        return _rate_limit(extra.get("rate_limit"), self.servicenow_conn_id)

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None
            self._fast_route = None

    # ----------------------------------------------------------------------------------------------------------
    # one request
    # ----------------------------------------------------------------------------------------------------------

    def _route(self) -> _Route:
        """The session's keep-alive connection pool for the instance, looked up once per session.

        It is the very pool requests would use for the base URL (TLS verification, client certificate and proxy
        included), so requests' work per call (preparing the URL, merging settings and cookies, building a
        ``Response``) is done once here, not on each of thousands of POSTs.
        """
        if self._fast_route is None:
            session = self.get_conn()
            template = session.prepare_request(requests.Request("GET", self.base_url))
            settings = self._send_settings
            adapter = session.get_adapter(self.base_url)
            if not isinstance(adapter, HTTPAdapter):
                raise TypeError(f"{type(adapter).__name__} is mounted for {self.base_url}; expected an HTTPAdapter")
            pool = adapter.get_connection_with_tls_context(
                template, settings["verify"], proxies=settings["proxies"], cert=settings["cert"]
            )
            adapter.cert_verify(pool, self.base_url, settings["verify"], settings["cert"])  # type: ignore[no-untyped-call]
            if not isinstance(pool, urllib3.HTTPConnectionPool):
                raise TypeError(f"unexpected connection pool {type(pool).__name__} for {self.base_url}")
            connect, read = self._timeout if isinstance(self._timeout, tuple) else (self._timeout, self._timeout)
            self._fast_route = _Route(
                pool=pool,
                absolute=adapter.request_url(template, settings["proxies"]) != template.path_url,
                origin_length=len("{0.scheme}://{0.netloc}".format(urlparse(self.base_url))),
                timeout=urllib3.Timeout(connect=connect, read=read),
                retries=adapter.max_retries,
            )
        return self._fast_route

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> _Answer:
        """One request over the session's pool; redirects are not followed (a redirect is not an answer)."""
        self.get_conn()  # reads the connection, OAuth settings included, on first use
        url = self.url_from_endpoint(path) + (f"?{urlencode(params)}" if params else "")
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        token = self._access_token() if self._oauth is not None else None
        answer = self._exchange(method, url, data, token=token)
        if answer.status_code == 401 and token is not None:
            # The token may have been revoked or expired early: renew it once; nothing was done with a 401.
            self._tokens.invalidate(token)
            token = self._access_token()
            answer = self._exchange(method, url, data, token=token)
        self._raise_for_status(answer)
        return answer

    def _exchange(
        self, method: str, url: str, body: bytes | None, *, token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> _Answer:
        """One HTTP exchange over the session's pool; transport failures become typed errors without secrets."""
        session = self.get_conn()
        route = self._route()
        request = requests.PreparedRequest()
        request.method, request.url = method, url
        request.headers = CaseInsensitiveDict({name: _text_header(value) for name, value in session.headers.items()})
        request.headers.update(headers or {})
        request.body = body
        request.prepare_content_length(body)
        if token is not None:
            request.headers["Authorization"] = f"Bearer {token}"
        else:
            request.prepare_auth(session.auth, url)
        if session.cookies:
            request.prepare_cookies(session.cookies)
        target = url if route.absolute else url[route.origin_length:] or "/"
        try:
            raw = route.pool.urlopen(
                method, target, body=request.body, headers=dict(request.headers), redirect=False,
                assert_same_host=False, preload_content=True, decode_content=True, retries=route.retries,
                timeout=route.timeout, chunked=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise self._transport_error(method, exc) from exc
        if "set-cookie" in raw.headers:
            extract_cookies_to_jar(session.cookies, request, raw)  # type: ignore[no-untyped-call]
        return _Answer(raw.status, raw.reason or "", raw.headers, raw.data)

    def _transport_error(self, method: str, exc: BaseException) -> ServiceNowError:
        """A failure below HTTP as a typed error: a failed certificate check is configuration, the rest transient."""
        if _is_certificate_error(exc):
            return ServiceNowTLSError(
                f"TLS certificate verification failed for {urlparse(self.base_url).hostname} ({_short(exc)}). If "
                f"the instance uses a private CA, set the extra 'verify' of connection {self.servicenow_conn_id!r} "
                "to its CA bundle (the task is not retried for this)"
            )
        return _transport_error(method, exc)

    # ----------------------------------------------------------------------------------------------------------
    # OAuth 2.0
    # ----------------------------------------------------------------------------------------------------------

    def _access_token(self) -> str:
        return self._tokens.get(self._fetch_token)

    def _fetch_token(self) -> tuple[str, float]:
        """``POST /oauth_token.do`` (form-encoded) for a new access token; returns it and its lifetime (s)."""
        oauth = self._oauth
        if oauth is None:
            raise RuntimeError("no OAuth settings")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        response = self._exchange(
            "POST", self.url_from_endpoint(TOKEN_PATH), urlencode(oauth.form()).encode("ascii"), headers=headers
        )
        status = response.status_code
        if 400 <= status < 500 and status not in (408, 429):  # any refusal is about the configuration
            reason = _oauth_error(response)
            raise ServiceNowAuthError(
                f"{status} OAuth token request refused ({reason}): check client_id and client_secret"
                + (", login and password" if oauth.grant_type == "password" else "")
                + f" of connection {self.servicenow_conn_id!r} (the task is not retried for this)",
                status=status,
            )
        self._raise_for_status(response)
        unusable = ServiceNowTransientError(f"{status} OAuth token answer without an access_token", status=status)
        try:
            payload = response.json()
            token = payload["access_token"]
            lifetime = float(payload.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise unusable from exc
        if not isinstance(token, str) or not token:
            raise unusable
        _mask(token)
        self.log.info("obtained an OAuth access token (%s grant) valid for %.0f s", oauth.grant_type, lifetime)
        return token, lifetime

    def _raise_for_status(self, response: _Answer) -> None:
        status = response.status_code
        if status < 400:
            return
        message, detail = _error_fields(response)
        if status == 401:
            if self._oauth is None:
                what, check = "the credentials", "its login and password"
            else:
                what, check = "a freshly issued OAuth token", "its OAuth client and the integration user's roles"
            raise ServiceNowAuthError(
                f"401 {message}: ServiceNow refused {what} of connection {self.servicenow_conn_id!r}; "
                f"check {check} (the task is not retried for this)",
                status=401,
            )
        if status == 429:
            raise ServiceNowRateLimited(
                f"429 {message}" + (f": {detail}" if detail else ""),
                retry_after=_retry_after(response),
                rule=response.headers.get("X-RateLimit-Rule"),
                limit_per_hour=_retry_after(response, "X-RateLimit-Limit"),
            )
        if status >= 500 or status == 408:
            raise ServiceNowTransientError(f"{status} {message}" + (f": {detail}" if detail else ""), status=status)
        raise ServiceNowRequestError(status, message, detail)

    # ----------------------------------------------------------------------------------------------------------
    # Table API
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def table_path(table: str) -> str:
        if not TABLE_NAME.fullmatch(table):
            raise ValueError(f"invalid ServiceNow table name {table!r}")
        return f"/api/now/table/{table}"

    def create_record(self, table: str, body: dict[str, str]) -> CreatedRecord:
        """``POST /api/now/table/{table}``; a 2xx without a sys_id is treated as unknown, not as success."""
        params = {"sysparm_fields": "sys_id,number", "sysparm_exclude_reference_link": "true"}
        response = self._send("POST", self.table_path(table), params=params, body=body)
        result = _json_result(response)
        sys_id = result.get("sys_id") if isinstance(result, dict) else None
        if not isinstance(sys_id, str) or not sys_id:
            raise ServiceNowTransientError(
                f"{response.status_code} answer without a sys_id: the record may or may not exist",
                status=response.status_code,
            )
        number = result.get("number")
        return CreatedRecord(sys_id=sys_id, number=str(number) if number else None)

    def list_records(
        self,
        table: str,
        *,
        query: str,
        fields: Sequence[str],
        limit: int = LOOKUP_PAGE,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        params = {
            "sysparm_query": query,
            "sysparm_fields": ",".join(fields),
            "sysparm_limit": str(limit),
            "sysparm_offset": str(offset),
            "sysparm_exclude_reference_link": "true",
        }
        result = _json_result(self._send("GET", self.table_path(table), params=params))
        if not isinstance(result, list):
            raise ServiceNowTransientError("list answer whose 'result' is not a list", status=200)
        return [record for record in result if isinstance(record, dict)]

    def find_by_correlation(self, table: str, correlation_ids: Iterable[str]) -> dict[str, list[ExistingRecord]]:
        """Every record of ``table`` whose ``correlation_id`` is one of the given ids, oldest first, in one
        ``correlation_idIN…`` query (paged if more records than a page come back)."""
        ids = sorted(set(correlation_ids))
        wanted = set(ids)
        found: dict[str, list[ExistingRecord]] = {}
        if not ids:
            return found
        query = f"correlation_idIN{','.join(ids)}^ORDERBYsys_created_on"
        fields = ("sys_id", "number", "correlation_id", "sys_created_on")
        offset = 0
        while True:
            page = self.list_records(table, query=query, fields=fields, limit=LOOKUP_PAGE, offset=offset)
            for record in page:
                existing = _existing_record(record, wanted)
                found.setdefault(existing.correlation_id, []).append(existing)
            if len(page) < LOOKUP_PAGE:
                return found
            offset += LOOKUP_PAGE

    def find_by_keys(self, table: str, key_field: str, keys: Iterable[str]) -> dict[str, list[str]]:
        """The sys_ids of the records of ``table`` whose ``key_field`` is one of ``keys``, in one
        ``<key_field>IN…`` query (paged), by key folded to lower case (the instance compares without case)."""
        if not TABLE_NAME.fullmatch(key_field):
            raise ValueError(f"invalid field name {key_field!r}")
        wanted = sorted({key for key in keys})
        folded = {key.casefold() for key in wanted}
        found: dict[str, list[str]] = {}
        if not wanted:
            return found
        query = f"{key_field}IN{','.join(wanted)}^ORDERBYsys_id"
        offset = 0
        while True:
            page = self.list_records(table, query=query, fields=("sys_id", key_field), limit=LOOKUP_PAGE, offset=offset)
            for record in page:
                key, sys_id = _keyed_record(record, key_field, folded, table)
                found.setdefault(key, []).append(sys_id)
            if len(page) < LOOKUP_PAGE:
                return found
            offset += LOOKUP_PAGE

    def get_record(self, table: str, sys_id: str, fields: Sequence[str] = ()) -> dict[str, Any]:
        params = {"sysparm_exclude_reference_link": "true"}
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        result = _json_result(self._send("GET", f"{self.table_path(table)}/{sys_id}", params=params))
        if not isinstance(result, dict):
            raise ServiceNowTransientError("record answer whose 'result' is not an object", status=200)
        return result

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test connection": one cheap authenticated read of the loan service case table."""
        try:
            self.list_records("sn_bom_loan_service", query="", fields=("sys_id",), limit=1)
        except ServiceNowError as exc:
            return False, str(exc)
        return True, "Connection successfully tested"


def _existing_record(record: dict[str, Any], wanted: set[str]) -> ExistingRecord:
    """One record of a look-up answer. Idempotency rests on this answer, so anything odd in it is an error:
    a record without sys_id means the answer is damaged, and a correlation id we did not ask for means the
    instance dropped the query term (it does that silently for an unknown field), so "not found" proves nothing."""
    sys_id = record.get("sys_id")
    correlation = record.get("correlation_id")
    if not isinstance(sys_id, str) or not sys_id:
        raise ServiceNowTransientError("look-up answer holds a record without sys_id; not trusted", status=200)
    if correlation not in wanted:
        raise ServiceNowRequestError(
            200,
            "look-up answer holds records that do not match the query",
            "the instance ignored 'correlation_idIN…' (does the table have a correlation_id field the "
            "integration user can read?); without it ticketsync cannot prevent duplicates",
        )
    return ExistingRecord(
        sys_id=sys_id,
        number=str(record.get("number") or "") or None,
        correlation_id=str(correlation),
        created_on=str(record.get("sys_created_on") or ""),
    )


def _keyed_record(record: dict[str, Any], key_field: str, folded: set[str], table: str) -> tuple[str, str]:
    """(folded key, sys_id) of one record of a business-key look-up; anything odd in it is an error, as for the
    correlation look-up: a reference resolved from a damaged or unfiltered answer would point at the wrong record."""
    sys_id = record.get("sys_id")
    key = record.get(key_field)
    if not isinstance(sys_id, str) or not re.fullmatch(r"[0-9a-f]{32}", sys_id):
        raise ServiceNowTransientError(
            "key look-up answer holds a record without a valid sys_id; not trusted", status=200
        )
    if not isinstance(key, str) or key.casefold() not in folded:
        raise ServiceNowRequestError(
            200,
            "key look-up answer holds records that do not match the query",
            f"the instance ignored '{key_field}IN…' on {table} (does the table have a field {key_field} the "
            "integration user can read?)",
        )
    return key.casefold(), sys_id


def _oauth_error(response: _Answer) -> str:
    """The ``error``/``error_description`` of a refused token request (ServiceNow says little: access_denied)."""
    try:
        payload = response.json()
        parts = [str(payload.get(key)) for key in ("error", "error_description") if payload.get(key)]
    except (ValueError, AttributeError):
        parts = []
    return " ".join(" / ".join(parts).split())[:200] or (response.reason or "refused")


def _short(exc: BaseException) -> str:
    """A one-line cause without the URL's query string (which may hold ids) or anything secret."""
    text = str(exc).split("(Caused by")[-1] if "(Caused by" in str(exc) else str(exc)
    return " ".join(text.split())[:200]
