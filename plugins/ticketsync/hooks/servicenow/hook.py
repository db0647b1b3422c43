"""ServiceNowHook: the Table API on top of the HTTP provider's ``HttpHook``.

The hook owns the session, auth, TLS, timeouts and the Table API calls, and turns every answer into a parsed
result or a typed error. It holds no business rules: whether an error is retried is the load operator's decision.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import requests
from airflow.providers.http.hooks.http import HttpHook

from ticketsync.get_provider_info import CONN_FIELDS, CONNECTION_TYPE, HOOK_NAME, UI_FIELD_BEHAVIOUR
from ticketsync.hooks.servicenow.auth import (
    DEFAULT_TOKEN_LIFETIME,
    TOKEN_PATH,
    OAuthSettings,
    TokenCache,
    mask_secret,
    oauth_error,
    oauth_settings,
)
from ticketsync.hooks.servicenow.config import ServiceNowExtras, require_https
from ticketsync.hooks.servicenow.errors import (
    NOT_RETRIED,
    ServiceNowAuthError,
    ServiceNowError,
    ServiceNowInvalidConnection,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTLSError,
    ServiceNowTransientError,
)
from ticketsync.hooks.servicenow.transport import Answer, PooledTransport

if TYPE_CHECKING:
    from airflow.sdk import Connection

TABLE_NAME = re.compile(r"[a-z0-9_]{1,80}")
SYS_ID = re.compile(r"[0-9a-f]{32}")
LOOKUP_PAGE = 1000
TEST_TABLE = "sn_bom_loan_service"  # "Test" reads one sys_id of it: the table the load writes
_REMEMBERED_URLS = 64  # POST URLs kept, one per table and echo list: a few; the bound only guards against misuse
_JSON = json.JSONEncoder(ensure_ascii=False)  # json.dumps(body, ensure_ascii=False), without a new encoder each time


@dataclass(frozen=True)
class CreatedRecord:
    """A record the hook created: its ``sys_id`` and ``number``, and the fields it was asked to echo as the
    instance stored them (``values``; a field not answered is absent)."""

    sys_id: str
    number: str | None
    values: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ExistingRecord:
    """A record a correlation look-up found."""

    sys_id: str
    number: str | None
    correlation_id: str
    created_on: str


class ServiceNowHook(HttpHook):
    """Table API calls over one pooled keep-alive session; each thread that calls the hook is a lane with its own
    ServiceNow session (cookie jar), and the OAuth token is shared by all.

    The connection is of type ``servicenow`` (its own form; https unless the schema says otherwise) or ``http``
    (schema ``https`` must be set): host ``<instance>.service-now.com``, login and password (basic auth or the
    OAuth password grant); the extras are :class:`~ticketsync.hooks.servicenow.config.ServiceNowExtras`.

    :param servicenow_conn_id: the Airflow connection (conn_type ``servicenow`` or ``http``).
    :param pool_size: keep-alive connections kept open; match it to the requests you keep in flight.
    :param shared_session: every thread shares one cookie jar, so one ServiceNow session, on which the instance
        runs one request at a time: the control of tests and benchmarks, never for production.
    """

    conn_name_attr = "servicenow_conn_id"
    default_conn_name = "servicenow_default"
    conn_type = CONNECTION_TYPE
    hook_name = HOOK_NAME

    def __init__(
        self, servicenow_conn_id: str = default_conn_name, *, pool_size: int = 8, shared_session: bool = False
    ) -> None:
        super().__init__(method="GET", http_conn_id=servicenow_conn_id)
        self._pool_size = max(1, pool_size)
        self.servicenow_conn_id = servicenow_conn_id
        self._extras: ServiceNowExtras | None = None
        self._oauth: OAuthSettings | None = None
        self._transport: PooledTransport | None = None
        self._tokens = TokenCache()
        self._shared_session = shared_session
        self._connect_lock = threading.Lock()
        self._create_urls: dict[tuple[str, tuple[str, ...]], str] = {}  # (table, echo) -> the POST URL

    # ----------------------------------------------------------------------------------------------------------
    # the connection and the session
    # ----------------------------------------------------------------------------------------------------------

    def get_conn(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> requests.Session:
        """The hook's one session, built on first use and reused by every call (and every thread).

        :param headers: headers added to the session (on first use only).
        :param extra_options: extras that override the connection's (on first use only).
        """
        return self._connect(headers, extra_options).session

    def _connect(
        self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None
    ) -> PooledTransport:
        transport = self._transport
        if transport is not None:
            return transport
        with self._connect_lock:  # threads calling at once on first use share one transport (and its lanes)
            if self._transport is None:
                session = super().get_conn(headers=headers, extra_options=extra_options)
                session.headers.update({"Accept": "application/json", "Content-Type": "application/json"})
                extras = self.extras()
                require_https(self.servicenow_conn_id, self.base_url, allow_insecure_http=extras.allow_insecure_http)
                self._transport = PooledTransport(
                    session, self.base_url, extras.timeouts, self.servicenow_conn_id, pool_size=self._pool_size,
                    shared_session=self._shared_session,
                )
            return self._transport

    def _set_base_url(self, connection: Connection) -> None:
        """``HttpHook``'s base URL, but https by default for a ``servicenow`` connection (its form has no schema)."""
        super()._set_base_url(connection)
        host = connection.host or ""
        if connection.conn_type == CONNECTION_TYPE and not connection.schema and "://" not in host:
            self.base_url = "https" + self.base_url.removeprefix("http")

    def extras(self) -> ServiceNowExtras:
        """The connection's extras, typed (read on first use; no network)."""
        if self._extras is None:
            extra = self.get_connection(self.servicenow_conn_id).extra_dejson
            self._extras = ServiceNowExtras.from_extra(self.servicenow_conn_id, extra)
        return self._extras

    def _configure_session_from_extra(
        self, session: requests.Session, connection: Any, extra_options: dict[str, Any]
    ) -> requests.Session:
        """Apply the typed extras; unlike ``HttpHook``, never turn the other extras into headers."""
        extras = ServiceNowExtras.from_extra(
            self.servicenow_conn_id, {**connection.extra_dejson, **(extra_options or {})}
        )
        self._extras = extras
        verify = extras.tls_verify
        if isinstance(verify, str) and not os.path.exists(verify):
            name = "ca_bundle" if extras.ca_bundle else "verify"
            raise ServiceNowInvalidConnection(
                f"connection {self.servicenow_conn_id!r}: the CA bundle in extra {name!r} does not exist: {verify}"
            )
        session.verify = verify  # True, False, or a CA bundle file or directory
        if verify is False:
            self.log.warning(
                "TLS certificate verification is OFF for connection %r (extra verify=false): "
                "use it only against a test instance", self.servicenow_conn_id,
            )
        if extras.cert:
            session.cert = extras.cert
        session.trust_env = extras.trust_env
        self._oauth = oauth_settings(self.servicenow_conn_id, extras, connection)
        if self._oauth is not None:
            session.auth = None  # the bearer token goes on each request instead of basic auth
        return session

    def rate_limit(self) -> float | None:
        """The connection's ``rate_limit`` extra (requests per second in total for this integration user), if set."""
        return self.extras().rate_limit

    @property
    def sessions_started(self) -> int:
        """ServiceNow sessions the instance handed this hook's lanes so far (``Set-Cookie: JSESSIONID``)."""
        return self._transport.sessions_started if self._transport is not None else 0

    def close(self) -> None:
        """Close the session's connections; the next call opens new ones (and new ServiceNow sessions)."""
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        self._create_urls.clear()

    # ----------------------------------------------------------------------------------------------------------
    # one request
    # ----------------------------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> Answer:
        """One request; an OAuth token refused with 401 is renewed once (nothing was done with a 401)."""
        transport = self._connect()  # reads the connection, OAuth settings included, on first use
        return self._send_to(transport, method, self._url(path, params), body)

    def _url(self, path: str, params: Mapping[str, str] | None) -> str:
        """The absolute URL of ``path`` with ``params`` as its query (``,`` left as is: it needs no escape there)."""
        return self.url_from_endpoint(path) + (f"?{urlencode(params, safe=',')}" if params else "")

    def _url_remembered(self, path: str, params: Mapping[str, str]) -> str:
        """:meth:`_url` for a URL that will be sent again and again: the transport parses it once."""
        transport = self._connect()  # the base URL is known once connected
        url = self._url(path, params)
        transport.remember(url)
        return url

    def _send_to(
        self, transport: PooledTransport, method: str, url: str, body: Mapping[str, Any] | None
    ) -> Answer:
        """One request to an absolute URL; an OAuth token refused with 401 is renewed once."""
        data = _JSON.encode(body).encode("utf-8") if body is not None else None
        token = self._access_token() if self._oauth is not None else None
        answer = transport.exchange(method, url, data, token=token)
        if answer.status_code == 401 and token is not None:
            self._tokens.invalidate(token)
            token = self._access_token()
            answer = transport.exchange(method, url, data, token=token)
        self._raise_for_status(answer)
        return answer

    def _access_token(self) -> str:
        return self._tokens.get(self._fetch_token)

    def _fetch_token(self) -> tuple[str, float]:
        """``POST /oauth_token.do`` (form-encoded) for a new access token; returns it and its lifetime (s)."""
        oauth = self._oauth
        if oauth is None:
            raise RuntimeError("no OAuth settings")
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        response = self._connect().exchange(
            "POST", self.url_from_endpoint(TOKEN_PATH), urlencode(oauth.form()).encode("ascii"), headers=headers
        )
        status = response.status_code
        if 400 <= status < 500 and status not in (408, 429):  # any refusal is about the configuration
            raise ServiceNowAuthError(
                f"{status} OAuth token request refused ({oauth_error(_json_or_none(response), response.reason)}): "
                "check client_id and client_secret" + (", login and password" if oauth.grant_type == "password" else "")
                + f" of connection {self.servicenow_conn_id!r} {NOT_RETRIED}",
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
        mask_secret(token)
        self.log.info("obtained an OAuth access token (%s grant) valid for %.0f s", oauth.grant_type, lifetime)
        return token, lifetime

    def _raise_for_status(self, response: Answer) -> None:
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
                f"check {check} {NOT_RETRIED}",
                status=401,
            )
        if status == 429:
            raise ServiceNowRateLimited(
                f"429 {message}" + (f": {detail}" if detail else ""),
                retry_after=_retry_after(response),
                rule=response.headers.get("X-RateLimit-Rule"),
                limit_per_hour=_seconds(response, "X-RateLimit-Limit"),
            )
        if status >= 500 or status == 408:
            raise ServiceNowTransientError(f"{status} {message}" + (f": {detail}" if detail else ""), status=status)
        raise ServiceNowRequestError(status, message, detail)

    # ----------------------------------------------------------------------------------------------------------
    # Table API
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def table_path(table: str) -> str:
        """``/api/now/table/{table}``, for a valid table name only.

        :param table: the table name (lowercase letters, digits and ``_``).
        """
        if not TABLE_NAME.fullmatch(table):
            raise ValueError(f"invalid ServiceNow table name {table!r}")
        return f"/api/now/table/{table}"

    def create_record(self, table: str, body: dict[str, str], echo: Sequence[str] = ()) -> CreatedRecord:
        """``POST /api/now/table/{table}``; a 2xx without a sys_id is treated as unknown, not as success.

        :param table: the table to insert into.
        :param body: the record's field values, as strings.
        :param echo: fields to read back from the answer, as the instance stored them, into ``values``.
        """
        key = (table, tuple(echo))
        url = self._create_urls.get(key)
        if url is None:  # the same for every record of the table: built, and parsed by the transport, once
            path = self.table_path(table)
            params = {"sysparm_fields": ",".join(("sys_id", "number", *echo)), "sysparm_exclude_reference_link": "true"}
            url = self._url_remembered(path, params)
            if len(self._create_urls) < _REMEMBERED_URLS:
                self._create_urls[key] = url
        response = self._send_to(self._connect(), "POST", url, body)
        result = _json_result(response)
        sys_id = result.get("sys_id") if isinstance(result, dict) else None
        if not isinstance(sys_id, str) or not sys_id:
            raise ServiceNowTransientError(
                f"{response.status_code} answer without a sys_id: the record may or may not exist",
                status=response.status_code,
            )
        number = result.get("number")
        values = {name: str(result[name]) for name in echo if isinstance(result.get(name), (str, int, float))}
        return CreatedRecord(sys_id=sys_id, number=str(number) if number else None, values=values)

    def list_records(
        self,
        table: str,
        *,
        query: str,
        fields: Sequence[str],
        limit: int = LOOKUP_PAGE,
        offset: int = 0,
        display_value: str | None = None,
    ) -> list[dict[str, Any]]:
        """``GET /api/now/table/{table}``: one page of the records matching ``query``.

        :param table: the table to read.
        :param query: an encoded query (``field=value^ORDERBYfield``); empty for every record.
        :param fields: the fields to return.
        :param limit: the page size.
        :param offset: the records to skip.
        :param display_value: ``sysparm_display_value`` (``all``: each field as ``{"value", "display_value"}``).
        """
        params = {
            "sysparm_query": query,
            "sysparm_fields": ",".join(fields),
            "sysparm_limit": str(limit),
            "sysparm_offset": str(offset),
            "sysparm_exclude_reference_link": "true",
        }
        if display_value is not None:
            params["sysparm_display_value"] = display_value
        result = _json_result(self._send("GET", self.table_path(table), params=params))
        if not isinstance(result, list):
            raise ServiceNowTransientError("list answer whose 'result' is not a list", status=200)
        return [record for record in result if isinstance(record, dict)]

    def find_by_correlation(self, table: str, correlation_ids: Iterable[str]) -> dict[str, list[ExistingRecord]]:
        """Every record of ``table`` whose ``correlation_id`` is one of the given ids, oldest first, in one
        ``correlation_idIN…`` query (paged if more records than a page come back), keyed by the record's own
        ``correlation_id``. The instance compares without regard to case, so a key may differ from the id asked
        for in case only: which record belongs to which request is the caller's decision.

        :param table: the table to search.
        :param correlation_ids: the ids to look up.
        """
        ids = sorted(set(correlation_ids))
        wanted = {correlation.lower() for correlation in ids}
        found: dict[str, list[ExistingRecord]] = {}
        if not ids:
            return found
        query = f"correlation_idIN{','.join(ids)}^ORDERBYsys_created_on"
        fields = ("sys_id", "number", "correlation_id", "sys_created_on")
        offset = 0
        while True:
            page = self.list_records(table, query=query, fields=fields, limit=LOOKUP_PAGE, offset=offset)
            for record in page:
                existing = _existing_record(record, wanted, table, len(ids))
                found.setdefault(existing.correlation_id, []).append(existing)
            if len(page) < LOOKUP_PAGE:
                return found
            offset += LOOKUP_PAGE

    def find_by_keys(self, table: str, key_field: str, keys: Iterable[str]) -> dict[str, list[str]]:
        """The sys_ids of the records of ``table`` whose ``key_field`` is one of ``keys``, in one
        ``<key_field>IN…`` query (paged), by key folded to lower case (the instance compares without case).

        :param table: the reference table to search (``csm_consumer``).
        :param key_field: the business key's field there (``number``).
        :param keys: the keys to look up.
        """
        if not TABLE_NAME.fullmatch(key_field):
            raise ValueError(f"invalid field name {key_field!r}")
        wanted = sorted(set(keys))
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
        """``GET /api/now/table/{table}/{sys_id}``.

        :param table: the table to read.
        :param sys_id: the record's sys_id.
        :param fields: the fields to return (all if empty).
        """
        params = {"sysparm_exclude_reference_link": "true"}
        if fields:
            params["sysparm_fields"] = ",".join(fields)
        result = _json_result(self._send("GET", f"{self.table_path(table)}/{sys_id}", params=params))
        if not isinstance(result, dict):
            raise ServiceNowTransientError("record answer whose 'result' is not an object", status=200)
        return result

    def update_record(
        self, table: str, sys_id: str, body: dict[str, str], fields: Sequence[str] = ("sys_id",)
    ) -> dict[str, Any]:
        """``PATCH /api/now/table/{table}/{sys_id}``: only the fields in ``body`` change; a non-empty journal field
        (``work_notes``, ``comments``) appends one journal entry each time it is sent, so a PATCH whose answer was
        lost must be checked (:meth:`journal_entries`) before it is sent again.

        :param table: the record's table.
        :param sys_id: the record's sys_id (a 404 raises :class:`ServiceNowRequestError`: never created here).
        :param body: the fields to write, as strings.
        :param fields: the fields the answer returns.
        """
        params = {"sysparm_fields": ",".join(fields), "sysparm_exclude_reference_link": "true"}
        response = self._send("PATCH", f"{self.table_path(table)}/{sys_id}", params=params, body=body)
        result = _json_result(response)
        if not isinstance(result, dict) or ("sys_id" in fields and result.get("sys_id") != sys_id):
            raise ServiceNowTransientError(
                f"{response.status_code} answer without the updated record: the update may or may not be applied",
                status=response.status_code,
            )
        return result

    def journal_entries(
        self, table: str, sys_id: str, element: str = "work_notes", *, since: str | None = None
    ) -> list[dict[str, str]]:
        """The journal entries (``sys_journal_field``) of one record's journal field, oldest first, every page.

        :param table: the record's table (the entries' ``name``).
        :param sys_id: the record's sys_id (the entries' ``element_id``).
        :param element: the journal field: ``work_notes`` or ``comments``.
        :param since: only entries created at or after this ``YYYY-MM-DD HH:MM:SS`` (UTC).
        """
        if not SYS_ID.fullmatch(sys_id) or not re.fullmatch(r"[a-z_]+", element):
            raise ValueError(f"invalid journal look-up {sys_id!r}/{element!r}")
        query = f"element_id={sys_id}^element={element}^name={table}"
        if since is not None:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", since):
                raise ValueError(f"since must be YYYY-MM-DD HH:MM:SS, got {since!r}")
            query += f"^sys_created_on>={since}"
        query += "^ORDERBYsys_created_on^ORDERBYsys_id"
        fields = ("sys_id", "element_id", "element", "value", "sys_created_on")
        entries: list[dict[str, str]] = []
        while True:
            page = self.list_records(
                "sys_journal_field", query=query, fields=fields, limit=LOOKUP_PAGE, offset=len(entries)
            )
            for entry in page:
                if entry.get("element_id") != sys_id or entry.get("element") != element:
                    raise ServiceNowRequestError(
                        200,
                        "journal answer holds entries of another record or field",
                        "the instance ignored part of the query (can the integration user read sys_journal_field?); "
                        "without it an update cannot be checked before it is sent again",
                    )
                entries.append({key: str(entry.get(key) or "") for key in fields})
            if len(page) < LOOKUP_PAGE:
                return entries

    def test_connection(self) -> tuple[bool, str]:
        """Airflow's "Test" button: one cheap authenticated read (one ``sys_id`` of the loan service case table).

        Returns whether it worked and a message saying what to fix: the credentials (401, a refused OAuth token),
        TLS trust, an instance that cannot be reached, or the integration user's read access to the table.
        """
        try:
            self.list_records(TEST_TABLE, query="", fields=("sys_id",), limit=1)
        except ServiceNowInvalidConnection as exc:
            return False, f"Invalid connection: {exc}"
        except ServiceNowAuthError as exc:
            return False, f"Authentication failed: {_without_task_advice(exc)}"
        except ServiceNowTLSError as exc:
            return False, f"TLS: {_without_task_advice(exc)}"
        except ServiceNowRequestError as exc:
            return False, (
                f"{self.base_url} answered but refused to read table {TEST_TABLE}: {exc}. The integration user "
                "needs read access to it (and its instance needs the Financial Services Operations plugin)"
            )
        except ServiceNowError as exc:  # transient: unreachable, timed out, 5xx, a hibernating instance's page
            return False, f"{self.base_url or self.servicenow_conn_id} cannot be reached or is not answering: {exc}"
        finally:
            self.close()
        return True, f"Connection successfully tested: {self.base_url} answered a Table API read of {TEST_TABLE}"

    # ----------------------------------------------------------------------------------------------------------
    # the connection form (Airflow 3.2+ reads the same declaration from the provider info)
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """The standard fields of the ``servicenow`` form: ``schema`` hidden (https by default), host, login and
        password relabelled, placeholders. The same as ``ui-field-behaviour`` in the provider info."""
        return {
            "hidden_fields": list(UI_FIELD_BEHAVIOUR["hidden-fields"]),
            "relabeling": dict(UI_FIELD_BEHAVIOUR["relabeling"]),
            "placeholders": dict(UI_FIELD_BEHAVIOUR["placeholders"]),
        }

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """The extra fields of the ``servicenow`` form as WTForms fields, built from the provider info's
        ``conn-fields`` (which Airflow 3.2+ reads instead, without importing the hook)."""
        from flask_appbuilder.fieldwidgets import BS3PasswordFieldWidget, BS3TextFieldWidget
        from flask_babel import lazy_gettext
        from wtforms import BooleanField, PasswordField, StringField
        from wtforms.validators import Optional, any_of

        widgets: dict[str, Any] = {}
        for name, spec in CONN_FIELDS.items():
            schema = spec["schema"]
            label, description, default = lazy_gettext(spec["label"]), spec["description"], schema.get("default")
            if "boolean" in schema["type"]:
                widgets[name] = BooleanField(label, description=description, default=default)
            elif schema.get("format") == "password":
                widgets[name] = PasswordField(label, widget=BS3PasswordFieldWidget(), description=description)
            else:
                validators = [Optional()] + ([any_of(schema["enum"])] if "enum" in schema else [])
                widgets[name] = StringField(
                    label, widget=BS3TextFieldWidget(), validators=validators, description=description,
                    default=None if default is None else str(default),
                )
        return widgets

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


def _existing_record(record: dict[str, Any], wanted: set[str], table: str, asked: int) -> ExistingRecord:
    """One record of a look-up answer. Idempotency rests on this answer, so anything odd in it is an error:
    a record without sys_id means the answer is damaged, and a correlation id we did not ask for (even without
    regard to case, as the instance compares) means the instance dropped the query term (it does that silently for
    an unknown field), so "not found" proves nothing. ``wanted`` holds the ids asked for, in lower case."""
    sys_id = record.get("sys_id")
    correlation = record.get("correlation_id")
    if not isinstance(sys_id, str) or not sys_id:
        raise ServiceNowTransientError("look-up answer holds a record without sys_id; not trusted", status=200)
    if not isinstance(correlation, str) or correlation.lower() not in wanted:
        seen = f"correlation_id {correlation!r}"[:140] if correlation is not None else "no correlation_id field"
        raise ServiceNowRequestError(
            200,
            "look-up answer holds records that do not match the query",
            f"asked {table} for {asked} correlation ids with 'correlation_idIN…' and got record "
            f"{record.get('number') or sys_id} with {seen}, which matches none of them even without regard to "
            "case: the instance ignored the query term. Check that the table has a field correlation_id and "
            "that the integration user can read it (sys_dictionary, read ACLs); until then ticketsync cannot "
            "prevent duplicates and sends nothing",
        )
    return ExistingRecord(
        sys_id=sys_id,
        number=str(record.get("number") or "") or None,
        correlation_id=str(correlation),
        created_on=str(record.get("sys_created_on") or ""),
    )


def _without_task_advice(exc: Exception) -> str:
    """An error's message without the advice meant for a task's log (the "Test" button retries nothing)."""
    return str(exc).replace(f" {NOT_RETRIED}", "")


def _json_or_none(response: Answer) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _seconds(response: Answer, header: str) -> float | None:
    value = response.headers.get(header)
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _retry_after(response: Answer) -> float | None:
    """The wait a 429 asks for: ``Retry-After`` (seconds), else the seconds until ``X-RateLimit-Reset`` (the UNIX
    time the rate-limit window resets), else None."""
    retry_after = _seconds(response, "Retry-After")
    if retry_after is not None:
        return retry_after
    reset = _seconds(response, "X-RateLimit-Reset")
    return None if reset is None else max(0.0, reset - time.time())


def _error_fields(response: Answer) -> tuple[str, str | None]:
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


def _json_result(response: Answer) -> Any:
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
