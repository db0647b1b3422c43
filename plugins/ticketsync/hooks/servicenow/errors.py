"""The errors ServiceNowHook raises: what went wrong, and whether retrying can help."""

from __future__ import annotations

NOT_RETRIED = "(the task is not retried for this)"


class ServiceNowError(Exception):
    """Base of every error the hook raises; ``status`` is the HTTP status when there was an answer."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServiceNowConfigurationError(ServiceNowError):
    """The connection itself is wrong (credentials, TLS trust): retrying cannot help, a person must fix it."""


class ServiceNowInvalidConnection(ServiceNowConfigurationError, ValueError):
    """The connection's fields or extras are invalid (found before any request); the message names which."""


class ServiceNowAuthError(ServiceNowConfigurationError):
    """401, or a refused OAuth token request: the credentials are wrong or missing. Retrying cannot help."""


class ServiceNowTLSError(ServiceNowConfigurationError):
    """The server's TLS certificate failed verification (untrusted CA, wrong host name, expired), or the server
    refused the client's certificate in the handshake (none given for mutual TLS, an untrusted or expired one).

    Not transient: an instance that is down does not present a bad certificate, so this fails the task at once.
    """


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


class ServiceNowTimeout(ServiceNowTransientError):
    """The client stopped waiting for the answer: the instance may still be working on the request, and commit it."""


class ServiceNowConnectionLost(ServiceNowTransientError):
    """The connection ended after the request may have reached the instance, without an answer (reset, closed, cut
    by a proxy): like a timeout, the instance may still be working on the request, and commit it later."""


class ServiceNowRateLimited(ServiceNowTransientError):
    """429: the instance refused the request before doing anything. ``retry_after`` is in seconds, if given."""

    def __init__(
        self, message: str, *, retry_after: float | None, rule: str | None, limit_per_hour: float | None = None
    ) -> None:
        super().__init__(message, status=429)
        self.retry_after = retry_after
        self.rule = rule
        self.limit_per_hour = limit_per_hour


def in_doubt(error: BaseException | None) -> bool:
    """Whether the instance may still be working on a request that got this error, and commit it later: a timeout,
    a connection lost after the request may have been sent, or a gateway's 502 / 504 (its upstream may still run).
    A write that got one is checked only once ``settle_seconds`` have passed since it was sent (docs/adr/0005)."""
    if isinstance(error, ServiceNowTimeout | ServiceNowConnectionLost):
        return True
    return isinstance(error, ServiceNowTransientError) and error.status in (502, 504)
