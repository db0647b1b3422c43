"""Replies the emulator sends: the JSON error envelope, the HTML pages of gateways and hibernating instances."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

JSON_TYPE = "application/json;charset=UTF-8"
HTML_TYPE = "text/html;charset=UTF-8"
RATE_LIMIT_RULE = "6f2a8b1c0b3f4a1e9c2d7e5f4a3b2c1d"  # the sys_id of the emulated rate-limit rule

_HTML_PAGES = {
    502: ("502 Bad Gateway", "<h1>502 Bad Gateway</h1><p>The proxy server received an invalid response.</p>"),
    503: ("Service Unavailable", "<h1>Service Unavailable</h1><p>The instance is undergoing maintenance.</p>"),
    504: ("504 Gateway Time-out", "<h1>504 Gateway Time-out</h1><p>The server didn't respond in time.</p>"),
    200: (
        "Instance Hibernating page",
        (
            "<h1>Your instance is hibernating</h1><p>Developer instances hibernate when not in use. "
            "Sign in to the developer portal to wake it up.</p>"
        ),
    ),
}


@dataclass(frozen=True)
class Reply:
    """One HTTP answer: a status, a JSON payload or an HTML page, extra headers."""

    status: int
    payload: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    html: str | None = None
    truncate: bool = False
    garble: bool = False
    cookies: tuple[str, ...] = ()  # `Set-Cookie` values, one header each

    def encode(self) -> tuple[bytes, str]:
        """The body and its content type."""
        if self.html is not None:
            return self.html.encode("utf-8"), HTML_TYPE
        if self.payload is None:
            return b"", JSON_TYPE
        if self.garble:
            return repr(self.payload).encode("utf-8"), JSON_TYPE
        body = json.dumps(self.payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        if self.truncate:
            body = body[: max(1, len(body) // 2)]
        return body, JSON_TYPE

    def with_cookies(self, cookies: tuple[str, ...]) -> Reply:
        """The same reply, also setting these cookies."""
        return replace(self, cookies=self.cookies + cookies) if cookies else self

    def truncated(self) -> Reply:
        """The same reply with its JSON body cut in half (a malformed body)."""
        return replace(self, truncate=True)

    def garbled(self) -> Reply:
        """The same reply with a whole body that is not JSON (Python's repr: single quotes, None, True)."""
        return replace(self, garble=True)

    def without_sys_id(self) -> Reply:
        """The same reply with `sys_id` taken out of its result object(s)."""
        if not isinstance(self.payload, dict) or "result" not in self.payload:
            return self
        result = self.payload["result"]
        if isinstance(result, dict):
            result = _drop_sys_id(result)
        elif isinstance(result, list):
            result = [_drop_sys_id(item) if isinstance(item, dict) else item for item in result]
        return replace(self, payload={**self.payload, "result": result})


    def with_result_field(self, name: str, value: str) -> Reply:
        """The same reply with ``name`` set to ``value`` in its result object (a 2xx record answer only)."""
        if not 200 <= self.status < 300 or not isinstance(self.payload, dict):
            return self
        result = self.payload.get("result")
        if not isinstance(result, dict):
            return self
        return replace(self, payload={**self.payload, "result": {**result, name: value}})


def _drop_sys_id(record: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "sys_id"}


def error_reply(status: int, message: str, detail: str | None = None, headers: dict[str, str] | None = None) -> Reply:
    """ServiceNow's error envelope."""
    payload = {"error": {"message": message, "detail": detail}, "status": "failure"}
    return Reply(status, payload, headers or {})


def html_reply(status: int) -> Reply:
    title, body = _HTML_PAGES[status]
    page = f"<!DOCTYPE html><html><head><title>{title}</title></head><body>{body}</body></html>"
    return Reply(status, html=page)


def unauthorized() -> Reply:
    return error_reply(
        401,
        "User Not Authenticated",
        "Required to provide Auth information",
        {"WWW-Authenticate": 'BASIC realm="Service-now"'},
    )


def not_found() -> Reply:
    return error_reply(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")


def rate_limited(wait_seconds: float, per_second: float) -> Reply:
    """429 of a rate-limit rule, with the headers ServiceNow sends."""
    retry_after = max(1, math.ceil(wait_seconds))
    per_hour = round(per_second * 3600)
    headers = {
        "Retry-After": str(retry_after),
        "X-RateLimit-Limit": str(per_hour),
        "X-RateLimit-Reset": str(int(time.time()) + retry_after),
        "X-RateLimit-Rule": RATE_LIMIT_RULE,
    }
    detail = f"The rate limit of {per_hour} requests per hour for the Table API was exceeded"
    return error_reply(429, "Rate limit exceeded", detail, headers)


def storm_rate_limited(retry_after: float) -> Reply:
    """429 of a rate-limit rule in a storm: `Retry-After` (whole seconds as ServiceNow sends them, or a fraction
    when configured so for fast tests) and the rule, without `X-RateLimit-Limit` (the storm is not a steady pace)."""
    headers = {"Retry-After": f"{retry_after:g}", "X-RateLimit-Rule": RATE_LIMIT_RULE}
    return error_reply(429, "Rate limit exceeded", "Too many requests; retry later", headers)


def concurrency_exceeded() -> Reply:
    """429 when all API semaphores are busy: no rate-limit headers."""
    return error_reply(
        429, "Maximum number of concurrent requests exceeded", "All API semaphores are busy; try again later"
    )


def session_busy() -> Reply:
    """429 when too many requests of one session wait for it (the session synchroniser's "max waiters")."""
    return error_reply(429, "Rejecting request", "Too many transactions are waiting for this session")


def transaction_cancelled() -> Reply:
    """500 of a transaction the quota manager cancelled (the transaction quota ran out): nothing was written."""
    return error_reply(
        500,
        "Transaction cancelled: maximum execution time exceeded",
        "Check logs for error trace or enable glide.rest.debug property to verify REST request processing",
    )


def data_policy_refusal() -> Reply:
    """What a data policy or a business rule that aborts the insert answers: definitive, nothing written."""
    return error_reply(
        403, "Operation Failed", "Data Policy Exception: The following fields are mandatory: Assignment group"
    )


def rule_refusal(status: int, field_name: str, contains: str) -> Reply:
    """What the instance answers, every time, to a request whose data a rule of the instance refuses."""
    if status == 500:
        return transaction_cancelled()
    if status == 403:
        detail = (
            f"Error during insert of sn_bom_loan_service: a business rule aborted it ({field_name} holds {contains!r})"
        )
        return error_reply(403, "Operation Failed", detail)
    if status == 400:
        return error_reply(400, "Invalid request", f"The value of {field_name} is not accepted ({contains!r})")
    return error_reply(status, "Request refused", f"{field_name} holds {contains!r}")


def pre_commit_fault(kind: str, retry_after: float = 1.0, *, empty_gateway_bodies: bool = False) -> Reply | None:
    """The answer of a fault that strikes before anything is written; None means: cut the connection.

    :param kind: the fault drawn.
    :param retry_after: the `Retry-After` of an `error_429` answer.
    :param empty_gateway_bodies: answer 502/503/504 with an empty body instead of an HTML page.
    """
    fixed: dict[str, Callable[[], Reply]] = {
        "error_429": lambda: storm_rate_limited(retry_after),
        "error_429_busy": concurrency_exceeded,
        "error_403": data_policy_refusal,
        "error_500": transaction_cancelled,
        "html_200": lambda: html_reply(200),
    }
    if kind in fixed:
        return fixed[kind]()
    if kind.startswith("error_"):
        status = int(kind.removeprefix("error_"))
        return Reply(status, html="") if empty_gateway_bodies else html_reply(status)
    return None
