"""A warm Airflow for the tests' DAG runs: one process imports Airflow and builds its in-process execution API once,
then forks one child per ``airflow dags test``.

Why: every ``airflow dags test`` spends about 15 s before the first task runs (3 to 7 s importing Airflow and its CLI,
8 s while Cadwyn generates the execution API's versioned routers on its first request), and the tests run the DAG
about fifty times. The child is the real CLI (``airflow.__main__.main`` with the same argv and environment a
subprocess would get), in its own session (process group), with its own Airflow home, metadata database and log file;
only the imports and the API app come warm from the parent.

What the child cannot change: the import path and the DAG and plugin folders are fixed when the warm process starts.
A run whose environment gives other values (the upgrade test runs the previous release's folders) goes through a
plain subprocess instead; ``can_run`` decides. Nothing of ticketsync is imported in the warm process (it checks), so
every run parses the DAG files and imports the plugins afresh, with its own environment.

Development tooling only: ``LocalAirflow.run_dag`` uses it when ``TICKETSYNC_WARM_AIRFLOW=1`` (the test suite sets
it); ``make demo`` and the benchmarks run the plain subprocess.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any

# Fixed for the warm process's lifetime: a run that needs other values runs as a plain subprocess.
FIXED = ("PYTHONPATH", "AIRFLOW__CORE__DAGS_FOLDER", "AIRFLOW__CORE__PLUGINS_FOLDER")


class WarmAirflow:
    """The client side: starts the warm process, asks it to fork runs, and waits for their exit codes."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.fixed = {key: env.get(key) for key in FIXED}
        home.mkdir(parents=True, exist_ok=True)
        self._log = (home / "warm-airflow.log").open("ab")
        self._process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve())],
            env={**env, "AIRFLOW_HOME": str(home)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._log, start_new_session=True,
        )
        self._lock = threading.Lock()
        ready = self._reply()
        if ready.get("ready") is not True:
            raise RuntimeError(f"the warm Airflow did not start: {ready}; see {home / 'warm-airflow.log'}")

    def can_run(self, env: dict[str, str]) -> bool:
        return self._process.poll() is None and all(env.get(key) == value for key, value in self.fixed.items())

    def run(self, argv: list[str], env: dict[str, str], log: Path, timeout: float) -> int:
        """One run to its end; its exit code. On timeout the run's process group is killed and TimeoutExpired raised."""
        pid = int(self._ask({"op": "run", "argv": argv, "env": env, "log": str(log), "cwd": os.getcwd()})["pid"])
        deadline = time.monotonic() + timeout
        while True:
            code = self._ask({"op": "poll", "pid": pid})["returncode"]
            if code is not None:
                return int(code)
            if time.monotonic() > deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)
                self._ask({"op": "reap", "pid": pid})
                raise subprocess.TimeoutExpired(argv, timeout)
            time.sleep(0.1)

    def close(self) -> None:
        if self._process.poll() is None:
            assert self._process.stdin is not None
            self._process.stdin.close()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._log.close()

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps(request).encode() + b"\n")
            self._process.stdin.flush()
            return self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm Airflow exited (code {self._process.poll()})")
        return dict(json.loads(line))


_shared: dict[str, WarmAirflow] = {}


def shared(env: dict[str, str]) -> WarmAirflow:
    """This process's warm Airflow, started on first use with ``env``'s fixed values (its own Airflow home in a
    temporary directory, with its log ``warm-airflow.log``); closed at exit."""
    if "warm" not in _shared:
        _shared["warm"] = WarmAirflow(env, Path(tempfile.mkdtemp(prefix="ticketsync-warm-airflow-")))
        atexit.register(_shared["warm"].close)
    return _shared["warm"]


# ----------------------------------------------------------------------------------------------------------------
# the warm process
# ----------------------------------------------------------------------------------------------------------------


def _warm_up() -> None:
    import airflow  # noqa: F401
    from airflow import configuration, settings
    from airflow.cli import cli_parser

    configuration.write_default_airflow_configuration_if_needed()

    cli_parser.get_parser()
    from airflow.sdk.execution_time.supervisor import in_process_api_server

    # The app is shared by every InProcessExecutionAPI of the process; its routers are generated here, not on the
    # first request of every run.
    in_process_api_server().app._cadwyn_initialize()
    settings.dispose_orm(do_log=False)
    leaked = sorted(name for name in sys.modules if name.split(".")[0] in ("ticketsync", "ticketsync_dev"))
    if leaked:
        raise RuntimeError(f"the warm process imported ticketsync modules ({leaked}); runs would share them")
    if threading.active_count() != 1:
        raise RuntimeError(f"the warm process has threads before forking: {threading.enumerate()}")


def _child(request: dict[str, Any], replies: int) -> None:
    """In the forked child: become the run (its own session, log, directory, environment), then the CLI."""
    code = 1
    try:
        os.close(replies)
        os.setsid()
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        _reconfigure(Path(os.environ["AIRFLOW_HOME"]))
        from airflow.__main__ import main

        main()  # type: ignore[no-untyped-call]
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # the run's failure goes to its log, as the CLI's would
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _reconfigure(home: Path) -> None:
    """Point the warm Airflow at this run's home: its config file, metadata database and logs."""
    from airflow import configuration, settings

    # configuration.AIRFLOW_CONFIG stays the warm process's own file (written while warming up): the CLI would
    # otherwise write the warm process's values (its database, its folders) into this home's airflow.cfg, where a
    # later cold run of the same home would read them.
    configuration.AIRFLOW_HOME = str(home)
    os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{home / 'airflow.db'}")
    os.environ.setdefault("AIRFLOW__LOGGING__BASE_LOG_FOLDER", str(home / "logs"))
    settings.AIRFLOW_HOME = str(home)  # type: ignore[attr-defined]
    settings.configure_vars()  # type: ignore[no-untyped-call]
    settings.reconfigure_orm()  # type: ignore[no-untyped-call]


def _serve() -> None:
    replies = os.dup(1)
    os.dup2(2, 1)  # anything printed while warming up goes to the log, not into the replies
    _warm_up()

    def reply(message: dict[str, Any]) -> None:
        os.write(replies, json.dumps(message).encode() + b"\n")

    reply({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "run":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request, replies)
            reply({"pid": pid})
        elif request["op"] == "poll":
            done, status = os.waitpid(int(request["pid"]), os.WNOHANG)
            reply({"returncode": os.waitstatus_to_exitcode(status) if done else None})
        elif request["op"] == "reap":  # a run that was killed
            _, status = os.waitpid(int(request["pid"]), 0)
            reply({"returncode": os.waitstatus_to_exitcode(status)})


if __name__ == "__main__":
    _serve()
