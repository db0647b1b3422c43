"""What Airflow's ProvidersManager reads of ticketsync (the ``apache_airflow_provider`` entry point).

Plain data, no imports beyond the package's version, so every Airflow process can read it cheaply. The connection
form of the ``servicenow`` type is declared here (``conn-fields``, ``ui-field-behaviour``), as Airflow 3.2+ wants;
each field is an extra :class:`~ticketsync.hooks.servicenow.config.ServiceNowExtras` reads.
"""

from __future__ import annotations

from typing import Any

from ticketsync import __version__

CONNECTION_TYPE = "servicenow"
HOOK_CLASS_NAME = "ticketsync.hooks.servicenow.ServiceNowHook"
HOOK_NAME = "ServiceNow"


def _field(label: str, description: str, kind: str, **schema: Any) -> dict[str, Any]:
    return {"label": label, "description": description, "schema": {"type": [kind, "null"], **schema}}


# Extras the form shows, in the order it shows them (keys are the extra names).
CONN_FIELDS: dict[str, dict[str, Any]] = {
    "auth_type": _field(
        "Authentication", "basic: the user name and password below. oauth_client_credentials: the OAuth client "
        "alone. oauth_password: the OAuth client and the user name and password.", "string",
        enum=["basic", "oauth_client_credentials", "oauth_password"], default="basic",
    ),
    "client_id": _field("OAuth client id", "The application registry's client id (OAuth only).", "string"),
    "client_secret": _field(
        "OAuth client secret", "The application registry's client secret (OAuth only).", "string", format="password"
    ),
    "verify": _field(
        "Verify TLS certificate", "Turn off only against a test instance.", "boolean", default=True
    ),
    "ca_bundle": _field(
        "CA bundle", "Path, on every worker, of the CA bundle that signed the instance's certificate (a private CA "
        "or a TLS-inspecting proxy). Empty: the system's CAs.", "string",
    ),
    "cert": _field(
        "Client certificate", "Path of a PEM file with the client certificate and its key, for mutual TLS.", "string"
    ),
    "rate_limit": _field(
        "Rate limit (requests per second)", "The integration user's total across every loader; empty: no pacing.",
        "number", minimum=0,
    ),
    "connect_timeout": _field("Connect timeout (seconds)", "How long to wait for a connection.", "number",
                              minimum=0, default=10),
    "read_timeout": _field("Read timeout (seconds)", "How long to wait for an answer.", "number",
                           minimum=0, default=60),
    "allow_insecure_http": _field(
        "Allow plain http", "Only for an emulator on another host: credentials would travel unencrypted.",
        "boolean", default=False,
    ),
}

UI_FIELD_BEHAVIOUR: dict[str, Any] = {
    "hidden-fields": ["schema"],
    "relabeling": {"host": "Instance host", "login": "User name", "password": "Password"},
    "placeholders": {
        "host": "acme.service-now.com",
        "port": "443",
        "login": "the integration user (not used with oauth_client_credentials)",
        "password": "the integration user's password",
    },
}


def get_provider_info() -> dict[str, Any]:
    """The provider's description, in the shape of Airflow's ``provider_info.schema.json``."""
    return {
        "package-name": "ticketsync",
        "name": "ticketsync (ServiceNow FSO cases from ticket requests)",
        "description": "Pending ticket requests in a bank's database become ServiceNow FSO cases, exactly once, "
        "through the ServiceNow Table API.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "ServiceNow",
                "external-doc-url": "https://www.servicenow.com/docs/",
                "tags": ["service"],
            }
        ],
        "hooks": [{"integration-name": "ServiceNow", "python-modules": ["ticketsync.hooks.servicenow"]}],
        "operators": [
            {
                "integration-name": "ServiceNow",
                "python-modules": [
                    "ticketsync.operators.extract",
                    "ticketsync.operators.validate",
                    "ticketsync.operators.load",
                    "ticketsync.operators.update",
                    "ticketsync.operators.status",
                    "ticketsync.operators.report",
                ],
            }
        ],
        "triggers": [{"integration-name": "ServiceNow", "python-modules": ["ticketsync.triggers.resume"]}],
        "connection-types": [
            {
                "connection-type": CONNECTION_TYPE,
                "hook-class-name": HOOK_CLASS_NAME,
                "hook-name": HOOK_NAME,
                "ui-field-behaviour": UI_FIELD_BEHAVIOUR,
                "conn-fields": CONN_FIELDS,
            }
        ],
        "extra-links": ["ticketsync.links.ServiceNowRecordsLink"],
    }
