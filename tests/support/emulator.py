"""Constants and small helpers shared by the emulator tests."""

from __future__ import annotations

from typing import Any

import requests

USER = "admin"
PASSWORD = "s3cret-pw"
LOAN = "sn_bom_loan_service"


def create(session: requests.Session, url: str, **fields: Any) -> dict[str, Any]:
    """POST a record (reference fields as plain sys_ids) and return its result object."""
    response = session.post(url, json=fields, params={"sysparm_exclude_reference_link": "true"})
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()["result"]
    return result


def query(session: requests.Session, url: str, encoded: str, **params: str) -> list[dict[str, Any]]:
    """GET a list with an encoded query and return its result array."""
    response = session.get(url, params={"sysparm_query": encoded, "sysparm_exclude_reference_link": "true", **params})
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["result"]
    return result


def assert_envelope(response: requests.Response, status: int, message: str, detail: str | None = None) -> None:
    """The response is ServiceNow's error envelope with this status and message (and detail, when given)."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "failure"
    assert body["error"]["message"] == message
    if detail is not None:
        assert body["error"]["detail"] == detail
