"""Admin endpoints under `/_emulator/` (no auth): health, stats, the last requests, faults, reset, raw records, OAuth
tokens, and an agent's work on a case (`POST work/{table}/{sys_id}`: change fields, add journal entries; `DELETE
records/{table}/{sys_id}`: delete it)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import unquote

from ticketsync_dev.emulator.faults import FaultConfig, FaultConfigError
from ticketsync_dev.emulator.oauth import TokenIssuer
from ticketsync_dev.emulator.replies import Reply, error_reply
from ticketsync_dev.emulator.sessions import SessionPolicy, SessionPolicyError, SessionSynchronizer
from ticketsync_dev.emulator.store import Store

PREFIX = "/_emulator/"


class AdminTarget(Protocol):
    """What the admin endpoints act on (the running server)."""

    @property
    def store(self) -> Store: ...

    @property
    def fault_config(self) -> FaultConfig: ...

    @property
    def oauth(self) -> TokenIssuer: ...

    @property
    def sessions(self) -> SessionSynchronizer: ...

    def update_faults(self, changes: dict[str, Any]) -> FaultConfig: ...

    def stats_snapshot(self) -> dict[str, Any]: ...

    def request_log(self) -> list[dict[str, Any]]: ...

    def reset(self, *, reset_faults: bool = False) -> None: ...


def _json_object(raw: bytes) -> dict[str, Any] | Reply:
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return error_reply(400, "Invalid JSON body")
    if not isinstance(data, dict):
        return error_reply(400, "The body must be a JSON object")
    return data


def _put_faults(target: AdminTarget, body: bytes) -> Reply:
    changes = _json_object(body)
    if isinstance(changes, Reply):
        return changes
    try:
        config = target.update_faults(changes)
    except FaultConfigError as exc:
        return error_reply(400, "Invalid fault configuration", str(exc))
    return Reply(200, config.to_dict())


def _reset(target: AdminTarget, body: bytes) -> Reply:
    options = _json_object(body)
    if isinstance(options, Reply):
        return options
    target.reset(reset_faults=options.get("reset_faults") is True)
    return Reply(200, {"status": "reset", "faults": target.fault_config.to_dict()})


def _put_oauth(target: AdminTarget, body: bytes) -> Reply:
    changes = _json_object(body)
    if isinstance(changes, Reply):
        return changes
    lifetime = changes.get("token_lifetime")
    if lifetime is not None:
        if isinstance(lifetime, bool) or not isinstance(lifetime, int | float) or lifetime <= 0:
            return error_reply(400, "Invalid OAuth settings", "token_lifetime must be a positive number of seconds")
        target.oauth.set_lifetime(float(lifetime))
    return Reply(200, target.oauth.snapshot())


def _put_sessions(target: AdminTarget, body: bytes) -> Reply:
    changes = _json_object(body)
    if isinstance(changes, Reply):
        return changes
    current = target.sessions.policy
    try:
        policy = SessionPolicy(
            transactions=_whole(changes.get("transactions", current.transactions), "transactions"),
            max_waiters=_whole(changes.get("max_waiters", current.max_waiters), "max_waiters"),
            idle_timeout=float(changes.get("idle_timeout", current.idle_timeout)),
        )
    except (SessionPolicyError, TypeError, ValueError) as exc:
        return error_reply(400, "Invalid session policy", str(exc))
    target.sessions.set_policy(policy)
    return Reply(200, target.sessions.snapshot()["session_policy"])


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SessionPolicyError(f"{name} must be a whole number")
    return value


def _revoke(target: AdminTarget, _body: bytes) -> Reply:
    return Reply(200, {"revoked": target.oauth.revoke_all(), **target.oauth.snapshot()})


def _records(target: AdminTarget, table: str) -> Reply:
    if not target.store.has_table(table):
        return error_reply(404, f"Invalid table {table}")
    records = target.store.records(table)
    return Reply(200, {"result": records, "count": len(records)})


AGENT = "agent"
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


def _work(target: AdminTarget, table: str, sys_id: str, body: bytes) -> Reply:
    """An agent's change to a record, as the instance's UI would make it (user `agent` unless `user` is given).

    `sys_updated_on` in the body stamps that time instead of now: an agent's transaction that started in an
    earlier second than it committed, the case a status pull's overlap exists for.
    """
    changes = _json_object(body)
    if isinstance(changes, Reply):
        return changes
    if not target.store.has_table(table):
        return error_reply(404, f"Invalid table {table}")
    stamp = changes.pop("sys_updated_on", None)
    if stamp is not None and not (isinstance(stamp, str) and _TIMESTAMP.fullmatch(stamp)):
        return error_reply(400, "Invalid sys_updated_on", "Use YYYY-MM-DD HH:MM:SS (UTC)")
    user = str(changes.pop("user", AGENT))
    record = target.store.update(table, sys_id, changes, user, updated_on=stamp)
    if record is None:
        return error_reply(404, "No Record found")
    return Reply(200, {"result": record})


def _delete(target: AdminTarget, table: str, sys_id: str) -> Reply:
    if not target.store.has_table(table):
        return error_reply(404, f"Invalid table {table}")
    if not target.store.delete(table, sys_id):
        return error_reply(404, "No Record found")
    return Reply(204)


_ROUTES: dict[tuple[str, str], Callable[[AdminTarget, bytes], Reply]] = {
    ("GET", "health"): lambda _target, _body: Reply(200, {"status": "ok"}),
    ("GET", "stats"): lambda target, _body: Reply(200, target.stats_snapshot()),
    ("GET", "requests"): lambda target, _body: Reply(200, {"result": target.request_log()}),
    ("GET", "faults"): lambda target, _body: Reply(200, target.fault_config.to_dict()),
    ("PUT", "faults"): _put_faults,
    ("PATCH", "faults"): _put_faults,
    ("POST", "reset"): _reset,
    ("GET", "oauth"): lambda target, _body: Reply(200, target.oauth.snapshot()),
    ("PUT", "oauth"): _put_oauth,
    ("POST", "oauth/revoke"): _revoke,
    ("GET", "sessions"): lambda target, _body: Reply(200, target.sessions.snapshot()),
    ("PUT", "sessions"): _put_sessions,
}


def handle(target: AdminTarget, method: str, path: str, body: bytes) -> Reply:
    """Answer one admin request."""
    route = path.removeprefix(PREFIX).rstrip("/")
    parts = [unquote(part) for part in route.split("/")]
    if method == "GET" and len(parts) == 2 and parts[0] == "records":
        return _records(target, parts[1])
    if method == "DELETE" and len(parts) == 3 and parts[0] == "records":
        return _delete(target, parts[1], parts[2])
    if method == "POST" and len(parts) == 3 and parts[0] == "work":
        return _work(target, parts[1], parts[2], body)
    handler = _ROUTES.get((method, route))
    if handler is None:
        return error_reply(404, "Unknown emulator endpoint", f"{method} {path}")
    return handler(target, body)
