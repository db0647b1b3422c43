"""OAuth 2.0 of the emulated instance: `POST /oauth_token.do` issues opaque bearer tokens with a short lifetime.

Grants `client_credentials` (the token acts as the configured user, as an instance maps the OAuth client to a user),
`password` (which also returns a refresh token) and `refresh_token` (a new access token for a live refresh token;
the refresh token stays the same). The body must be form-encoded: a JSON body names no grant and is refused with
400 `unsupported_grant_type`. Tokens can be revoked or given a shorter lifetime at run time, so a client's refresh
paths are testable. A refused request answers 401 `{"error": "server_error", "error_description":
"access_denied"}`, which is what an instance says for a wrong client id or secret.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl

from ticketsync_dev.emulator.replies import Reply

GRANTS = ("client_credentials", "password", "refresh_token")
REFRESH_TOKEN_LIFETIME = 8_640_000.0  # 100 days, the instance's default refresh token lifespan


def _same(given: str | None, expected: str) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())


class TokenIssuer:
    """Issued tokens and their expiry, thread-safe, with counters of what was asked."""

    def __init__(self, lifetime: float) -> None:
        self._lock = threading.Lock()
        self._tokens: dict[str, tuple[str, float]] = {}  # token -> (user, expires at, monotonic)
        self._refresh: dict[str, tuple[str, float]] = {}  # refresh token -> (user, expires at, monotonic)
        self._lifetime = lifetime
        self._requests = self._issued = self._refused = self._revoked = 0
        self._recent: deque[str] = deque(maxlen=1000)  # for tests that check no token leaks anywhere

    @property
    def lifetime(self) -> float:
        return self._lifetime

    def set_lifetime(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("token_lifetime must be positive")
        with self._lock:
            self._lifetime = float(seconds)

    def issue(self, user: str) -> tuple[str, float]:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._requests += 1
            self._issued += 1
            self._tokens[token] = (user, time.monotonic() + self._lifetime)
            self._recent.append(token)
            return token, self._lifetime

    def issue_refresh(self, user: str) -> str:
        """A refresh token for ``user`` (what the password grant returns beside the access token)."""
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._refresh[token] = (user, time.monotonic() + REFRESH_TOKEN_LIFETIME)
            self._recent.append(token)
            return token

    def refresh_user(self, token: str) -> str | None:
        """The user a live refresh token stands for; None for an unknown, revoked or expired one."""
        with self._lock:
            entry = self._refresh.get(token)
            if entry is None or time.monotonic() >= entry[1]:
                return None
            return entry[0]

    def refuse(self) -> None:
        with self._lock:
            self._requests += 1
            self._refused += 1

    def user_for(self, token: str) -> str | None:
        """The user a live token acts as; None for an unknown, revoked or expired token."""
        with self._lock:
            entry = self._tokens.get(token)
            if entry is None:
                return None
            if time.monotonic() >= entry[1]:
                del self._tokens[token]
                return None
            return entry[0]

    def revoke_all(self) -> int:
        """Invalidate every token at once (what an admin revoking the OAuth client, or an expiry, looks like)."""
        with self._lock:
            count = len(self._tokens)
            self._tokens.clear()
            self._refresh.clear()
            self._revoked += count
            return count

    def recent_tokens(self) -> list[str]:
        """The last 1,000 tokens issued (access and refresh tokens), live or not."""
        with self._lock:
            return list(self._recent)

    def reset(self) -> None:
        with self._lock:
            self._tokens.clear()
            self._refresh.clear()
            self._recent.clear()
            self._requests = self._issued = self._refused = self._revoked = 0

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            return {
                "token_requests": self._requests,
                "tokens_issued": self._issued,
                "token_refusals": self._refused,
                "tokens_revoked": self._revoked,
                "active_tokens": sum(1 for _, expires in self._tokens.values() if expires > now),
                "token_lifetime": self._lifetime,
            }


def _refused(issuer: TokenIssuer, status: int = 401, error: str = "server_error",
             description: str = "access_denied") -> Reply:
    issuer.refuse()
    return Reply(status, {"error_description": description, "error": error})


def token_reply(
    issuer: TokenIssuer, body: bytes, *, client_id: str, client_secret: str, user: str, password: str,
    client_credentials: bool = True,
) -> Reply:
    """Answer one form-encoded token request.

    :param client_credentials: whether the instance allows the client-credentials grant (on an instance it is off
        until the property `glide.oauth.inbound.client.credential.grant_type.enabled` is set to true).
    """
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    grant = form.get("grant_type", "")
    if grant not in GRANTS or (grant == "client_credentials" and not client_credentials):
        return _refused(issuer, 400, "unsupported_grant_type", f"grant_type must be one of {', '.join(GRANTS)}")
    client_ok = _same(form.get("client_id"), client_id) & _same(form.get("client_secret"), client_secret)
    refresh_token: str | None = None
    if grant == "password":
        user_ok = _same(form.get("username"), user) & _same(form.get("password"), password)
        client_ok = client_ok and user_ok
    elif grant == "refresh_token":
        refresh_token = form.get("refresh_token", "")
        client_ok = client_ok and issuer.refresh_user(refresh_token) is not None
    if not client_ok:
        return _refused(issuer)
    if grant == "password":
        refresh_token = issuer.issue_refresh(user)
    token, lifetime = issuer.issue(user)
    payload = {
        "access_token": token,
        **({"refresh_token": refresh_token} if refresh_token else {}),
        "scope": "useraccount",
        "token_type": "Bearer",
        "expires_in": max(1, round(lifetime)),
    }
    return Reply(200, payload, {"Cache-Control": "no-store", "Pragma": "no-cache"})
