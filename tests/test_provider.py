"""ticketsync as an Airflow provider: the provider info Airflow validates, the ``servicenow`` connection form, and
the wheel ``pip install .`` builds, installed apart and read by Airflow's ProvidersManager and hook_meta API."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import zipfile
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService

from ticketsync.get_provider_info import CONN_FIELDS, get_provider_info
from ticketsync.hooks.servicenow import DEFAULT_TIMEOUT, ServiceNowExtras, ServiceNowHook
from ticketsync_dev.emulator import RunningEmulator

REPO = Path(__file__).resolve().parents[1]
FORM_FIELDS = ["auth_type", "client_id", "client_secret", "verify", "ca_bundle", "cert", "rate_limit",
               "connect_timeout", "read_timeout", "allow_insecure_http"]


def airflow_schema(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(resources.files("airflow").joinpath(name).read_text())
    return schema


def test_the_provider_info_validates_against_airflows_schemas() -> None:
    info = get_provider_info()
    jsonschema.validate(info, airflow_schema("provider_info.schema.json"))  # what ProvidersManager checks
    # the stricter provider.yaml schema describes the shape of conn-fields and ui-field-behaviour
    yaml_schema = airflow_schema("provider.yaml.schema.json")
    jsonschema.validate(info["connection-types"], yaml_schema["properties"]["connection-types"])
    (connection_type,) = info["connection-types"]
    assert connection_type["connection-type"] == ServiceNowHook.conn_type == "servicenow"
    assert connection_type["hook-class-name"] == "ticketsync.hooks.servicenow.ServiceNowHook"
    assert info["package-name"] == "ticketsync"
    assert list(connection_type["conn-fields"]) == FORM_FIELDS


def test_every_operator_and_trigger_module_is_listed() -> None:
    """Each module of ticketsync.operators that defines an operator (and each trigger module) is in the provider
    info, so Airflow's provider listing shows all of them."""
    import importlib
    import pkgutil

    from airflow.sdk import BaseOperator
    from airflow.triggers.base import BaseTrigger

    def defining(package: str, base: type) -> set[str]:
        found = set()
        for module_info in pkgutil.iter_modules(importlib.import_module(package).__path__):
            module = importlib.import_module(f"{package}.{module_info.name}")
            if any(isinstance(value, type) and issubclass(value, base) and value.__module__ == module.__name__
                   and ("execute" in vars(value) or "run" in vars(value)) for value in vars(module).values()):
                found.add(module.__name__)
        return found

    info = get_provider_info()
    assert defining("ticketsync.operators", BaseOperator) == set(info["operators"][0]["python-modules"])
    assert defining("ticketsync.triggers", BaseTrigger) == set(info["triggers"][0]["python-modules"])


def test_a_schema_violation_would_be_caught() -> None:
    """The check above can fail: a connection type without its hook class is refused by Airflow's schema."""
    info = get_provider_info()
    del info["connection-types"][0]["hook-class-name"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(info, airflow_schema("provider_info.schema.json"))


def test_every_form_field_is_an_extra_the_hook_reads_with_the_same_default() -> None:
    assert set(CONN_FIELDS) <= set(ServiceNowExtras.model_fields)
    defaults = {name: spec["schema"]["default"] for name, spec in CONN_FIELDS.items() if "default" in spec["schema"]}
    from_form = ServiceNowExtras.from_extra("sn_form", defaults)
    assert from_form == ServiceNowExtras.from_extra("sn_form", {}).model_copy(update=from_form.model_dump(
        include={"connect_timeout", "read_timeout"}))
    assert from_form.timeouts == DEFAULT_TIMEOUT
    assert (from_form.auth_type, from_form.tls_verify, from_form.allow_insecure_http) == ("basic", True, False)
    # what the form stores when a field is left empty is a default too
    assert ServiceNowExtras.from_extra("sn_form", dict.fromkeys(CONN_FIELDS)) == ServiceNowExtras()


def test_the_hooks_field_behaviour_is_the_declared_one() -> None:
    behaviour = ServiceNowHook.get_ui_field_behaviour()
    jsonschema.validate(behaviour, airflow_schema("customized_form_field_behaviours.schema.json"))
    assert behaviour["hidden_fields"] == ["schema"]
    assert behaviour["relabeling"]["host"] == "Instance host"


def test_the_hooks_form_widgets_are_built_from_the_declaration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forms that still ask the hook (before Airflow 3.2) get the same fields. WTForms is not installed here, so
    the stand-ins are the ones Airflow's own hook_meta service uses when it is missing."""
    fake = {
        "wtforms": {"BooleanField": HookMetaService.MockBooleanField,
                    "PasswordField": HookMetaService.MockPasswordField,
                    "StringField": HookMetaService.MockStringField},
        "wtforms.validators": {"Optional": HookMetaService.MockOptional, "any_of": HookMetaService.MockEnum},
        "flask_babel": {"lazy_gettext": str},
        "flask_appbuilder": {},
        "flask_appbuilder.fieldwidgets": {"BS3PasswordFieldWidget": HookMetaService.MockAnyWidget,
                                          "BS3TextFieldWidget": HookMetaService.MockAnyWidget},
    }
    for name, attributes in fake.items():
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        monkeypatch.setitem(sys.modules, name, module)
    widgets = ServiceNowHook.get_connection_form_widgets()
    assert list(widgets) == FORM_FIELDS
    params = {name: widget.param.dump() for name, widget in widgets.items()}
    assert params["client_secret"]["schema"]["format"] == "password"
    assert params["auth_type"]["schema"]["enum"] == ["basic", "oauth_client_credentials", "oauth_password"]
    assert params["verify"]["schema"]["type"] == ["boolean", "null"]
    assert params["verify"]["value"] is True
    for name, spec in CONN_FIELDS.items():
        assert params[name]["schema"]["title"] == spec["label"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of the repository, built as ``pip wheel .`` builds it (the build backend comes from the venv)."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out),
         str(REPO)], check=True, timeout=300,
    )
    (built,) = out.glob("ticketsync-*.whl")
    return built


@pytest.mark.slow
def test_the_wheel_holds_the_runtime_package_only(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names}
    assert tops == {"ticketsync", "ticketsync-0.1.0.dist-info"}, tops
    # exactly the files of plugins/ticketsync (code, migrations' SQL), nothing compiled, nothing else
    package = REPO / "plugins"
    expected = {
        str(path.relative_to(package)) for path in (package / "ticketsync").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    assert {name for name in names if name.startswith("ticketsync/")} == expected
    assert "ticketsync/source/migrations/0001_initial.postgresql.sql" in names
    for dialect in ("postgresql", "mysql", "sqlite"):  # the schema ships as migrations, loaded as package resources
        assert f"ticketsync/source/migrations/0001_initial.{dialect}.sql" in names
    entry_points = zipfile.ZipFile(wheel).read("ticketsync-0.1.0.dist-info/entry_points.txt").decode()
    assert "[apache_airflow_provider]\nprovider_info = ticketsync.get_provider_info:get_provider_info" in entry_points


AIRFLOW_READS_THE_PROVIDER = """
import json, os, sys
from airflow.api_fastapi.core_api.services.ui.connections import HookMetaService
from airflow.models.connection import Connection
from airflow.providers_manager import ProvidersManager
import ticketsync

pm = ProvidersManager()
provider = pm.providers["ticketsync"]
hook = pm.hooks["servicenow"]
(meta,) = [m for m in HookMetaService.hook_meta_data() if m.connection_type == "servicenow"]
button = Connection(conn_id="sn_button", conn_type="servicenow").test_connection()
os.environ["AIRFLOW_CONN_SN_BUTTON"] = os.environ["AIRFLOW_CONN_SN_BUTTON_WRONG"]
wrong = Connection(conn_id="sn_button", conn_type="servicenow").test_connection()
print(json.dumps({
    "imported_from": ticketsync.__file__,
    "version": provider.version,
    "hook": [hook.hook_class_name, hook.hook_name, hook.connection_id_attribute_name, hook.connection_testable],
    "hook_meta": meta.model_dump(mode="json"),
    "links": sorted(pm.extra_links_class_names),
    "button": button, "wrong": wrong,
}))
"""


@pytest.mark.slow
@pytest.mark.integration
def test_airflow_finds_the_installed_provider_and_its_connection_form(
    wheel: Path, tmp_path: Path, emulator: RunningEmulator
) -> None:
    """Install the wheel apart (no plugins/ on the path), then ask Airflow what a UI and the Test button ask."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", "--target",
                    str(site), str(wheel)], check=True, timeout=300)
    connection = {"conn_type": "servicenow", "host": "127.0.0.1", "port": emulator.port, "schema": "http",
                  "login": "admin", "password": "s3cret-emulator"}
    env = {
        "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site), "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "AIRFLOW__CORE__UNIT_TEST_MODE": "false",
        "AIRFLOW_CONN_SN_BUTTON": json.dumps(connection),
        "AIRFLOW_CONN_SN_BUTTON_WRONG": json.dumps({**connection, "password": "wrong"}),
    }
    done = subprocess.run([sys.executable, "-c", AIRFLOW_READS_THE_PROVIDER], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["imported_from"].startswith(str(site))  # the installed package, not plugins/
    assert seen["version"] == "0.1.0"
    assert seen["hook"] == ["ticketsync.hooks.servicenow.ServiceNowHook", "ServiceNow", "servicenow_conn_id", True]
    meta = seen["hook_meta"]
    assert meta["hook_name"] == "ServiceNow"
    assert list(meta["extra_fields"]) == FORM_FIELDS
    assert meta["extra_fields"]["client_secret"]["schema"]["format"] == "password"
    assert meta["extra_fields"]["auth_type"]["schema"]["enum"] == ["basic", "oauth_client_credentials",
                                                                    "oauth_password"]
    assert meta["standard_fields"]["url_schema"]["hidden"] is True
    assert meta["standard_fields"]["host"]["title"] == "Instance host"
    assert "ticketsync.links.ServiceNowRecordsLink" in seen["links"]
    assert seen["button"][0] is True, seen["button"]
    assert seen["wrong"][0] is False
    assert seen["wrong"][1].startswith("Authentication failed: 401")
    assert "ticketsync" not in "".join(line for line in done.stderr.splitlines() if "WARNING" in line)
