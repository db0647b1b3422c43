"""The Airflow UI on one machine: what ``make ui`` runs and the browser test drives.

The same components ``airflow standalone`` runs (api-server, scheduler, dag-processor, triggerer, LocalExecutor,
SimpleAuthManager, SQLite metadata in a project-local ``AIRFLOW_HOME``), started one by one so that

* everything listens on 127.0.0.1 only: ``airflow standalone`` starts the scheduler and the triggerer with their
  log servers, which bind every interface on fixed ports (8793, 8794) with no setting to change the address; here
  they run with ``--skip-serve-logs`` (the api-server reads the task logs from the shared log folder instead);
* the api-server port can be any free port, with ``[api] base_url`` and ``[core] execution_api_server_url`` set to
  match (setting only the port breaks task execution: the task supervisors would call the default 8080);
* each component has its own process group and log file, and :meth:`LocalStack.stop` ends every process it started,
  including task processes the supervisors put in groups of their own.

Beside Airflow: the ServiceNow emulator as a process, and an embedded SQLite source seeded with sample requests; the
connections reach Airflow as ``AIRFLOW_CONN_*`` variables (:meth:`ticketsync_dev.local.LocalAirflow.env`).

With ``provider`` on (the default), the repository's wheel is built and installed apart, into
``home/ticketsync/provider/`` (``pip install --no-deps --target``, seconds), and that directory goes first on every
component's ``PYTHONPATH``: Airflow finds the ``apache_airflow_provider`` entry point, so the UI offers the
``servicenow`` connection type with its form, and the tasks import the installed ``ticketsync`` as a deployment
would (``plugins/`` stays the plugins folder: its Airflow plugin imports the same installed package). The wheel is
rebuilt at every start, so edits under ``plugins/ticketsync`` show after a restart. ``[core] test_connection`` is
``Enabled`` here so the form's Test button works; a real deployment decides that setting itself (Airflow disables
the button by default, since a test runs the hook's code in the API server).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from ticketsync.source import Dialect, SourceTable
from ticketsync_dev.local import BIN, DAG_ID, REPO, EmulatorProcess, LocalAirflow, sqlite_connection
from ticketsync_dev.samples import keyed_requests, sample_requests

ADMIN_USER = "admin"
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
COMPONENTS: dict[str, tuple[str, ...]] = {
    "api-server": ("api-server",),  # host, port and workers come from the environment
    "scheduler": ("scheduler", "--skip-serve-logs"),
    "dag-processor": ("dag-processor",),
    "triggerer": ("triggerer", "--skip-serve-logs"),
}
HEALTHY_COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")


class StackError(RuntimeError):
    """A component did not start, or stopped on its own; the message names its log file."""


def free_port() -> int:
    """A port free on 127.0.0.1 now (the OS picks it; a tiny race remains until the server binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalStack:
    """Airflow's UI, scheduler and friends on loopback, the emulator, and a seeded SQLite source, under ``home``.

    ``home`` is ``AIRFLOW_HOME`` (``.airflow/`` for ``make ui``); the source, the emulator and the component logs
    live in ``home/ticketsync/``. The DAG's schedule is off unless ``schedule`` is set: runs start from the UI.
    """

    home: Path
    api_port: int = 0
    rows: int = 50
    invalid_every: int = 10
    keyed_rows: int = 0  # requests naming consumer, account and group by business key (every 5th key unusable)
    schedule: bool = False
    emulator_args: tuple[str, ...] = ("--latency-ms", "20")
    connections: dict[str, str] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    provider: bool = True
    emulator: EmulatorProcess = field(init=False)
    processes: dict[str, subprocess.Popen[bytes]] = field(init=False, default_factory=dict)
    _token: str | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.home = self.home.resolve()
        self.emulator = EmulatorProcess(self.work)

    # --- where things are -------------------------------------------------------------------------------------
    @property
    def work(self) -> Path:
        return self.home / "ticketsync"

    @property
    def source_path(self) -> Path:
        return self.work / "source.db"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def password_file(self) -> Path:
        """Where the SimpleAuthManager keeps the generated admin password (written when the api-server starts)."""
        return self.home / "simple_auth_manager_passwords.json.generated"

    def password(self, user: str = ADMIN_USER) -> str:
        return str(json.loads(self.password_file.read_text())[user])

    def log_path(self, component: str) -> Path:
        return self.work / "logs" / f"{component}.log"

    @property
    def provider_site(self) -> Path:
        """Where the provider's wheel is installed (first on the components' ``PYTHONPATH``)."""
        return self.work / "provider"

    # --- the provider ------------------------------------------------------------------------------------------
    def install_provider(self) -> None:
        """Build the repository's wheel and install it, without dependencies (the venv has them), into
        :attr:`provider_site`, replacing what an earlier start put there."""
        shutil.rmtree(self.provider_site, ignore_errors=True)
        with self.log_path("provider-install").open("w") as log:
            done = subprocess.run(
                [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                 "--disable-pip-version-check", "--target", str(self.provider_site), str(REPO)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300, check=False,
            )
        if done.returncode != 0:
            raise StackError(f"building and installing the provider failed; see {self.log_path('provider-install')}")

    # --- the source --------------------------------------------------------------------------------------------
    def seed(self, count: int, *, invalid_every: int = 0, prefix: str = "REQ", start: int = 1) -> list[dict[str, Any]]:
        """Insert ``count`` sample requests as pending rows; returns them."""
        requests_ = list(sample_requests(count, invalid_every=invalid_every, prefix=prefix, start=start))
        with SourceTable(lambda: sqlite3.connect(self.source_path), Dialect.SQLITE) as source:
            source.ensure_schema()
            source.insert_requests(requests_)
        return requests_

    def seed_keyed(self, count: int, *, bad_every: int = 0, prefix: str = "KEY") -> list[dict[str, Any]]:
        """Insert ``count`` business-key requests (keys of the emulator's seeded reference tables); returns them."""
        requests_ = list(keyed_requests(count, bad_every=bad_every, prefix=prefix))
        with SourceTable(lambda: sqlite3.connect(self.source_path), Dialect.SQLITE) as source:
            source.ensure_schema()
            source.insert_requests(requests_)
        return requests_

    def source_rows(self) -> dict[str, dict[str, Any]]:
        """``request_id`` -> the sync columns, read straight from the source table."""
        columns = ("request_id", "status", "sys_id", "number", "error", "attempts", "sync_action")
        conn = sqlite3.connect(self.source_path)
        try:
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM ticket_requests").fetchall()
        finally:
            conn.close()
        return {row[0]: dict(zip(columns, row, strict=True)) for row in rows}

    # --- Airflow -----------------------------------------------------------------------------------------------
    def airflow(self) -> LocalAirflow:
        connections = {
            "ticket_source": sqlite_connection(self.source_path),
            "servicenow_default": self.emulator.connection(),
            **self.connections,
        }
        env = {
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__PARALLELISM": "4",  # LocalExecutor starts this many workers; the DAG runs one at a time
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN_USER}:admin",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": str(self.schedule),
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
            "PYTHONUNBUFFERED": "1",
        }
        if self.provider:
            env["PYTHONPATH"] = os.pathsep.join([
                str(self.provider_site), str(REPO / "plugins"), *filter(None, [os.environ.get("PYTHONPATH")]),
            ])
            env["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"  # the form's Test button; see the module's docstring
        env.update(self.extra_env)
        return LocalAirflow(home=self.home, connections=connections, extra_env=env)

    def start(self, *, reseed: bool = True) -> LocalStack:
        """Seed the source (fresh unless ``reseed`` is off), start the emulator and Airflow; wait until the DAG is
        in the UI. Anything that fails to start is stopped again before the error is raised."""
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "logs").mkdir(exist_ok=True)
        self._stop_leftovers()
        if reseed:
            self.source_path.unlink(missing_ok=True)
            if self.rows:
                self.seed(self.rows, invalid_every=self.invalid_every)
            if self.keyed_rows:
                self.seed_keyed(self.keyed_rows, bad_every=5)
        self.api_port = self.api_port or free_port()
        try:
            if self.provider:
                self.install_provider()
            self.emulator.start()
            airflow = self.airflow()
            airflow.migrate()
            env = airflow.env()
            for name, args in COMPONENTS.items():
                self._start_component(name, args, env)
            self._write_pids()
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_component(self, name: str, args: Iterable[str], env: dict[str, str]) -> None:
        with self.log_path(name).open("ab") as log:
            self.processes[name] = subprocess.Popen(
                [str(BIN / "airflow"), *args], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.home,
            )

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise StackError(f"airflow {name} exited with {process.returncode}; see {self.log_path(name)}")

    def wait_ready(self, timeout: float = 300) -> None:
        """Until every component reports healthy, the admin password exists and the DAG has been parsed."""
        deadline = time.monotonic() + timeout
        waiting_for = "the api-server"
        while time.monotonic() < deadline:
            self.check_alive()
            waiting_for = self._not_ready()
            if not waiting_for:
                return
            time.sleep(1)
        raise StackError(f"Airflow was not ready after {timeout:.0f} s (waiting for {waiting_for}); "
                         f"see the logs in {self.work / 'logs'}")

    def _not_ready(self) -> str:
        try:
            health = requests.get(f"{self.url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return "the api-server"
        unhealthy = [name for name in HEALTHY_COMPONENTS if health.get(name, {}).get("status") != "healthy"]
        if unhealthy:
            return ", ".join(unhealthy)
        if requests.get(f"{self.url}/execution/health", timeout=60).status_code != 200:
            # the first request builds the versioned execution API (seconds of CPU on a busy box); make it now, not
            # when the first task starts
            return "the execution API"
        if not self.password_file.exists():
            return "the admin password file"
        if self.api("GET", f"/api/v2/dags/{DAG_ID}", check=False).status_code != 200:
            return f"the DAG {DAG_ID} to be parsed"
        return ""

    # --- the REST API, for waiting and checks (the browser test acts through the UI) -----------------------------
    def token(self) -> str:
        if self._token is None:
            response = requests.post(f"{self.url}/auth/token", json={
                "username": ADMIN_USER, "password": self.password(),
            }, timeout=10)
            response.raise_for_status()
            self._token = str(response.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, *, check: bool = True, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token()}"},
                                    timeout=30, **kwargs)
        if check:
            response.raise_for_status()
        return response

    # --- stopping ----------------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30) -> None:
        """SIGTERM every component's process group, SIGKILL what is left after ``timeout``, then any process they
        had started in a group of its own (task processes); then the emulator. Safe to call twice."""
        import psutil

        descendants: list[psutil.Process] = []
        for process in self.processes.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(process.pid).children(recursive=True)
        _signal_groups(self.processes.values(), signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
        _signal_groups(self.processes.values(), signal.SIGKILL)
        for process in self.processes.values():
            process.wait()
        _, alive = psutil.wait_procs(descendants, timeout=5)
        for leftover in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                leftover.kill()
        self.processes.clear()
        (self.work / "pids.json").unlink(missing_ok=True)
        self.emulator.stop()

    def leftovers(self) -> list[int]:
        """Processes still running with this stack's ``AIRFLOW_HOME``, or its files on their command line (the
        emulator); after :meth:`stop` there must be none."""
        import psutil

        found = []
        for process in psutil.process_iter():
            with contextlib.suppress(psutil.Error):
                if process.environ().get("AIRFLOW_HOME") == str(self.home) or any(
                    str(self.work) in arg for arg in process.cmdline()
                ):
                    found.append(process.pid)
        return found

    def _write_pids(self) -> None:
        import psutil

        pids = {name: [p.pid, psutil.Process(p.pid).create_time()] for name, p in self.processes.items()}
        (self.work / "pids.json").write_text(json.dumps(pids))

    def _stop_leftovers(self) -> None:
        """End the components a previous stack under this home left behind when it was killed hard (SIGKILL)."""
        import psutil

        pid_file = self.work / "pids.json"
        if not pid_file.exists():
            return
        for pid, created in json.loads(pid_file.read_text()).values():
            try:
                leftover = psutil.Process(pid)
                if abs(leftover.create_time() - created) < 1:
                    for process in [*leftover.children(recursive=True), leftover]:
                        process.kill()
            except psutil.NoSuchProcess:
                pass
        pid_file.unlink()

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_groups(processes: Iterable[subprocess.Popen[bytes]], sig: signal.Signals) -> None:
    for process in processes:
        if process.poll() is None or sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
