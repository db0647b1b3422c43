"""The ServiceNow hook package: ``from ticketsync.hooks.servicenow import ServiceNowHook`` and its errors.

Modules: :mod:`.errors` (what can go wrong), :mod:`.config` (the connection's extras, typed), :mod:`.auth` (OAuth
and its token cache), :mod:`.transport` (how requests travel), :mod:`.hook` (the hook and its Table API calls).
"""

from ticketsync.hooks.servicenow.auth import TOKEN_PATH, OAuthSettings
from ticketsync.hooks.servicenow.config import AUTH_TYPES, DEFAULT_TIMEOUT, ServiceNowExtras
from ticketsync.hooks.servicenow.errors import (
    ServiceNowAuthError,
    ServiceNowConfigurationError,
    ServiceNowConnectionLost,
    ServiceNowError,
    ServiceNowInvalidConnection,
    ServiceNowRateLimited,
    ServiceNowRequestError,
    ServiceNowTimeout,
    ServiceNowTLSError,
    ServiceNowTransientError,
    in_doubt,
)
from ticketsync.hooks.servicenow.hook import LOOKUP_PAGE, TABLE_NAME, CreatedRecord, ExistingRecord, ServiceNowHook

__all__ = [
    "AUTH_TYPES",
    "DEFAULT_TIMEOUT",
    "LOOKUP_PAGE",
    "TABLE_NAME",
    "TOKEN_PATH",
    "CreatedRecord",
    "ExistingRecord",
    "OAuthSettings",
    "ServiceNowAuthError",
    "ServiceNowConfigurationError",
    "ServiceNowConnectionLost",
    "ServiceNowError",
    "ServiceNowExtras",
    "ServiceNowHook",
    "ServiceNowInvalidConnection",
    "ServiceNowRateLimited",
    "ServiceNowRequestError",
    "ServiceNowTLSError",
    "ServiceNowTimeout",
    "ServiceNowTransientError",
    "in_doubt",
]
