"""The deployed package never depends on development tooling or tests.

``plugins/`` + ``dags/`` + ``requirements.txt`` is a complete deployment: a worker has no ``dev/`` and no
``tests/``. Two checks: every ``import`` statement in the runtime code (read from the source, so lazy imports
inside functions count too), and a fresh interpreter that imports every runtime module and the DAG file with only
``plugins`` on its path, then confirms no development module was loaded.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RUNTIME = [REPO / "plugins", REPO / "dags"]
FORBIDDEN = ("ticketsync_dev", "tests", "bench", "scripts")


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def runtime_files() -> list[Path]:
    return sorted(path for root in RUNTIME for path in root.rglob("*.py"))


def test_no_runtime_module_imports_development_code() -> None:
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for path in runtime_files()
        for name in imported_modules(path)
        if name.split(".")[0] in FORBIDDEN
    }
    assert not offenders, sorted(offenders)


def test_the_boundary_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The check above must be able to fail: an import inside a function is found."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from ticketsync_dev.emulator import start_emulator\n    return start_emulator\n")
    assert "ticketsync_dev.emulator" in imported_modules(sample)


def test_runtime_imports_with_plugins_alone_on_the_path(tmp_path: Path) -> None:
    """Import every runtime module and parse the DAG file in an interpreter that has no dev/ or tests/."""
    modules = sorted(
        ".".join(path.relative_to(REPO / "plugins").with_suffix("").parts).removesuffix(".__init__")
        for path in (REPO / "plugins" / "ticketsync").rglob("*.py")
    )
    script = f"""
import importlib, json, runpy, sys
sys.path[:] = [p for p in sys.path if p not in ('', {str(REPO)!r})]
sys.path.insert(0, {str(REPO / "plugins")!r})
for name in {modules!r}:
    importlib.import_module(name)
for dag_file in {[str(p) for p in (REPO / "dags").glob("*.py")]!r}:
    runpy.run_path(dag_file)
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, cwd="/", timeout=300,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AIRFLOW_HOME": str(tmp_path / "airflow"),
             "AIRFLOW__CORE__UNIT_TEST_MODE": "True"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []
