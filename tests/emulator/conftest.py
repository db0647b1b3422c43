"""Fixtures: one emulator per test module over real loopback HTTP, reset before every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from tests.support.emulator import LOAN, PASSWORD, USER
from ticketsync_dev.emulator import EmulatorConfig, RunningEmulator, start_emulator


@pytest.fixture(scope="module")
def running() -> Iterator[RunningEmulator]:
    with start_emulator(EmulatorConfig(user=USER, password=PASSWORD)) as emulator:
        yield emulator


@pytest.fixture
def emulator(running: RunningEmulator) -> RunningEmulator:
    running.reset(reset_faults=True)
    return running


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.auth = (USER, PASSWORD)
        http.headers.update({"Accept": "application/json"})
        yield http


@pytest.fixture
def table_url(emulator: RunningEmulator) -> str:
    return f"{emulator.url}/api/now/table/{LOAN}"
