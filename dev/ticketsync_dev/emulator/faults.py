"""Fault configuration and the machinery that injects faults: random draws, a token bucket, a concurrency gate."""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# Random faults, in the order their rates are stacked on the unit interval.
PRE_COMMIT_FAULTS: tuple[str, ...] = (
    "error_403",
    "error_500",
    "error_502",
    "error_503",
    "error_504",
    "html_200",
    "cut_before_commit",
    "error_429",
    "error_429_busy",
)
POST_COMMIT_FAULTS: tuple[str, ...] = (
    "cut_after_commit",
    "slow_after_commit",
    "malformed_json",
    "missing_sys_id",
    "garbled_json",
    "slow_before_commit",
    "cut_then_commit",
)
RANDOM_FAULTS: tuple[str, ...] = PRE_COMMIT_FAULTS + POST_COMMIT_FAULTS
# Deterministic faults, counted in the stats next to the random ones.
OTHER_FAULTS: tuple[str, ...] = (
    "fail_auth", "rate_limit", "concurrency_limit", "rule", "truncate", "transaction_quota",
)
ALL_METHODS: tuple[str, ...] = ("GET", "POST", "PATCH", "PUT", "DELETE")

_FLOAT_FIELDS = frozenset({
    "latency_ms", "latency_jitter_ms", "rate_limit_per_second", "rate_limit_burst", "slow_after_commit_ms",
    "retry_after_seconds", "slow_before_commit_ms", "transaction_quota_seconds", "rate_limit_window_seconds",
})
DEFAULT_TRANSACTION_QUOTA = 60.0  # the base system's "REST Table API request timeout" quota rule, in seconds
_BOOL_FIELDS = frozenset({"fail_auth", "empty_gateway_bodies"})
_EPSILON = 1e-9


class FaultConfigError(ValueError):
    """A fault configuration that cannot be applied (unknown field, wrong type, rate out of range)."""


@dataclass(frozen=True)
class FaultRule:
    """A fault for the requests whose data holds a value: how one row's data can fail a request every time.

    A request matches when its method is one of ``methods`` and the text ``contains`` occurs in ``field``: a field
    of the JSON body, or ``sysparm_query`` (the encoded query of a list). Then either the instance refuses it with
    ``status`` (400, 403, 500…) before doing anything, or it does the write and answers with a record whose
    ``correlation_id`` is ``answer_correlation_id`` (an answer that is not the request's record).
    """

    contains: str
    field: str = "short_description"
    methods: tuple[str, ...] = ("POST",)
    status: int = 0
    answer_correlation_id: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(method.upper() for method in self.methods))
        if not self.contains:
            raise FaultConfigError("a rule needs a non-empty 'contains'")
        if (self.status == 0) == (self.answer_correlation_id is None):
            raise FaultConfigError("a rule needs exactly one of 'status' (400-599) and 'answer_correlation_id'")
        if self.status and not 400 <= self.status <= 599:
            raise FaultConfigError(f"a rule's status must be between 400 and 599, got {self.status}")
        unknown = set(self.methods) - set(ALL_METHODS)
        if unknown:
            raise FaultConfigError(f"unknown methods in a rule: {sorted(unknown)}")

    def matches(self, method: str, body: Mapping[str, Any], params: Mapping[str, str]) -> bool:
        if method not in self.methods:
            return False
        value = params.get("sysparm_query") if self.field == "sysparm_query" else body.get(self.field)
        return isinstance(value, str) and self.contains in value

    @classmethod
    def from_json(cls, value: Any) -> FaultRule:
        if isinstance(value, FaultRule):
            return value
        if not isinstance(value, Mapping):
            raise FaultConfigError("each rule must be an object")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise FaultConfigError(f"unknown rule fields: {', '.join(unknown)}")
        data = dict(value)
        if "methods" in data:
            data["methods"] = _coerce_methods(data["methods"])
        try:
            return cls(**data)
        except TypeError as exc:
            raise FaultConfigError(f"invalid rule: {exc}") from exc


@dataclass(frozen=True)
class FaultConfig:
    """What the emulator does wrong, and how often. Rates are probabilities between 0 and 1."""

    latency_ms: float = 0
    latency_jitter_ms: float = 0
    concurrency_limit: int = 0
    rate_limit_per_second: float = 0
    rate_limit_burst: float = 0
    # A rate-limit rule as the instance counts it: at most `rate_limit_per_window` API requests in each window of
    # `rate_limit_window_seconds` (an hour, as on the instance; tests shorten it). Once a window is exhausted every
    # request is answered 429 until it resets, with `Retry-After` and `X-RateLimit-Reset` at the window's end and
    # `X-RateLimit-Limit` the limit per hour. A window opens with the first request after the last one ended. 0: off.
    rate_limit_per_window: int = 0
    rate_limit_window_seconds: float = 3600
    error_403: float = 0
    error_500: float = 0
    error_502: float = 0
    error_503: float = 0
    error_504: float = 0
    html_200: float = 0
    cut_before_commit: float = 0
    cut_after_commit: float = 0
    slow_after_commit: float = 0
    slow_after_commit_ms: float = 0
    malformed_json: float = 0
    missing_sys_id: float = 0
    # A 429 storm regardless of load: `error_429` answers as a rate-limit rule does, with `Retry-After:
    # retry_after_seconds`; `error_429_busy` as when every API semaphore is busy, without any rate-limit header.
    error_429: float = 0
    error_429_busy: float = 0
    retry_after_seconds: float = 1
    # A complete 2xx body that is not JSON (single quotes, Python literals), after the write was applied.
    garbled_json: float = 0
    # A write that takes longer than the client waits: the client times out, the insert is applied afterwards.
    slow_before_commit: float = 0
    slow_before_commit_ms: float = 0
    # The connection is lost at once (a gateway or network cut) while the transaction goes on: the write is applied
    # `slow_before_commit_ms` later, within the transaction quota, and no answer is ever sent.
    cut_then_commit: float = 0
    fail_auth: bool = False
    # 502/503/504 answer with an empty body instead of an HTML page (gateways and maintenance send either).
    empty_gateway_bodies: bool = False
    methods: tuple[str, ...] = ALL_METHODS
    tables: tuple[str, ...] = ()  # random faults hit only requests to these tables; empty: every table
    seed: int | None = None
    # Deterministic faults tied to a request's data (see FaultRule), checked before the random ones.
    rules: tuple[FaultRule, ...] = ()
    # Fields the instance stores shorter than ticketsync allows, as (field, max length): a written value longer than
    # that is cut silently (ServiceNow does not answer an error for an overlong string).
    truncate: tuple[tuple[str, int], ...] = ()
    # Not a fault but the instance's transaction quota ("REST Table API request timeout", 60 s in the base system):
    # a Table API transaction still running after this many seconds is cancelled, nothing written, 500. 0: off.
    transaction_quota_seconds: float = DEFAULT_TRANSACTION_QUOTA

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(method.upper() for method in self.methods))
        for name in RANDOM_FAULTS:
            rate = getattr(self, name)
            if not 0 <= rate <= 1:
                raise FaultConfigError(f"{name} must be a rate between 0 and 1, got {rate}")
        if self.total_fault_rate() > 1 + _EPSILON:
            raise FaultConfigError(f"the random fault rates add up to {self.total_fault_rate():g}, more than 1")
        for name in _FLOAT_FIELDS:
            if getattr(self, name) < 0:
                raise FaultConfigError(f"{name} must not be negative")
        if self.concurrency_limit < 0:
            raise FaultConfigError("concurrency_limit must not be negative")
        if self.rate_limit_per_window < 0:
            raise FaultConfigError("rate_limit_per_window must not be negative")
        if self.rate_limit_window_seconds <= 0:
            raise FaultConfigError("rate_limit_window_seconds must be positive")
        unknown = set(self.methods) - set(ALL_METHODS)
        if unknown:
            raise FaultConfigError(f"unknown methods in methods: {sorted(unknown)}")

    @functools.cached_property
    def _total_fault_rate(self) -> float:
        return sum(float(getattr(self, name)) for name in RANDOM_FAULTS)

    def total_fault_rate(self) -> float:
        """The probability that a request draws one of the random faults (worked out once: the config is frozen)."""
        return self._total_fault_rate

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        data = dataclasses.asdict(self)
        data["methods"] = list(self.methods)
        data["tables"] = list(self.tables)
        data["rules"] = [{**dataclasses.asdict(rule), "methods": list(rule.methods)} for rule in self.rules]
        data["truncate"] = dict(self.truncate)
        return data

    def rule_for(self, method: str, body: Mapping[str, Any], params: Mapping[str, str]) -> FaultRule | None:
        """The first rule this request matches, if any."""
        return next((rule for rule in self.rules if rule.matches(method, body, params)), None)

    def with_changes(self, changes: Mapping[str, Any]) -> FaultConfig:
        """A copy with some fields replaced; values from JSON are checked and coerced to the field's type."""
        known = {field.name for field in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise FaultConfigError(f"unknown fault fields: {', '.join(unknown)}")
        coerced = {name: _coerce(name, value) for name, value in changes.items()}
        return dataclasses.replace(self, **coerced)


def _coerce_rules(value: Any) -> tuple[FaultRule, ...]:
    if not isinstance(value, list | tuple):
        raise FaultConfigError("rules must be a list of rule objects")
    return tuple(FaultRule.from_json(item) for item in value)


_STRUCTURED: dict[str, Callable[[Any], Any]] = {}


def _coerce(name: str, value: Any) -> Any:
    if name in _STRUCTURED:
        return _STRUCTURED[name](value)
    if name in _BOOL_FIELDS:
        if not isinstance(value, bool):
            raise FaultConfigError(f"{name} must be a boolean")
        return value
    if name == "seed":
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise FaultConfigError("seed must be an integer or null")
        return value
    if name in {"concurrency_limit", "rate_limit_per_window"}:
        if isinstance(value, bool) or not isinstance(value, int):
            raise FaultConfigError(f"{name} must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultConfigError(f"{name} must be a number")
    return float(value)


def _coerce_truncate(value: Any) -> tuple[tuple[str, int], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    try:
        pairs = tuple((str(name), int(limit)) for name, limit in items)
    except (TypeError, ValueError) as exc:
        raise FaultConfigError("truncate must map field names to lengths, e.g. {\"short_description\": 40}") from exc
    if any(limit < 0 for _, limit in pairs):
        raise FaultConfigError("truncate lengths must not be negative")
    return pairs


def _coerce_methods(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise FaultConfigError("methods must be a list of HTTP method names")
    return tuple(item.strip().upper() for item in value)


def _coerce_tables(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) for item in value):
        raise FaultConfigError("tables must be a list of table names")
    return tuple(item.strip() for item in value)


_STRUCTURED.update(methods=_coerce_methods, rules=_coerce_rules, truncate=_coerce_truncate, tables=_coerce_tables)


class TokenBucket:
    """A token bucket shared by all clients: `rate` tokens a second, at most `burst` stored."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._stamp = time.monotonic()
        self._full = True

    def reset(self) -> None:
        with self._lock:
            self._full = True

    def take(self, rate: float, burst: float) -> float:
        """Take one token. Returns 0 when granted, else the seconds until a token is available."""
        size = max(burst if burst > 0 else rate, 1.0)
        with self._lock:
            now = time.monotonic()
            if self._full:
                self._tokens, self._full = size, False
            else:
                self._tokens = min(size, self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= 1:
                self._tokens -= 1
                return 0.0
            return (1 - self._tokens) / rate


class FixedWindow:
    """A rate-limit rule's counter: at most `limit` requests per window of `seconds`, opened by the first request
    after the previous window ended."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._opened: float | None = None
        self._count = 0

    def reset(self) -> None:
        with self._lock:
            self._opened, self._count = None, 0

    def take(self, limit: int, seconds: float) -> float:
        """Count one request. Returns 0 when it is within the limit, else the seconds until the window resets."""
        with self._lock:
            now = time.monotonic()
            if self._opened is None or now >= self._opened + seconds:
                self._opened, self._count = now, 0
            if self._count < limit:
                self._count += 1
                return 0.0
            return self._opened + seconds - now


class ConcurrencyGate:
    """Admits at most `limit` requests at once; the rest are turned away at once, not queued."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active = 0

    def try_enter(self, limit: int) -> bool:
        with self._lock:
            if limit > 0 and self._active >= limit:
                return False
            self._active += 1
            return True

    def leave(self) -> None:
        with self._lock:
            self._active -= 1


class FaultInjector:
    """Holds the live fault configuration and decides, request by request, what goes wrong."""

    def __init__(self, config: FaultConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.bucket = TokenBucket()
        self.window = FixedWindow()
        self.gate = ConcurrencyGate()

    @property
    def config(self) -> FaultConfig:
        return self._config

    def update(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Replace some fields of the configuration; a new seed reseeds the random source."""
        with self._lock:
            new = self._config.with_changes(changes)
            if "seed" in changes:
                self._rng.seed(new.seed)
            if {"rate_limit_per_second", "rate_limit_burst"} & set(changes):
                self.bucket.reset()
            if {"rate_limit_per_window", "rate_limit_window_seconds"} & set(changes):
                self.window.reset()
            self._config = new
            return new

    def replace(self, config: FaultConfig) -> None:
        with self._lock:
            self._config = config
            self._rng.seed(config.seed)
            self.bucket.reset()
            self.window.reset()

    def draw(self, method: str, table: str | None = None) -> str | None:
        """At most one random fault for this request: one uniform draw against the cumulative rates."""
        config = self._config
        if method not in config.methods or config.total_fault_rate() <= 0:
            return None
        if config.tables and table not in config.tables:
            return None
        with self._lock:
            point = self._rng.random()
        cumulative = 0.0
        for name in RANDOM_FAULTS:
            cumulative += float(getattr(config, name))
            if point < cumulative:
                return name
        return None

    def latency_seconds(self) -> float:
        config = self._config
        if config.latency_ms <= 0 and config.latency_jitter_ms <= 0:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(-config.latency_jitter_ms, config.latency_jitter_ms)
        return max(0.0, config.latency_ms + jitter) / 1000

    def rate_limit_wait(self) -> tuple[float, float]:
        """``(0, 0)`` when the request may go on, else the seconds until it may (the hourly window's reset, or the
        bucket's next token) and the limit that refused it, in requests per second."""
        config = self._config
        if config.rate_limit_per_window > 0:
            wait = self.window.take(config.rate_limit_per_window, config.rate_limit_window_seconds)
            if wait > 0:
                return wait, config.rate_limit_per_window / config.rate_limit_window_seconds
        if config.rate_limit_per_second <= 0:
            return 0.0, 0.0
        wait = self.bucket.take(config.rate_limit_per_second, config.rate_limit_burst)
        return wait, config.rate_limit_per_second
