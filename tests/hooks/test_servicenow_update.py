"""ServiceNowHook's update and journal read over real HTTP against the emulator (what issue 13's updates rest on)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ticketsync.hooks.servicenow import ServiceNowHook, ServiceNowRequestError, ServiceNowTransientError
from ticketsync_dev.emulator import RunningEmulator

TABLE = "sn_bom_loan_service"


@pytest.fixture
def hook(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServiceNowHook]:
    monkeypatch.setenv(
        "AIRFLOW_CONN_SERVICENOW_TEST",
        json.dumps(
            {
                "conn_type": "http",
                "host": "127.0.0.1",
                "port": emulator.port,
                "schema": "http",
                "login": "admin",
                "password": "s3cret-emulator",
                "extra": {"timeout": 2},
            }
        ),
    )
    hook = ServiceNowHook("servicenow_test", pool_size=2)
    yield hook
    hook.close()


def test_update_changes_only_the_fields_sent_and_each_note_is_one_journal_entry(
    hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    created = hook.create_record(TABLE, {"correlation_id": "REQ-1", "short_description": "a", "category": "1"})

    answer = hook.update_record(
        TABLE,
        created.sys_id,
        {"short_description": "b", "work_notes": "New payslip"},
        fields=("sys_id", "short_description", "category", "work_notes"),
    )
    hook.update_record(TABLE, created.sys_id, {"work_notes": "Second note"})

    assert answer == {"sys_id": created.sys_id, "short_description": "b", "category": "1", "work_notes": ""}
    entries = hook.journal_entries(TABLE, created.sys_id)
    assert sorted(entry["value"] for entry in entries) == ["New payslip", "Second note"]  # same second: any order
    assert hook.journal_entries(TABLE, created.sys_id, "comments") == []
    assert hook.journal_entries(TABLE, created.sys_id, since="2999-01-01 00:00:00") == []
    assert emulator.stats()["by_method"] == {"POST": 1, "PATCH": 2, "GET": 3}


def test_update_of_a_deleted_case_is_refused_never_created(hook: ServiceNowHook, emulator: RunningEmulator) -> None:
    with pytest.raises(ServiceNowRequestError) as raised:
        hook.update_record(TABLE, "0" * 32, {"work_notes": "x"})

    assert raised.value.status == 404
    assert emulator.store.records(TABLE) == []


def test_an_update_whose_answer_was_cut_after_commit_is_transient_and_did_land(
    hook: ServiceNowHook, emulator: RunningEmulator
) -> None:
    created = hook.create_record(TABLE, {"correlation_id": "REQ-1", "short_description": "a"})
    emulator.set_faults(cut_after_commit=1.0, methods=("PATCH",))

    with pytest.raises(ServiceNowTransientError):
        hook.update_record(TABLE, created.sys_id, {"work_notes": "Once"})

    emulator.set_faults(cut_after_commit=0.0)
    assert [entry["value"] for entry in hook.journal_entries(TABLE, created.sys_id)] == ["Once"]


def test_journal_look_up_refuses_what_it_cannot_query_exactly(hook: ServiceNowHook) -> None:
    with pytest.raises(ValueError, match="invalid journal look-up"):
        hook.journal_entries(TABLE, "not-a-sys-id")
    with pytest.raises(ValueError, match="since must be"):
        hook.journal_entries(TABLE, "a" * 32, since="yesterday")
