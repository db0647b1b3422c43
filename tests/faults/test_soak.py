"""The soak at CI size: `scripts/soak.py --rows 5000 --lease-seconds 15` (docs/reliability.md reports the
100,000-row run of `make soak`, with its 30 s lease): two SIGKILLs of the real `airflow dags test` process group
mid-load under ~10 % faults, each followed by a wait for the dead run's lease (15 s, three times the runs'
settle_seconds: the dead run's POSTs, 2.5 s at the slowest, have settled long before the next run may take its
rows), then runs until done; 0 duplicates, 0 lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.faults import save_result
from ticketsync_dev.local import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


ROWS = 5_000
LEASE_SECONDS = 15


def test_soak_of_five_thousand_requests_with_faults_and_two_kills(
    pg_database: dict, tmp_path: Path, fresh_airflow_home: Path
) -> None:
    figures = tmp_path / "figures.json"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "plugins"), str(REPO / "dev"), str(REPO)]))
    done = subprocess.run(
        [sys.executable, "scripts/soak.py", "--rows", str(ROWS), "--workdir", str(tmp_path / "soak"),
         "--json", str(figures), "--airflow-home", str(fresh_airflow_home), "--lease-seconds", str(LEASE_SECONDS)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-5000:] + done.stderr[-5000:]
    result = json.loads(figures.read_text())
    save_result("soak", f"{ROWS:,} rows, 2 kills", {
        "rows": ROWS, "duplicates": result["duplicates"], "lost": result["lost"], "records": result["records"],
        "requests": result["stats"]["requests_total"], "seconds": result["seconds"],
        "peak_rss_mb": round(result["peak_rss_group"] / 2**20),
        "faults": {k: v for k, v in result["stats"]["faults"].items() if v},
    })
    assert (result["duplicates"], result["lost"], result["wrong_link"], result["invalid_sent"]) == (0, 0, 0, 0)
    assert sum(1 for run in result["runs"] if run["killed"]) == 2
    assert result["outcome"].get("rejected") == ROWS // 25
    faulted = sum(result["stats"]["faults"].values()) / result["stats"]["requests_total"]
    assert 0.07 < faulted < 0.14, faulted
