"""How the hook's requests travel: straight to the keep-alive pool ``requests`` keeps for the instance.

The pool is the very one the session would use (TLS verification, client certificate and proxy included), so the
work ``requests`` does per call (URL, settings and cookie merging, building a ``Response``) is done once per
session here, not on each of thousands of POSTs. Failures below HTTP become typed errors without secrets.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import requests
import urllib3
from requests.adapters import HTTPAdapter
from requests.cookies import extract_cookies_to_jar
from requests.structures import CaseInsensitiveDict

from ticketsync.hooks.servicenow.errors import (
    NOT_RETRIED,
    ServiceNowError,
    ServiceNowTimeout,
    ServiceNowTLSError,
    ServiceNowTransientError,
)


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


@dataclass(frozen=True)
class _Route:
    """Where the hook's requests go: the session's pool, and how requests would call it."""

    pool: urllib3.HTTPConnectionPool
    absolute: bool  # a plain-http proxy wants the whole URL as the request target
    origin_length: int  # len("scheme://host:port"): what precedes the request target in a URL
    timeout: urllib3.Timeout
    retries: urllib3.Retry


class PooledTransport:
    """Sends one request at a time per caller (thread-safe) over ``session``'s pool for ``base_url``.

    :param session: the hook's configured session (auth, headers, cookies, verify, cert, proxies).
    :param base_url: ``scheme://host[:port]`` of the instance.
    :param timeouts: ``(connect, read)`` seconds.
    :param conn_id: the connection, named in error messages.
    """

    def __init__(self, session: requests.Session, base_url: str, timeouts: tuple[float, float], conn_id: str) -> None:
        self.session = session
        self.base_url = base_url
        self.timeouts = timeouts
        self.conn_id = conn_id
        # What requests would work out from the environment (proxies, CA bundle) on every request: the same answer
        # for every request to this one host, so it is worked out once. verify and cert are the session's own,
        # passed per request, so REQUESTS_CA_BUNDLE cannot silently replace a path or False.
        self._settings = session.merge_environment_settings(base_url, {}, False, session.verify, session.cert)
        self._route: _Route | None = None

    def route(self) -> _Route:
        """The session's keep-alive connection pool for the instance, looked up once."""
        if self._route is None:
            session, settings = self.session, self._settings
            template = session.prepare_request(requests.Request("GET", self.base_url))
            adapter = session.get_adapter(self.base_url)
            if not isinstance(adapter, HTTPAdapter):
                raise TypeError(f"{type(adapter).__name__} is mounted for {self.base_url}; expected an HTTPAdapter")
            pool = adapter.get_connection_with_tls_context(
                template, settings["verify"], proxies=settings["proxies"], cert=settings["cert"]
            )
            adapter.cert_verify(pool, self.base_url, settings["verify"], settings["cert"])  # type: ignore[no-untyped-call]
            if not isinstance(pool, urllib3.HTTPConnectionPool):
                raise TypeError(f"unexpected connection pool {type(pool).__name__} for {self.base_url}")
            connect, read = self.timeouts
            self._route = _Route(
                pool=pool,
                absolute=adapter.request_url(template, settings["proxies"]) != template.path_url,
                origin_length=len("{0.scheme}://{0.netloc}".format(urlparse(self.base_url))),
                timeout=urllib3.Timeout(connect=connect, read=read),
                retries=adapter.max_retries,
            )
        return self._route

    def exchange(
        self, method: str, url: str, body: bytes | None, *, token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        """One HTTP exchange; redirects are not followed (a redirect is not an answer).

        :param method: the HTTP method.
        :param url: the absolute URL, query string included.
        :param body: the encoded body, if any.
        :param token: an OAuth bearer token; without it the session's auth (basic) is used.
        :param headers: headers on top of the session's.
        """
        session = self.session
        route = self.route()
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
            raise self._error(method, exc) from exc
        if "set-cookie" in raw.headers:
            extract_cookies_to_jar(session.cookies, request, raw)  # type: ignore[no-untyped-call]
        return Answer(raw.status, raw.reason or "", raw.headers, raw.data)

    def close(self) -> None:
        """Close the session's connections; the pool is looked up again on the next exchange."""
        self._route = None
        self.session.close()

    def _error(self, method: str, exc: BaseException) -> ServiceNowError:
        """A failure below HTTP as a typed error: a failed certificate check is configuration, the rest transient."""
        if is_certificate_error(exc):
            return ServiceNowTLSError(
                f"TLS certificate verification failed for {urlparse(self.base_url).hostname} ({short(exc)}). If "
                f"the instance uses a private CA, give connection {self.conn_id!r} its CA bundle (the extra "
                f"'ca_bundle', or the extra 'verify' set to the bundle's path) {NOT_RETRIED}"
            )
        reason = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        timed_out = isinstance(reason, urllib3.exceptions.TimeoutError | TimeoutError)
        if timed_out and not isinstance(reason, urllib3.exceptions.NewConnectionError):
            return ServiceNowTimeout(f"{method} timed out ({type(reason).__name__})")
        return ServiceNowTransientError(f"{method} connection failed ({short(exc)})")


def _text_header(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else value


def is_certificate_error(exc: BaseException) -> bool:
    """Whether a transport error is a failed certificate verification (and not, say, a cut handshake).

    :param exc: the error, with its causes and reasons searched too.
    """
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


def short(exc: BaseException) -> str:
    """A one-line cause without the URL's query string (which may hold ids) or anything secret.

    :param exc: the error to describe.
    """
    text = str(exc).split("(Caused by")[-1] if "(Caused by" in str(exc) else str(exc)
    return " ".join(text.split())[:200]
