"""How the hook's requests travel: urllib3's ``PoolManager`` (or ``ProxyManager``), through its public API.

The pool manager is built once from the session ``HttpHook`` configured (TLS verification and CA bundle, client
certificate, basic auth, headers, proxies from the environment when ``trust_env``), and the instance's connection
pool is taken from it once (``connection_from_url``): every request is one ``urlopen`` on that pool with the request
target (path and query), parsed once per URL and remembered for the URLs that repeat (a table's POST URL), so no
``requests`` machinery and no URL parsing per call (see ADR 14 for the measurements). Failures below HTTP become
typed errors without secrets.

Each thread that sends is a *lane* with cookies of its own, so it holds its own ServiceNow session
(``JSESSIONID``): the instance runs one transaction at a time per session, so requests in flight on separate lanes
run at once, and the instance creates about one session per lane, not one per request.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlparse

import certifi
import requests
import urllib3
from requests.auth import HTTPBasicAuth
from requests.utils import get_environ_proxies
from urllib3.util import parse_url

from ticketsync.hooks.servicenow.errors import (
    NOT_RETRIED,
    ServiceNowConnectionLost,
    ServiceNowError,
    ServiceNowTimeout,
    ServiceNowTLSError,
    ServiceNowTransientError,
)

# requests' own policy: no retries below HTTP (a POST must never be repeated blindly), no read retries.
_RETRIES = urllib3.Retry(total=0, read=False, redirect=False, raise_on_redirect=False)
_CA_BUNDLE_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_REMEMBERED_URLS = 64  # a table's POST URL per table and echo list: a few; the bound only guards against misuse


class Answer:
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


class LaneCookies:
    """The cookies of one lane (one ServiceNow session) for the one instance the hook talks to.

    The instance sets ``JSESSIONID`` and ``glide_user_route`` (``Path=/``, host-only); a new value replaces the old
    (an expired session is answered with a new cookie), ``Max-Age=0`` or an empty value removes one.
    """

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._header: str | None = None  # the values as a Cookie header, kept in step with them

    def header(self) -> str | None:
        """The ``Cookie`` request header, or None when the lane holds no cookie yet."""
        return self._header

    def keep(self, set_cookies: Iterable[str]) -> bool:
        """Store the ``Set-Cookie`` values of an answer; True when one of them started a new session."""
        new_session = False
        for set_cookie in set_cookies:
            pair, *attributes = set_cookie.split(";")
            name, _, value = pair.strip().partition("=")
            if not name:
                continue
            removed = not value or any(a.strip().lower() in ("max-age=0", "max-age=-1") for a in attributes)
            if removed:
                self._values.pop(name, None)
                continue
            new_session |= name == "JSESSIONID" and self._values.get(name) != value
            self._values[name] = value
        self._header = "; ".join(f"{name}={value}" for name, value in self._values.items()) or None
        return new_session

    def as_dict(self) -> dict[str, str]:
        return dict(self._values)

    def clear(self) -> None:
        """Forget the session: the lane's next request starts a new one."""
        self._values.clear()
        self._header = None


class PooledTransport:
    """Sends one request at a time per caller (thread-safe) over one urllib3 pool manager for ``base_url``.

    :param session: the hook's configured session, read once for its settings (auth, headers, verify, cert,
        trust_env); nothing is sent through it.
    :param base_url: ``scheme://host[:port]`` of the instance.
    :param timeouts: ``(connect, read)`` seconds.
    :param conn_id: the connection, named in error messages.
    :param pool_size: keep-alive connections kept open to the instance.
    :param shared_session: every thread uses one set of cookies (one ServiceNow session, so the instance runs the
        requests one at a time): the control of tests and benchmarks, not for production.
    """

    def __init__(
        self, session: requests.Session, base_url: str, timeouts: tuple[float, float], conn_id: str, *,
        pool_size: int = 8, shared_session: bool = False,
    ) -> None:
        self.session = session
        self.base_url = base_url
        self.timeouts = timeouts
        self.conn_id = conn_id
        self.shared_session = shared_session
        self._headers = {name: _text_header(value) for name, value in session.headers.items()}
        basic = _basic_authorization(session.auth)
        # what every request sends unless told otherwise: the session's headers and its basic auth
        self._base_headers = {**self._headers, **({"Authorization": basic} if basic is not None else {})}
        self._timeout = urllib3.Timeout(connect=timeouts[0], read=timeouts[1])
        self._manager = _pool_manager(session, base_url, max(1, pool_size))
        origin = parse_url(base_url)
        self._origin_key = (origin.scheme, origin.host, origin.port)
        # A forward proxy (plain http through a proxy) needs the absolute URL and proxy headers on each request:
        # the manager's urlopen adds them. Otherwise (direct, or https through a CONNECT tunnel) the instance's pool
        # takes the request target alone, as the manager's urlopen would hand it over.
        self._forwarded = isinstance(self._manager, urllib3.ProxyManager) and origin.scheme == "http"
        self._origin = self._manager.connection_from_url(base_url)
        self._targets: dict[str, str] = {}  # absolute URL -> request target, for the URLs that repeat
        self._lanes = threading.local()
        self._shared = LaneCookies()
        self._sessions_lock = threading.Lock()
        self.sessions_started = 0  # answers that handed a lane a new ServiceNow session (Set-Cookie: JSESSIONID)

    def exchange(
        self, method: str, url: str, body: bytes | None, *, token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One HTTP exchange; redirects are not followed (a redirect is not an answer).

        :param method: the HTTP method.
        :param url: the absolute URL, query string included.
        :param body: the encoded body, if any.
        :param token: an OAuth bearer token; without it the session's basic auth is used.
        :param headers: headers on top of the session's.
        """
        sent = self._base_headers.copy()
        if headers:
            sent.update(headers)
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        cookies = self.cookies()
        cookie = cookies.header()
        if cookie is not None:
            sent["Cookie"] = cookie
        target = self._targets.get(url) or self._target(url)
        pool = self._origin if target[0] == "/" else self._manager
        try:
            raw = pool.urlopen(
                method, target, body=body, headers=sent, redirect=False, assert_same_host=False, retries=_RETRIES,
                timeout=self._timeout, preload_content=True, decode_content=True,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            # The instance may still be running this request's transaction on the lane's session; the lane's next
            # request would wait behind it (and could then commit later than settle_seconds allows for): start a
            # new session instead.
            cookies.clear()
            raise self._error(method, exc) from exc
        set_cookies = raw.headers.getlist("Set-Cookie")
        if set_cookies and cookies.keep(set_cookies):
            with self._sessions_lock:
                self.sessions_started += 1
        return Answer(raw.status, raw.reason or "", raw.headers, raw.data)

    def remember(self, url: str) -> None:
        """Parse a URL that will be sent again and again (a table's POST URL) once, not on every request.

        :param url: the absolute URL, query string included.
        """
        if len(self._targets) < _REMEMBERED_URLS:
            self._targets[url] = self._target(url)

    def _target(self, url: str) -> str:
        """What the instance's pool is asked for: the request target (path and query), as the pool manager's
        ``urlopen`` would hand it over; the absolute URL itself for a forward proxy or another origin (the
        manager's ``urlopen`` then picks the pool)."""
        parsed = parse_url(url)
        if self._forwarded or (parsed.scheme, parsed.host, parsed.port) != self._origin_key:
            return url
        return parsed.request_uri

    def cookies(self) -> LaneCookies:
        """The calling thread's cookies: its lane's ServiceNow session (one set for all when shared)."""
        if self.shared_session:
            return self._shared
        cookies: LaneCookies | None = getattr(self._lanes, "cookies", None)
        if cookies is None:
            cookies = self._lanes.cookies = LaneCookies()
        return cookies

    def close(self) -> None:
        """Close the pooled connections; every lane starts a new ServiceNow session afterwards."""
        self._manager.clear()
        self._origin = self._manager.connection_from_url(self.base_url)
        self._lanes = threading.local()
        self._shared = LaneCookies()

    def _error(self, method: str, exc: BaseException) -> ServiceNowError:
        """A failure below HTTP as a typed error: a failed certificate check is configuration, the rest transient."""
        if is_certificate_error(exc):
            return ServiceNowTLSError(
                f"TLS certificate verification failed for {urlparse(self.base_url).hostname} ({short(exc)}). If "
                f"the instance uses a private CA, give connection {self.conn_id!r} its CA bundle (the extra "
                f"'ca_bundle', or the extra 'verify' set to the bundle's path) {NOT_RETRIED}"
            )
        refusal = client_certificate_refusal(exc)
        if refusal is not None:  # refused in the handshake, before the request was read: nothing was done
            return ServiceNowTLSError(
                f"{urlparse(self.base_url).hostname} refused this worker's TLS client certificate: {refusal} "
                f"({short(exc)}). Give connection {self.conn_id!r} the extra 'cert' (a PEM file with the client "
                f"certificate and its key) that the instance's mutual-TLS profile trusts {NOT_RETRIED}"
            )
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        timed_out = isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError)
        if isinstance(reason, urllib3.exceptions.NewConnectionError):  # no connection: nothing was sent
            return ServiceNowTransientError(f"{method} connection failed ({short(exc)})")
        if timed_out:
            return ServiceNowTimeout(f"{method} timed out ({type(reason).__name__})")
        # Reset, closed or cut after the request may have been sent: the instance may still commit it.
        return ServiceNowConnectionLost(f"{method} connection lost without an answer ({short(exc)})")


def _basic_authorization(auth: Any) -> str | None:
    """The ``Authorization`` header of the session's basic auth (what ``HttpHook`` sets), or None without auth."""
    if auth is None:
        return None
    if isinstance(auth, HTTPBasicAuth):
        user, password = auth.username, auth.password
    elif isinstance(auth, tuple) and len(auth) == 2:
        user, password = auth
    else:
        raise TypeError(f"unsupported auth {type(auth).__name__}: the hook sends basic auth or an OAuth token")
    return str(urllib3.make_headers(basic_auth=f"{_text(user)}:{_text(password)}")["authorization"])


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _tls_settings(session: requests.Session) -> dict[str, Any]:
    """The pool manager's TLS arguments from the session's ``verify`` and ``cert``.

    ``verify`` True means the CA bundle requests would use (``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` when the
    session trusts the environment, else certifi's); a path (file or directory) is used as given, so the
    environment cannot replace it; False turns verification off.
    """
    settings: dict[str, Any] = {}
    verify = session.verify
    if verify is False:
        settings.update(cert_reqs=ssl.CERT_NONE, assert_hostname=False)
    else:
        bundle = verify if isinstance(verify, str) else None
        if bundle is None and session.trust_env:
            bundle = next((os.environ[name] for name in _CA_BUNDLE_ENV if os.environ.get(name)), None)
        bundle = bundle or certifi.where()
        settings["cert_reqs"] = ssl.CERT_REQUIRED
        settings["ca_cert_dir" if os.path.isdir(bundle) else "ca_certs"] = bundle
    cert = session.cert
    if isinstance(cert, tuple):
        settings.update(cert_file=cert[0], key_file=cert[1])
    elif cert:
        settings["cert_file"] = cert
    return settings


def _pool_manager(session: requests.Session, base_url: str, pool_size: int) -> urllib3.PoolManager:
    """A pool manager for the instance, through the environment's proxy for it when the session trusts the
    environment (``HTTPS_PROXY``, ``NO_PROXY``), as requests would choose."""
    settings = {**_tls_settings(session), "maxsize": pool_size, "block": False, "retries": _RETRIES}
    proxy = None
    if session.trust_env:
        proxies = {**get_environ_proxies(base_url, no_proxy=None), **(session.proxies or {})}
        proxy = proxies.get(urlparse(base_url).scheme) or proxies.get("all")
    if proxy:
        return urllib3.ProxyManager(proxy, num_pools=1, **settings)
    return urllib3.PoolManager(num_pools=1, **settings)


def _text_header(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The error and every error behind it: its arguments, cause, context and (urllib3's) reason, each once."""
    seen: set[int] = set()
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [arg for arg in current.args if isinstance(arg, BaseException)]
        pending += [e for e in (current.__cause__, current.__context__, getattr(current, "reason", None)) if
                    isinstance(e, BaseException)]


def is_certificate_error(exc: BaseException) -> bool:
    """Whether a transport error is a failed certificate verification (and not, say, a cut handshake).

    :param exc: the error, with its causes and reasons searched too.
    """
    return any(isinstance(current, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(current)
               for current in _chain(exc))


# TLS alerts a server sends when it does not accept the client's certificate (OpenSSL's names for alerts received).
CLIENT_CERTIFICATE_ALERTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires one and none was presented",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it found the certificate bad",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "the certificate has expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "the certificate was revoked",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it could not accept the certificate",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "the certificate is of a type it does not support",
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust the CA that signed the certificate",
    "TLSV1_ALERT_ACCESS_DENIED": "the certificate is not allowed access",
}


def client_certificate_refusal(exc: BaseException) -> str | None:
    """What the server said of the client's certificate, if the error is a TLS alert refusing it; else None.

    :param exc: the error, with its causes and reasons searched too.
    """
    for current in _chain(exc):
        text = str(current)
        for alert, meaning in CLIENT_CERTIFICATE_ALERTS.items():
            if alert in text:
                return meaning
    return None


def short(exc: BaseException) -> str:
    """A one-line cause without the URL's query string (which may hold ids) or anything secret.

    :param exc: the error to describe.
    """
    text = str(exc).split("(Caused by")[-1] if "(Caused by" in str(exc) else str(exc)
    return " ".join(text.split())[:200]
