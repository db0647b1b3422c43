"""User sessions and the session synchroniser: one transaction at a time per session, as on the instance.

A request that carries a known, live `JSESSIONID` joins that session and waits for the session's running
transaction(s) to end; one without (or with an unknown or expired one) starts a new session and is answered with
`Set-Cookie: JSESSIONID=…` and `glide_user_route=…`. Once `max_waiters` requests of one session are waiting, the
next one is refused (KB0755706 session synchronisation, KB0655956 "max waiters", KB0552064 one session per request
without a cookie).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

SESSION_COOKIE = "JSESSIONID"
ROUTE_COOKIE = "glide_user_route"
_SWEEP_EVERY = 5.0  # seconds between sweeps of expired sessions


class Admission(Enum):
    """What the session synchroniser did with a request."""

    ENTERED = "entered"
    REFUSED = "refused"  # too many requests of the session were waiting already
    TIMED_OUT = "timed_out"  # the request's transaction quota ran out while it waited


class SessionPolicyError(ValueError):
    """A session policy that cannot be applied."""


@dataclass(frozen=True)
class SessionPolicy:
    """How the instance treats sessions.

    :param transactions: transactions one session may run at once: 1 (every release), 2 (REST from Yokohama on),
        or 0 to switch the synchroniser off (sessions are still created and counted).
    :param max_waiters: requests of one session that may wait at once; the next one is refused.
    :param idle_timeout: seconds after its last transaction ended that a session expires
        (`glide.integration.session_timeout`, five minutes by default).
    """

    transactions: int = 1
    max_waiters: int = 10
    idle_timeout: float = 300.0

    def __post_init__(self) -> None:
        if self.transactions not in (0, 1, 2):
            raise SessionPolicyError("session transactions must be 0 (off), 1 or 2")
        if self.max_waiters < 0:
            raise SessionPolicyError("session max_waiters must not be negative")
        if self.idle_timeout <= 0:
            raise SessionPolicyError("session idle_timeout must be positive")


@dataclass
class Session:
    """One user session on the instance."""

    session_id: str
    route: str
    user: str
    condition: threading.Condition = field(repr=False)
    last_used: float
    running: int = 0
    waiting: int = 0

    def cookies(self, *, secure: bool) -> tuple[str, ...]:
        """The `Set-Cookie` values that hand this session to the client."""
        attributes = "; Path=/; HttpOnly" + ("; Secure" if secure else "")
        return (f"{SESSION_COOKIE}={self.session_id}{attributes}", f"{ROUTE_COOKIE}={self.route}{attributes}")


def session_cookie(header: str | None) -> str | None:
    """The value of `JSESSIONID` in a `Cookie` request header, if any."""
    for part in (header or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == SESSION_COOKIE and value:
            return value.strip('"')
    return None


class SessionSynchronizer:
    """The sessions of the instance and the synchroniser that serialises each session's transactions."""

    def __init__(self, policy: SessionPolicy, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}
        self._created = 0
        self._refused = 0
        self._expired = 0
        self._running = 0
        self._max_running = 0
        self._last_sweep = clock()

    @property
    def policy(self) -> SessionPolicy:
        return self._policy

    def set_policy(self, policy: SessionPolicy) -> None:
        with self._lock:
            self._policy = policy
            for session in self._sessions.values():
                session.condition.notify_all()

    def reset(self) -> None:
        """Zero the counters; the sessions stay (a client's cookie still works after a reset, as on the instance)."""
        with self._lock:
            self._created = self._refused = self._expired = 0
            self._max_running = self._running

    def open(self, cookie: str | None, user: str) -> tuple[Session, bool]:
        """The session a request belongs to, and whether it was created for this request."""
        with self._lock:
            now = self._clock()
            session = self._sessions.get(cookie) if cookie else None
            if session is not None and self._expired_at(session, now):
                del self._sessions[session.session_id]
                self._expired += 1
                session = None
            if session is not None and session.user == user:
                return session, False
            self._sweep(now)
            session = Session(
                session_id=secrets.token_hex(16).upper(),
                route=f"glide.{secrets.token_hex(16)}",
                user=user,
                condition=threading.Condition(self._lock),
                last_used=now,
            )
            self._sessions[session.session_id] = session
            self._created += 1
            return session, True

    def enter(self, session: Session, timeout: float | None = None) -> Admission:
        """Wait until the session may run one more transaction.

        :param session: the request's session.
        :param timeout: seconds the request may wait (what is left of its transaction quota); None: no limit.
        :return: ENTERED, REFUSED when too many requests of the session wait already, or TIMED_OUT.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._lock:
            while self._policy.transactions and session.running >= self._policy.transactions:
                if session.waiting >= self._policy.max_waiters:
                    self._refused += 1
                    return Admission.REFUSED
                left = None if deadline is None else deadline - self._clock()
                if left is not None and left <= 0:
                    return Admission.TIMED_OUT
                session.waiting += 1
                try:
                    session.condition.wait(left)
                finally:
                    session.waiting -= 1
            session.running += 1
            self._running += 1
            self._max_running = max(self._max_running, self._running)
            return Admission.ENTERED

    def leave(self, session: Session) -> None:
        """The session's transaction ended: the next waiting request of that session may run."""
        with self._lock:
            session.running -= 1
            self._running -= 1
            session.last_used = self._clock()
            session.condition.notify()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            live = sum(not self._expired_at(s, self._clock()) for s in self._sessions.values())
            return {
                "sessions_created": self._created,
                "sessions_live": live,
                "sessions_expired": self._expired,
                "sessions_refused": self._refused,
                "transactions_running": self._running,
                "max_transactions": self._max_running,
                "session_policy": {
                    "transactions": self._policy.transactions,
                    "max_waiters": self._policy.max_waiters,
                    "idle_timeout": self._policy.idle_timeout,
                },
            }

    def _expired_at(self, session: Session, now: float) -> bool:
        idle = not session.running and not session.waiting
        return idle and now - session.last_used > self._policy.idle_timeout

    def _sweep(self, now: float) -> None:
        """Drop expired sessions now and then (called with the lock held), so the table does not grow forever."""
        if now - self._last_sweep < _SWEEP_EVERY:
            return
        self._last_sweep = now
        expired = [key for key, session in self._sessions.items() if self._expired_at(session, now)]
        for key in expired:
            del self._sessions[key]
        self._expired += len(expired)
