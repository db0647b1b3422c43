"""The mapped load through Airflow (`airflow dags test`): N loaders share one run's claim, each row is sent once,
and when one loader fails the run fails (the report notices) and the next run finishes that loader's rows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import airflow_conn_json, fresh_source_database
from tests.e2e.test_dag_run import cases_events, check_exactly_once, last_event_id, rows
from ticketsync.source import SourceTable
from ticketsync_dev.local import EmulatorProcess, LocalAirflow
from ticketsync_dev.samples import sample_requests

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TABLE = "sn_bom_loan_service"
# Shard 2 of 3 cannot renew a lease (the step before sending), so its loader fails before it sends anything; the
# claim, the transform's rejections and releasing a lease still work.
REFUSE_SHARD_2 = """
CREATE FUNCTION refuse_shard_2() RETURNS trigger AS $$
BEGIN
    IF NEW.id % 3 = 2 AND OLD.claim_token IS NOT NULL AND NEW.claim_token = OLD.claim_token
       AND NEW.status = 'pending' AND NEW.lease_expires_at > now() THEN
        RAISE EXCEPTION 'test: the source refuses shard 2 of 3';
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql;
CREATE TRIGGER refuse_shard_2 BEFORE UPDATE ON ticket_requests FOR EACH ROW EXECUTE FUNCTION refuse_shard_2();
"""


@pytest.fixture
def pg_source(pg_database: dict[str, Any]) -> Iterator[tuple[SourceTable, str, dict[str, Any]]]:
    with fresh_source_database(pg_database, "mapped") as (source, params):
        yield source, airflow_conn_json(params), params


def test_a_failed_loader_fails_the_run_and_the_next_run_finishes_its_shard(
    airflow_home: Path, pg_source: tuple[SourceTable, str, dict[str, Any]], tmp_path: Path
) -> None:
    source, conn, params = pg_source
    requests = list(sample_requests(300, invalid_every=10))
    source.insert_requests(requests)
    invalid_ids = {r["request_id"] for i, r in enumerate(requests, start=1) if i % 10 == 0}
    with psycopg.connect(**params, autocommit=True) as db:
        db.execute(REFUSE_SHARD_2)
    with EmulatorProcess(tmp_path / "emulator", "--latency-ms", "5") as emulator:
        airflow = LocalAirflow(home=airflow_home, connections={
            "ticket_source": conn, "servicenow_default": emulator.connection(),
        }, extra_env={"TICKETSYNC_RETRY_DELAY_SECONDS": "1"})
        log = tmp_path / "run1.log"
        before = last_event_id(airflow_home)
        code = airflow.run_dag(log, conf={"loaders": 3})
        text = log.read_text()
        assert code != 0, text[-5000:]
        assert "loaders [2] of 3 returned no counts" in text, text[-5000:]
        # Loaders 0 and 1 sent their shards; loader 2 sent nothing, its valid rows wait, pending, for the next run.
        state = rows(source)
        sent = {r["correlation_id"] for r in emulator.records(TABLE)}
        for index, request in enumerate(requests, start=1):
            request_id = request["request_id"]
            if request_id in invalid_ids:
                assert state[request_id]["status"] == "rejected"
            elif index % 3 == 2:
                assert state[request_id]["status"] == "pending"
                assert request_id not in sent
            else:
                assert state[request_id]["status"] == "created"
        posts = emulator.stats()["by_method"].get("POST", 0)
        assert posts == len(sent) == sum(1 for i in range(1, 301) if i % 3 != 2 and i % 10 != 0)
        # Each loader that finished emitted its own event, with its shard's counts; the failed one emitted none.
        events = {event["map_index"]: event["extra"] for event in cases_events(airflow_home, before)}
        assert sorted(events) == [0, 1]
        for index, extra in events.items():
            shard = [i for i in range(1, 301) if i % 3 == index]
            assert (extra["loader"], extra["loaders"], extra["adopted"], extra["failed"]) == (index, 3, 0, 0)
            assert extra["created"] == sum(1 for i in shard if i % 10 != 0)
            assert extra["rejected"] == sum(1 for i in shard if i % 10 == 0)

        with psycopg.connect(**params, autocommit=True) as db:
            db.execute("DROP TRIGGER refuse_shard_2 ON ticket_requests")
        code = airflow.run_dag(tmp_path / "run2.log", conf={"loaders": 2})
        assert code == 0, (tmp_path / "run2.log").read_text()[-5000:]
        outcome = check_exactly_once(source, emulator, requests, invalid_ids)
        assert outcome == {"created_created": 270, "rejected": 30}
