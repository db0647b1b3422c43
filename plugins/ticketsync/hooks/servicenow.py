"""ServiceNowHook: transport to the Table API on top of the HTTP provider's ``HttpHook``.

The hook owns the session (one pooled keep-alive ``requests.Session``), auth, TLS verification, timeouts and the
Table API calls, and turns every answer into either a parsed result or a typed error. It holds no business rules:
whether an error is retried, and how, is the load operator's decision.

Connection (``servicenow_default``, conn_type ``http``): host (``<instance>.service-now.com``), schema (``https``;
``http`` only for a loopback emulator or with ``allow_insecure_http``), port, login, password. Extras are read by
name only, never forwarded as headers: ``timeout`` (seconds, or ``[connect, read]``), ``verify`` (true/false or a
CA bundle path), ``cert`` (client certificate path for mutual TLS), ``allow_insecure_http``, ``rate_limit``
(requests per second for this integration user, across every loader; the load operator paces itself by it).
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
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


class ServiceNowError(Exception):
    """Base of every error the hook raises; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceNowAuthError(ServiceNowError):
    """401: the credentials are wrong or missing. Retrying cannot help."""


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
        return ServiceNowTransientError(f"{method} timed out ({type(reason).__name__})")
    return ServiceNowTransientError(f"{method} connection failed ({_short(exc)})")


def _as_bool(value: Any, *, default: bool) -> bool:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("1", "true", "yes", "on")


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
        verify = extra.get("verify", extra.get("verify_ssl"))
        if isinstance(verify, str) and verify.strip().lower() not in ("true", "false", "1", "0", "yes", "no"):
            session.verify = verify  # a CA bundle path
        else:
            session.verify = _as_bool(verify, default=True)
        if extra.get("cert"):
            session.cert = str(extra["cert"])
        session.trust_env = _as_bool(extra.get("trust_env"), default=True)
        self._timeout = _timeout(extra.get("timeout"))
        self._allow_insecure_http = _as_bool(extra.get("allow_insecure_http"), default=False)
        return session

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
        session = self.get_conn()
        route = self._route()
        url = self.url_from_endpoint(path) + (f"?{urlencode(params)}" if params else "")
        request = requests.PreparedRequest()
        request.method, request.url = method, url
        request.headers = CaseInsensitiveDict({name: _text_header(value) for name, value in session.headers.items()})
        request.body = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else None
        request.prepare_auth(session.auth, url)  # also sets Content-Length
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
            raise _transport_error(method, exc) from exc
        if "set-cookie" in raw.headers:
            extract_cookies_to_jar(session.cookies, request, raw)  # type: ignore[no-untyped-call]
        answer = _Answer(raw.status, raw.reason or "", raw.headers, raw.data)
        self._raise_for_status(answer)
        return answer

    def _raise_for_status(self, response: _Answer) -> None:
        status = response.status_code
        if status < 400:
            return
        message, detail = _error_fields(response)
        if status == 401:
            raise ServiceNowAuthError(
                f"401 {message}: ServiceNow refused the credentials of connection {self.servicenow_conn_id!r}; "
                "check its login and password (the task is not retried for this)",
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


def _short(exc: BaseException) -> str:
    """A one-line cause without the URL's query string (which may hold ids) or anything secret."""
    text = str(exc).split("(Caused by")[-1] if "(Caused by" in str(exc) else str(exc)
    return " ".join(text.split())[:200]
