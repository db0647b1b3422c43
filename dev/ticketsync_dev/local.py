"""Running ticketsync on one machine: a project-local Airflow home, the emulator as a process, a real DAG run.

Used by ``make demo``, the end-to-end tests and the benchmarks, so all three run the DAG the same way a user does:
``airflow dags test`` in its own process, with the connections given as ``AIRFLOW_CONN_*`` JSON variables.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ticketsync_dev import warm_airflow

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "servicenow_ticket_sync"
BIN = Path(sys.executable).parent


@dataclass
class LocalAirflow:
    """An Airflow home with a SQLite metadata database, and the environment to run the project's DAG in it."""

    home: Path
    connections: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    dag_id: str = DAG_ID

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")}
        env.update({
            "AIRFLOW_HOME": str(self.home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
            "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "plugins"), env.get("PYTHONPATH")])),
            "TICKETSYNC_RETRY_DELAY_SECONDS": env.get("TICKETSYNC_RETRY_DELAY_SECONDS", "2"),
        })
        env.update({f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in self.connections.items()})
        env.update(self.extra_env)
        return env

    def migrate(self) -> None:
        """Create the metadata database once (a few seconds); later calls find it done."""
        self.home.mkdir(parents=True, exist_ok=True)
        stamp = self.home / ".migrated"
        if stamp.exists():
            return
        log = self.home / "migrate.log"
        with log.open("w") as out:
            subprocess.run([str(BIN / "airflow"), "db", "migrate"], env=self.env(), stdout=out, stderr=out, check=True)
        stamp.touch()

    def clone_from(self, template: Path) -> None:
        """Start from a copy of another home's migrated metadata database instead of migrating (milliseconds
        instead of tens of seconds); Airflow writes this home's own ``airflow.cfg`` on its first start."""
        self.home.mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(template / "airflow.db") as source, sqlite3.connect(self.home / "airflow.db") as copy:
            source.backup(copy)
        (self.home / ".migrated").touch()

    def dags_test_command(self, conf: dict[str, Any] | None = None) -> list[str]:
        command = [str(BIN / "airflow"), "dags", "test", self.dag_id]
        if conf:
            command += ["--conf", json.dumps(conf)]
        return command

    def start_dag_run(self, log: Path, conf: dict[str, Any] | None = None) -> subprocess.Popen[bytes]:
        """Start one real DAG run in its own process group (so a test can kill all of it)."""
        self.migrate()
        out = log.open("wb")
        return subprocess.Popen(
            self.dags_test_command(conf), env=self.env(), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def run_dag(self, log: Path, conf: dict[str, Any] | None = None, timeout: float = 900) -> int:
        """Run the DAG to the end; returns the exit code (0 when the run succeeded).

        With ``TICKETSYNC_WARM_AIRFLOW=1`` (the test suite) the run is forked from a warm Airflow process instead of
        started cold (``warm_airflow``: the same CLI, 15 s less start-up), when its environment allows."""
        if os.environ.get("TICKETSYNC_WARM_AIRFLOW") == "1":
            env = self.env()
            warm = warm_airflow.shared(env)
            if warm.can_run(env):
                self.migrate()
                return warm.run(self.dags_test_command(conf), env, log, timeout)
        process = self.start_dag_run(log, conf)
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            raise


def sqlite_connection(path: Path) -> str:
    return json.dumps({"conn_type": "sqlite", "host": str(path)})


def http_connection(port: int, password: str, *, user: str = "admin", timeout: float = 5.0) -> str:
    return json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http",
        "login": user, "password": password, "extra": {"timeout": timeout},
    })


class EmulatorProcess:
    """The emulator in its own process (``python -m ticketsync_dev.emulator``), controlled over its admin endpoints."""

    def __init__(self, workdir: Path, *args: str, password: str | None = None) -> None:
        self.password = password or secrets.token_urlsafe(16)
        self.workdir = workdir
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, port: int = 0) -> EmulatorProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        port_file = self.workdir / "emulator.port"
        port_file.unlink(missing_ok=True)
        env = dict(os.environ, TICKETSYNC_EMULATOR_PASSWORD=self.password)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "dev"), env.get("PYTHONPATH")]))
        log = (self.workdir / "emulator.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ticketsync_dev.emulator", "--port", str(port or self.port), "--port-file",
             str(port_file), *self.args],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not start; see {self.workdir / 'emulator.log'}")
            time.sleep(0.05)
        self.port = int(port_file.read_text().strip())
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connection(self, timeout: float = 5.0) -> str:
        return http_connection(self.port, self.password, timeout=timeout)

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        response = requests.put(f"{self.url}/_emulator/faults", json=changes, timeout=5)
        response.raise_for_status()
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/_emulator/stats", timeout=5).json())

    def requests(self) -> list[dict[str, Any]]:
        """The last API requests, oldest first: when each was answered (UNIX time), its method and status."""
        return list(requests.get(f"{self.url}/_emulator/requests", timeout=30).json()["result"])

    def records(self, table: str) -> list[dict[str, Any]]:
        payload = requests.get(f"{self.url}/_emulator/records/{table}", timeout=30).json()
        return list(payload["result"] if isinstance(payload, dict) else payload)

    def work(self, table: str, sys_id: str, **changes: str) -> dict[str, Any]:
        """An agent's change to a case (state, work_notes, comments; ``sys_updated_on`` to backdate it)."""
        response = requests.post(f"{self.url}/_emulator/work/{table}/{sys_id}", json=changes, timeout=5)
        response.raise_for_status()
        return dict(response.json()["result"])

    def delete(self, table: str, sys_id: str) -> None:
        """Delete a case, as an agent on the instance may."""
        requests.delete(f"{self.url}/_emulator/records/{table}/{sys_id}", timeout=5).raise_for_status()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
