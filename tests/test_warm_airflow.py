"""The warm Airflow the tests' DAG runs are forked from (ticketsync_dev.warm_airflow): each run is the real CLI with
its own environment, Airflow home and metadata database, its exit code and log are the run's, a run past its timeout
is killed, and a run whose import path or folders differ from the warm process's is refused (it runs cold)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ticketsync_dev.local import LocalAirflow
from ticketsync_dev.warm_airflow import WarmAirflow

pytestmark = pytest.mark.integration

DAG = '''
import json, os, time
import pendulum
from airflow.sdk import dag, task
from airflow.configuration import conf

@dag(schedule=None, start_date=pendulum.datetime(2024, 1, 1), catchup=False)
def warm_probe():
    @task
    def report():
        if os.environ.get("PROBE_SLEEP"):
            time.sleep(float(os.environ["PROBE_SLEEP"]))
        if os.environ.get("PROBE_FAIL"):
            raise RuntimeError("the probe was told to fail")
        with open(os.environ["PROBE_OUT"], "w") as out:
            json.dump({"mark": os.environ["PROBE_MARK"], "home": os.environ["AIRFLOW_HOME"],
                       "db": conf.get("database", "sql_alchemy_conn")}, out)
    report()

warm_probe()
'''


@pytest.fixture(scope="module")
def dags(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("warm-dags")
    (folder / "warm_probe.py").write_text(DAG)
    return folder


def airflow_in(home: Path, dags: Path, **env: str) -> LocalAirflow:
    return LocalAirflow(home=home, dag_id="warm_probe", extra_env={"AIRFLOW__CORE__DAGS_FOLDER": str(dags), **env})


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, dags: Path) -> Path:
    home = tmp_path_factory.mktemp("warm-template")
    airflow_in(home, dags).migrate()
    return home


@pytest.fixture(scope="module")
def warm(tmp_path_factory: pytest.TempPathFactory, dags: Path) -> Iterator[WarmAirflow]:
    env = airflow_in(tmp_path_factory.mktemp("warm-first"), dags).env()
    warm = WarmAirflow(env, tmp_path_factory.mktemp("warm-process"))
    yield warm
    warm.close()


def dag_runs(home: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(home / "airflow.db") as db:
        return list(db.execute("SELECT dag_id, state FROM dag_run"))


def test_each_run_has_its_own_environment_home_and_metadata_database(
    warm: WarmAirflow, dags: Path, template: Path, tmp_path: Path
) -> None:
    seen = []
    for mark in ("first", "second"):
        home = tmp_path / mark
        af = airflow_in(home, dags, PROBE_MARK=mark, PROBE_OUT=str(tmp_path / f"{mark}.json"))
        af.clone_from(template)
        env = af.env()
        assert warm.can_run(env)
        log = tmp_path / f"{mark}.log"
        assert warm.run(af.dags_test_command(), env, log, timeout=300) == 0, log.read_text()[-3000:]
        assert "warm_probe" in log.read_text()  # the run's own output went to its own log
        seen.append(json.loads((tmp_path / f"{mark}.json").read_text()))
        assert dag_runs(home) == [("warm_probe", "success")]
        # Nothing of the warm process's own configuration lands in the run's home (a cold run there would read it).
        assert not (home / "airflow.cfg").exists()
    assert seen == [
        {"mark": mark, "home": str(tmp_path / mark), "db": f"sqlite:///{tmp_path / mark / 'airflow.db'}"}
        for mark in ("first", "second")
    ]
    assert dag_runs(template) == []  # the warm process's earlier runs wrote nothing into another home


def test_a_failed_run_gives_its_exit_code_and_a_run_past_its_timeout_is_killed(
    warm: WarmAirflow, dags: Path, template: Path, tmp_path: Path
) -> None:
    failing = airflow_in(tmp_path / "failing", dags, PROBE_MARK="x", PROBE_OUT=str(tmp_path / "x.json"), PROBE_FAIL="1")
    failing.clone_from(template)
    log = tmp_path / "failing.log"
    assert warm.run(failing.dags_test_command(), failing.env(), log, timeout=300) != 0
    assert "the probe was told to fail" in log.read_text()

    slow = airflow_in(tmp_path / "slow", dags, PROBE_MARK="y", PROBE_OUT=str(tmp_path / "y.json"), PROBE_SLEEP="600")
    slow.clone_from(template)
    with pytest.raises(subprocess.TimeoutExpired):
        warm.run(slow.dags_test_command(), slow.env(), tmp_path / "slow.log", timeout=40)
    assert not (tmp_path / "y.json").exists()
    # The warm process is still there for the next run.
    assert warm.can_run(airflow_in(tmp_path / "next", dags).env())


def test_a_run_with_other_folders_or_import_path_is_not_forked(warm: WarmAirflow, dags: Path, tmp_path: Path) -> None:
    assert warm.can_run(airflow_in(tmp_path, dags).env())
    assert not warm.can_run(airflow_in(tmp_path, tmp_path).env())
    assert not warm.can_run(airflow_in(tmp_path, dags, AIRFLOW__CORE__PLUGINS_FOLDER=str(tmp_path)).env())
    assert not warm.can_run(airflow_in(tmp_path, dags, PYTHONPATH=str(tmp_path)).env())
