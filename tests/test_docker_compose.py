"""docker-compose.yaml and the Dockerfile keep the promises docs/getting-started.md makes.

No Docker needed: the compose file is parsed with PyYAML (which applies the `<<`
merges) and its ${VAR:-default} references are resolved the way Compose does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
SOURCE_SCHEMA = (
    REPO / "plugins" / "ticketsync" / "source" / "migrations" / "0001_initial.postgresql.sql"
)

LONG_RUNNING_AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "flower",
)
AIRFLOW_SERVICES = (*LONG_RUNNING_AIRFLOW_SERVICES, "airflow-init")
OTHER_SERVICES = ("postgres", "redis", "source-db", "servicenow-emulator")

CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}

# The Compose forms this file may use: $$ (a literal $), ${VAR}, ${VAR:-default}
# (default when unset or empty) and ${VAR-default} (default when unset). As in
# Compose, a ${...} ends at its first "}", which is why a default must not be a JSON
# object. Any other use of $ is an error here.
_INTERPOLATION = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}"
    r"|(?P<other>))"
)


def interpolate(text: str, env: dict[str, str]) -> str:
    """Resolve Compose references in `text`; variables without a default must be set."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["other"] is not None:
            raise ValueError(
                f"unsupported interpolation at {text[match.start() :][:30]!r}"
            )
        name, op = match["name"], match["op"]
        if name in env and (env[name] or op != ":-"):
            return env[name]
        if op is None:
            raise KeyError(f"${{{name}}} has no default and is not set")
        return match["default"]

    return _INTERPOLATION.sub(substitute, text)


def interpolate_tree(node: Any, env: dict[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(item, env) for item in node]
    return node


def load_compose(env: dict[str, str] | None = None) -> dict[str, Any]:
    return interpolate_tree(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Compose sees it with no .env and no variables set."""
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of each volume, in short ("src:dst[:mode]") or long syntax."""
    result = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            result.append((volume.get("source", ""), volume["target"]))
        else:
            source, target, *_mode = volume.split(":")
            result.append((source, target))
    return result


def is_named_volume(source: str) -> bool:
    return bool(source) and not source.startswith((".", "/", "~"))


def argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else list(value)


def healthcheck_command(service: dict[str, Any]) -> str:
    return " ".join(argv(service["healthcheck"]["test"]))


def connection(service: dict[str, Any], variable: str) -> dict[str, Any]:
    return json.loads(environment(service)[variable])


# --- the helper itself ----------------------------------------------------------------


def test_interpolate_follows_compose() -> None:
    env = {"SET": "value", "EMPTY": ""}
    template = "${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} $${HOSTNAME}"
    assert interpolate(template, env) == "value d  d ${HOSTNAME}"
    # Compose ends ${...} at the first "}": a JSON default breaks once VAR is set.
    assert interpolate('${CONN:-{"a": 1}}', {"CONN": '{"b": 2}'}) == '{"b": 2}}'
    with pytest.raises(KeyError):
        interpolate("${REQUIRED}", {})
    with pytest.raises(ValueError, match="unsupported interpolation"):
        interpolate("$UNBRACED", {})


# --- services -------------------------------------------------------------------------


def test_all_promised_services_are_defined(services: dict[str, Any]) -> None:
    missing = {*AIRFLOW_SERVICES, *OTHER_SERVICES} - services.keys()
    assert not missing, f"services missing from docker-compose.yaml: {sorted(missing)}"


def test_optional_services_sit_behind_their_profiles(services: dict[str, Any]) -> None:
    assert services["servicenow-emulator"].get("profiles") == ["emulator"]
    assert services["flower"].get("profiles") == ["flower"]
    optional = {"servicenow-emulator", "flower"}
    always_on = [n for n in (*AIRFLOW_SERVICES, *OTHER_SERVICES) if n not in optional]
    profiled = [name for name in always_on if services[name].get("profiles")]
    assert not profiled, f"these must start without a profile: {profiled}"


def test_every_service_but_airflow_init_has_a_healthcheck(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        if name == "airflow-init":
            continue
        check = service.get("healthcheck") or {}
        assert not check.get("disable"), f"{name}: healthcheck disabled"
        assert argv(check.get("test")) not in ([], ["NONE"]), f"{name}: no healthcheck"


def test_airflow_services_run_the_project_image(services: dict[str, Any]) -> None:
    images = {services[name].get("image") for name in AIRFLOW_SERVICES}
    assert len(images) == 1, f"Airflow services disagree on the image: {images}"
    for name in AIRFLOW_SERVICES:
        assert services[name].get("build") == ".", (
            f"{name} is not built from the Dockerfile"
        )


# --- Airflow configuration ------------------------------------------------------------


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_celery_executor_with_redis_broker_and_postgres_backends(
    services: dict[str, Any], name: str
) -> None:
    env = environment(services[name])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"

    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port) == ("redis", "redis", 6379)

    metadata = urlsplit(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    backend = urlsplit(env["AIRFLOW__CELERY__RESULT_BACKEND"])
    assert metadata.scheme.startswith("postgresql")
    assert metadata.hostname == "postgres"
    assert backend.scheme.startswith("db+postgresql")
    assert backend.hostname == "postgres"
    postgres_env = environment(services["postgres"])
    for url in (metadata, backend):
        assert url.username == postgres_env["POSTGRES_USER"]
        assert url.password == postgres_env["POSTGRES_PASSWORD"]
        assert url.path == "/" + postgres_env["POSTGRES_DB"]


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_settings(services: dict[str, Any], name: str) -> None:
    env = environment(services[name])
    execution_api = urlsplit(env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"])
    assert (execution_api.hostname, execution_api.port, execution_api.path) == (
        "airflow-apiserver",
        8080,
        "/execution/",
    )
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"].lower() == "false"
    assert env["AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION"].lower() == "true"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith(".FabAuthManager")
    assert env["AIRFLOW__API_AUTH__JWT_SECRET"], (
        "components need one shared, non-empty JWT secret"
    )


def test_api_server_serves_the_execution_api_port(services: dict[str, Any]) -> None:
    apiserver = services["airflow-apiserver"]
    assert argv(apiserver["command"]) == ["api-server"]
    assert "8080:8080" in apiserver.get("ports", [])


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_dags_and_plugins_are_mounted_from_the_repo(
    services: dict[str, Any], name: str
) -> None:
    by_target = {target: source for source, target in mounts(services[name])}
    for target, package_file in (
        ("/opt/airflow/dags", None),
        ("/opt/airflow/plugins", "ticketsync/__init__.py"),
    ):
        assert target in by_target, f"{name}: nothing mounted at {target}"
        host = REPO / by_target[target]
        assert host.is_dir(), (
            f"{name}: {by_target[target]} is not a directory in the repo"
        )
        if package_file:
            assert (host / package_file).is_file(), (
                f"{name}: {host} lacks {package_file}"
            )


# --- connections ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "conn_type", "host", "port"),
    [
        ("AIRFLOW_CONN_TICKET_SOURCE", "postgres", "source-db", 5432),
        ("AIRFLOW_CONN_SERVICENOW_DEFAULT", "http", "servicenow-emulator", 8765),
    ],
)
@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_connections_parse_as_json_and_name_a_service(
    services: dict[str, Any],
    name: str,
    variable: str,
    conn_type: str,
    host: str,
    port: int,
) -> None:
    conn = connection(services[name], variable)
    assert conn["conn_type"] == conn_type
    assert conn["host"] == host
    assert host in services
    assert conn["port"] == port


def test_ticket_source_matches_source_db(services: dict[str, Any]) -> None:
    conn = connection(services["airflow-worker"], "AIRFLOW_CONN_TICKET_SOURCE")
    db = environment(services["source-db"])
    assert (conn["login"], conn["password"], conn["schema"]) == (
        db["POSTGRES_USER"],
        db["POSTGRES_PASSWORD"],
        db["POSTGRES_DB"],
    )


def test_servicenow_default_matches_the_emulator(services: dict[str, Any]) -> None:
    conn = connection(services["airflow-worker"], "AIRFLOW_CONN_SERVICENOW_DEFAULT")
    emulator = services["servicenow-emulator"]
    command = argv(emulator["command"])
    assert conn["schema"] == "http"
    assert conn["port"] == int(command[command.index("--port") + 1])
    assert conn["password"] == environment(emulator)["TICKETSYNC_EMULATOR_PASSWORD"]
    # Plain http to a non-loopback host is refused by the hook unless the connection allows it explicitly.
    assert conn["extra"]["allow_insecure_http"] == "true"


def test_the_hook_accepts_the_connections_compose_builds(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ticketsync.hooks.servicenow import ServiceNowHook

    real = load_compose({"SERVICENOW_SCHEME": "https", "SERVICENOW_HOST": "acme.service-now.com",
                         "SERVICENOW_PORT": "443", "SERVICENOW_ALLOW_INSECURE_HTTP": "false"})
    for name, worker in (("emulator", services["airflow-worker"]), ("real", real["services"]["airflow-worker"])):
        raw = environment(worker)["AIRFLOW_CONN_SERVICENOW_DEFAULT"]
        monkeypatch.setenv(f"AIRFLOW_CONN_SN_COMPOSE_{name.upper()}", raw)
        hook = ServiceNowHook(f"sn_compose_{name}")
        hook.get_conn()
        assert hook.base_url in {"http://servicenow-emulator:8765", "https://acme.service-now.com:443"}


def test_servicenow_default_can_point_at_a_real_instance() -> None:
    env = {
        "SERVICENOW_SCHEME": "https",
        "SERVICENOW_HOST": "acme.service-now.com",
        "SERVICENOW_PORT": "443",
        "SERVICENOW_USER": "integration",
        "SERVICENOW_PASSWORD": "p{a}ss",
        "SERVICENOW_ALLOW_INSECURE_HTTP": "false",
    }
    worker = load_compose(env)["services"]["airflow-worker"]
    conn = connection(worker, "AIRFLOW_CONN_SERVICENOW_DEFAULT")
    assert conn == {
        "conn_type": "http",
        "schema": "https",
        "host": "acme.service-now.com",
        "port": 443,
        "login": "integration",
        "password": "p{a}ss",
        "extra": {"allow_insecure_http": "false", "timeout": 30, "verify": "true", "auth_type": "basic",
                  "client_id": "", "client_secret": ""},
    }


def test_servicenow_default_can_use_oauth(monkeypatch: pytest.MonkeyPatch) -> None:
    from ticketsync.hooks.servicenow import ServiceNowHook

    env = {"SERVICENOW_SCHEME": "https", "SERVICENOW_HOST": "acme.service-now.com", "SERVICENOW_PORT": "443",
           "SERVICENOW_AUTH_TYPE": "oauth_client_credentials", "SERVICENOW_CLIENT_ID": "ticketsync",
           "SERVICENOW_CLIENT_SECRET": "cl-s3cret", "SERVICENOW_ALLOW_INSECURE_HTTP": "false"}
    services = load_compose(env)["services"]
    conn = connection(services["airflow-worker"], "AIRFLOW_CONN_SERVICENOW_DEFAULT")
    assert {k: conn["extra"][k] for k in ("auth_type", "client_id", "client_secret")} == {
        "auth_type": "oauth_client_credentials", "client_id": "ticketsync", "client_secret": "cl-s3cret"}
    monkeypatch.setenv("AIRFLOW_CONN_SN_COMPOSE_OAUTH", environment(services["airflow-worker"])[
        "AIRFLOW_CONN_SERVICENOW_DEFAULT"])
    hook = ServiceNowHook("sn_compose_oauth")
    assert hook.get_conn().auth is None  # the bearer token replaces basic auth


def test_one_variable_sets_the_source_db_password_on_both_sides() -> None:
    services = load_compose({"SOURCE_DB_PASSWORD": "changed"})["services"]
    conn = connection(services["airflow-worker"], "AIRFLOW_CONN_TICKET_SOURCE")
    assert (
        conn["password"]
        == environment(services["source-db"])["POSTGRES_PASSWORD"]
        == "changed"
    )


def variables(node: Any) -> set[str]:
    """Names of the variables the parsed file references (so not in its comments)."""
    if isinstance(node, str):
        return {m["name"] for m in _INTERPOLATION.finditer(node) if m["name"]}
    if isinstance(node, dict):
        return set().union(*map(variables, node.values()))
    if isinstance(node, list):
        return set().union(*map(variables, node))
    return set()


def test_every_variable_has_a_default_and_is_documented() -> None:
    # Loading with no variables set raises for a variable without a default.
    load_compose()
    names = variables(yaml.safe_load(COMPOSE_FILE.read_text()))
    assert "SERVICENOW_HOST" in names
    example = (REPO / ".env.example").read_text()
    undocumented = sorted(
        n for n in names if not re.search(rf"^#?\s*{n}=", example, re.MULTILINE)
    )
    assert not undocumented, f"not in .env.example: {undocumented}"


# --- emulator and source database -----------------------------------------------------


def test_emulator_runs_the_package_emulator_in_the_same_image(
    services: dict[str, Any],
) -> None:
    emulator = services["servicenow-emulator"]
    command = argv(emulator.get("entrypoint")) + argv(emulator["command"])
    assert command[:3] == ["python", "-m", "ticketsync_dev.emulator"]
    assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104 - inside its container
    assert emulator.get("image") == services["airflow-worker"].get("image")
    # The emulator is development tooling: it runs from dev/, and the deployed plugins folder is not mounted.
    assert ("./dev", "/opt/ticketsync-dev") in mounts(emulator)
    assert environment(emulator)["PYTHONPATH"] == "/opt/ticketsync-dev"
    assert not any(source == "./plugins" for source, _ in mounts(emulator))
    module = REPO / "dev" / command[2].replace(".", "/") / "__main__.py"
    assert module.is_file(), module

    port = command[command.index("--port") + 1]
    check = healthcheck_command(emulator)
    assert f":{port}/_emulator/health" in check
    assert check.split()[1] == "python", (
        "the emulator's healthcheck must not rely on curl"
    )


def test_source_db_is_initialised_with_the_shipped_schema(
    services: dict[str, Any],
) -> None:
    source_db = services["source-db"]
    env = environment(source_db)
    assert env["POSTGRES_USER"] == env["POSTGRES_DB"] == "ticketsync"
    assert source_db["image"].startswith("postgres:")

    init = [
        (s, t)
        for s, t in mounts(source_db)
        if t.startswith("/docker-entrypoint-initdb.d/")
    ]
    assert init, "source-db mounts nothing into /docker-entrypoint-initdb.d"
    for source, target in init:
        assert (REPO / source).is_file(), f"{source} does not exist in the repo"
        assert target.endswith((".sql", ".sh")), (
            f"the postgres image would skip {target}"
        )
    assert SOURCE_SCHEMA.resolve() in {(REPO / s).resolve() for s, _ in init}

    data = [s for s, t in mounts(source_db) if t == "/var/lib/postgresql/data"]
    assert len(data) == 1
    assert is_named_volume(data[0])
    assert data[0] not in {s for s, _ in mounts(services["postgres"])}, (
        "shares Airflow's volume"
    )
    # During init the image serves the socket only; a TCP check waits for the schema.
    assert "-h" in argv(source_db["healthcheck"]["test"])


# --- wiring ---------------------------------------------------------------------------


def test_depends_on_names_defined_services_with_a_condition(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), (
            f"{name}: depends_on list has no conditions"
        )
        for dependency, spec in depends_on.items():
            assert dependency in services, f"{name} depends on undefined {dependency}"
            condition = (spec or {}).get("condition")
            assert condition in CONDITIONS, (
                f"{name} -> {dependency}: condition {condition!r}"
            )
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{dependency} can never be healthy"
                )
            if not service.get("profiles"):
                assert not services[dependency].get("profiles"), (
                    f"{name} starts by default but needs {dependency}, "
                    "which is behind a profile"
                )


@pytest.mark.parametrize("name", LONG_RUNNING_AIRFLOW_SERVICES)
def test_airflow_services_wait_for_their_backends(
    services: dict[str, Any], name: str
) -> None:
    conditions = {
        dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()
    }
    expected = {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "source-db": "service_healthy",
        "airflow-init": "service_completed_successfully",
    }
    assert conditions.items() >= expected.items(), f"{name}: {conditions}"


def test_worker_waits_for_the_execution_api(services: dict[str, Any]) -> None:
    assert services["airflow-worker"]["depends_on"]["airflow-apiserver"] == {
        "condition": "service_healthy"
    }


def test_named_volumes_are_declared(compose: dict[str, Any]) -> None:
    used = {
        source
        for service in compose["services"].values()
        for source, _ in mounts(service)
        if is_named_volume(source)
    }
    declared = set(compose.get("volumes") or {})
    assert used, "expected the databases to keep their data in named volumes"
    assert used <= declared, f"undeclared named volumes: {sorted(used - declared)}"


# --- Dockerfile -----------------------------------------------------------------------


def test_dockerfile_builds_on_the_pinned_airflow(services: dict[str, Any]) -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(
        r"^FROM\s+apache/airflow:(?P<version>[^-\s]+)-python3\.\d+\s*$",
        dockerfile,
        re.MULTILINE,
    )
    pin = re.search(
        r"^apache-airflow==(?P<version>\S+)\s*$",
        (REPO / "requirements.txt").read_text(),
        re.MULTILINE,
    )
    assert base
    assert pin
    assert base["version"] == pin["version"]

    install = re.search(
        r"^RUN pip install .*?(?<!\\)$", dockerfile, re.MULTILINE | re.DOTALL
    )
    assert install
    assert "-r " in install[0]
    assert "requirements.txt" in install[0]
    assert "-c " in install[0]
    assert "constraints.txt" in install[0]
    assert re.search(
        r"^ENV PYTHONPATH=\"?/opt/airflow/plugins\b", dockerfile, re.MULTILINE
    )

    # The build checks that the auth manager the compose file selects still imports.
    auth_manager = environment(services["airflow-apiserver"])[
        "AIRFLOW__CORE__AUTH_MANAGER"
    ]
    module, _, cls = auth_manager.rpartition(".")
    assert f"from {module} import {cls}" in dockerfile
