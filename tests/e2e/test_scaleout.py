"""`make scaleout` as a test: a real CeleryExecutor deployment on loopback (scheduler, dag-processor, api-server, two
Celery workers, Redis, PostgreSQL) syncs a backlog with mapped loaders on both workers, exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import redis

from tests.conftest import REQUIRE_POSTGRES
from ticketsync_dev.local import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_scale_out_run_spreads_the_loaders_over_both_workers_and_creates_each_case_once() -> None:
    try:
        redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        if REQUIRE_POSTGRES:  # CI: the services must be there
            pytest.fail(f"Redis is required here but unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    paths = [str(REPO / "plugins"), str(REPO / "dev"), os.environ.get("PYTHONPATH")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in paths if path))
    loaders = 4
    result = subprocess.run(
        [sys.executable, "scripts/scaleout.py", "--rows", "1500", "--loaders", str(loaders)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    print(result.stdout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    summary = json.loads(line.removeprefix("RESULT "))
    assert summary["state"] == "success"
    assert len(summary["hosts"]) == 2, summary["hosts"]
    assert sorted(index for indexes in summary["hosts"].values() for index in indexes) == list(range(loaders))
    assert summary["outcome"]["records"] == summary["outcome"]["valid"] == 1400
    assert summary["outcome"]["rejected"] == 100
    assert summary["outcome"]["duplicates"] == 0
    assert summary["outcome"]["throttled_429"] == 0, "N x max_in_flight fits the semaphores: no 429"
