"""The Table API: routes `/api/now/[v1|v2/]table/{table}[/{sys_id}]` to the store and shapes the answers."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

from ticketsync_dev.emulator.choices import display_value
from ticketsync_dev.emulator.replies import Reply, error_reply, not_found
from ticketsync_dev.emulator.store import Record, Store, TableSchema

DEFAULT_LIMIT = 10_000
_PATH = re.compile(r"/api/now/(?:(?P<version>v[12])/)?table/(?P<table>[^/]+)(?:/(?P<sys_id>[^/]+))?/?")


@dataclass(frozen=True)
class ApiRequest:
    """What the Table API needs from an HTTP request."""

    method: str
    path: str
    params: Mapping[str, str]
    body: bytes
    base_url: str
    user: str
    content_type: str = "application/json"
    accept: str = "application/json"


@dataclass(frozen=True)
class Target:
    table: str
    sys_id: str | None
    version: str | None


@dataclass(frozen=True)
class ReadOptions:
    """`sysparm_fields`, `sysparm_exclude_reference_link` and `sysparm_display_value` (`false`, `true`, `all`)."""

    fields: tuple[str, ...] | None
    exclude_reference_link: bool
    display_value: str = "false"

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> ReadOptions:
        names = tuple(name.strip() for name in params.get("sysparm_fields", "").split(",") if name.strip())
        exclude = params.get("sysparm_exclude_reference_link", "").lower() == "true"
        display = params.get("sysparm_display_value", "").lower()
        return cls(names or None, exclude, display if display in {"true", "all"} else "false")


Handler = Callable[[Store, ApiRequest, Target], Reply]


def table_of(path: str) -> str | None:
    """The table a Table API path names, or None."""
    match = _PATH.fullmatch(path)
    return None if match is None else unquote(match["table"])


def handle(store: Store, request: ApiRequest) -> Reply:
    """Answer one authenticated Table API request."""
    match = _PATH.fullmatch(request.path)
    if match is None:
        return error_reply(400, "Requested URI does not represent any resource")
    refusal = _media_refusal(request)
    if refusal is not None:
        return refusal
    target = Target(unquote(match["table"]), match["sys_id"] and unquote(match["sys_id"]), match["version"])
    if not store.has_table(target.table):
        return error_reply(400, f"Invalid table {target.table}")
    routes = _ITEM_ROUTES if target.sys_id else _COLLECTION_ROUTES
    handler = routes.get(request.method)
    if handler is None:
        return error_reply(405, "Method not Supported", f"{request.method} is not supported for this resource")
    return handler(store, request, target)


_JSON_RANGES = frozenset({"application/json", "application/*", "*/*"})


def _media_refusal(request: ApiRequest) -> Reply | None:
    """406 when the `Accept` header allows no JSON answer, 415 when a body is not declared as JSON.

    The instance also speaks XML; the emulator answers JSON only, so it refuses XML (stricter, never laxer). A
    missing `Accept` means any type; a body without a `Content-Type` is refused.
    """
    ranges = {part.split(";")[0].strip().lower() for part in request.accept.split(",")} if request.accept else set()
    if ranges and not ranges & _JSON_RANGES:
        return error_reply(406, "Not acceptable",
                           "The endpoint does not support the response format specified in the request Accept header")
    declared = request.content_type.split(";")[0].strip().lower()
    if request.body.strip() and declared != "application/json":
        detail = "The endpoint does not support the format of the request body"
        return error_reply(415, "Unsupported media type", detail)
    return None


def _int_param(params: Mapping[str, str], name: str, default: int) -> int:
    try:
        value = int(params.get(name, ""))
    except ValueError:
        return default
    return value if value >= 0 else default


def parse_body(raw: bytes) -> dict[str, Any] | Reply:
    """The JSON object of a request body (of an array, its first object), or a 400 reply."""
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return error_reply(400, "Exception while reading request", "The payload is not valid JSON.")
    if isinstance(data, list):
        data = data[0] if data else {}
    if not isinstance(data, dict):
        return error_reply(400, "Exception while reading request", "The payload must be a JSON object.")
    return data


def render(schema: TableSchema, record: Record, options: ReadOptions, base_url: str) -> dict[str, Any]:
    """A record as the Table API shows it: projected on sysparm_fields, reference fields as link objects."""
    fields = options.fields
    result: dict[str, Any] = dict(record) if fields is None else {n: record[n] for n in fields if n in record}
    if options.display_value != "false":
        return _with_display_values(schema, result, options, base_url)
    if options.exclude_reference_link:
        return result
    for name, ref_table in schema.references.items():
        value = result.get(name)
        if value:
            result[name] = {"link": f"{base_url}/api/now/table/{ref_table}/{value}", "value": value}
    return result


def _with_display_values(
    schema: TableSchema, values: Mapping[str, str], options: ReadOptions, base_url: str
) -> dict[str, Any]:
    """`sysparm_display_value=true`: labels instead of values; `all`: `{"display_value", "value"}` for every field.

    Choice fields show their labels; dates show as stored (the emulator's users are all in UTC, with the default
    format: on an instance the display value of a date is in the user's time zone, so read `value` for dates).
    A reference shows its sys_id as display value (the emulator does not know the referenced record) and keeps
    its `link` unless `sysparm_exclude_reference_link=true`.
    """
    result: dict[str, Any] = {}
    for name, value in values.items():
        label = display_value(schema.choices, name, value)
        shown: dict[str, str] = {"display_value": label}
        if name in schema.references and value and not options.exclude_reference_link:
            shown["link"] = f"{base_url}/api/now/table/{schema.references[name]}/{value}"
        if options.display_value == "all":
            shown["value"] = value
        result[name] = shown if len(shown) > 1 else label
    return result


def _link_header(request: ApiRequest, limit: int, offset: int, total: int) -> str | None:
    if offset == 0 and offset + limit >= total:
        return None
    last = max(0, (total - 1) // limit * limit) if limit else 0
    pages = [("first", 0)]
    if offset > 0:
        pages.append(("prev", max(0, offset - limit)))
    if offset + limit < total:
        pages.append(("next", offset + limit))
    pages.append(("last", last))
    links = []
    for rel, page_offset in pages:
        params = {**request.params, "sysparm_limit": str(limit), "sysparm_offset": str(page_offset)}
        links.append(f'<{request.base_url}{request.path}?{urlencode(params)}>;rel="{rel}"')
    return ",".join(links)


def _list(store: Store, request: ApiRequest, target: Target) -> Reply:
    params = request.params
    options = ReadOptions.from_params(params)
    limit = _int_param(params, "sysparm_limit", DEFAULT_LIMIT) or DEFAULT_LIMIT
    offset = _int_param(params, "sysparm_offset", 0)
    records, total = store.query(target.table, params.get("sysparm_query", ""), limit, offset, options.fields)
    if not records and target.version == "v1":
        return not_found()
    schema = store.schema(target.table)
    headers = {"X-Total-Count": str(total)}
    link = _link_header(request, limit, offset, total)
    if link is not None:
        headers["Link"] = link
    result = [render(schema, record, options, request.base_url) for record in records]
    return Reply(200, {"result": result}, headers)


def _create(store: Store, request: ApiRequest, target: Target) -> Reply:
    body = parse_body(request.body)
    if isinstance(body, Reply):
        return body
    record = store.create(target.table, body, request.user)
    options = ReadOptions.from_params(request.params)
    location = f"{request.base_url}/api/now/table/{target.table}/{record['sys_id']}"
    result = render(store.schema(target.table), record, options, request.base_url)
    return Reply(201, {"result": result}, {"Location": location})


def _get(store: Store, request: ApiRequest, target: Target) -> Reply:
    record = store.get(target.table, target.sys_id or "")
    if record is None:
        return not_found()
    options = ReadOptions.from_params(request.params)
    return Reply(200, {"result": render(store.schema(target.table), record, options, request.base_url)})


def _update(store: Store, request: ApiRequest, target: Target) -> Reply:
    body = parse_body(request.body)
    if isinstance(body, Reply):
        return body
    record = store.update(target.table, target.sys_id or "", body, request.user)
    if record is None:
        return not_found()
    options = ReadOptions.from_params(request.params)
    return Reply(200, {"result": render(store.schema(target.table), record, options, request.base_url)})


def _delete(store: Store, request: ApiRequest, target: Target) -> Reply:
    if not store.delete(target.table, target.sys_id or ""):
        return not_found()
    return Reply(204)


_COLLECTION_ROUTES: dict[str, Handler] = {"GET": _list, "POST": _create}
_ITEM_ROUTES: dict[str, Handler] = {"GET": _get, "PATCH": _update, "PUT": _update, "DELETE": _delete}
