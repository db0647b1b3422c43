"""CPU per request of candidate HTTP clients for the hook's transport: the same Table API POST, sent by each client
through its public API (and by the hook itself), against the emulator as a separate process.

    PYTHONPATH=plugins:dev .venv/bin/python bench/transport.py --requests 2000 --threads 4

Each client sends ``--requests`` POSTs from ``--threads`` threads, each thread with a client (or cookie jar) of its
own, as the hook's lanes do. Reported: this process's CPU (user + system) per request, and requests per second.
The box is shared: compare clients within one run, not across runs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import urllib3

from ticketsync.hooks.servicenow import ServiceNowHook
from ticketsync_dev.local import EmulatorProcess

TABLE = "sn_bom_loan_service"
PATH = f"/api/now/table/{TABLE}?sysparm_fields=sys_id%2Cnumber%2Csys_created_on"
PASSWORD = "bench-transport"  # noqa: S105 - the throw-away emulator's
BODY = {"correlation_id": "", "short_description": "Request for loan forgiveness", "contact_type": "web"}

Sender = Callable[[int], int]  # sends POST number i; returns the status


def _body(number: int) -> bytes:
    return json.dumps({**BODY, "correlation_id": f"T-{number}"}).encode()


def hook_sender(url: str, port: int) -> Callable[[], Sender]:
    os.environ["AIRFLOW_CONN_SERVICENOW_BENCH"] = json.dumps({
        "conn_type": "http", "host": "127.0.0.1", "port": port, "schema": "http", "login": "admin",
        "password": PASSWORD, "extra": {"timeout": 30},
    })
    hook = ServiceNowHook("servicenow_bench", pool_size=16)

    def make() -> Sender:
        def send(number: int) -> int:
            hook.create_record(TABLE, {**BODY, "correlation_id": f"T-{number}"})
            return 201
        return send
    return make


def urllib3_sender(url: str, _port: int) -> Callable[[], Sender]:
    pool = urllib3.PoolManager(maxsize=16, retries=False, timeout=urllib3.Timeout(connect=10, read=60))
    auth = "Basic " + base64.b64encode(f"admin:{PASSWORD}".encode()).decode()
    base = {"Accept": "application/json", "Content-Type": "application/json", "Authorization": auth}

    def make() -> Sender:
        cookies: dict[str, str] = {}

        def send(number: int) -> int:
            headers = dict(base)
            if cookies:
                headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in cookies.items())
            answer = pool.request("POST", url + PATH, body=_body(number), headers=headers, redirect=False)
            for value in answer.headers.getlist("Set-Cookie"):
                name, _, rest = value.partition("=")
                cookies[name] = rest.split(";", 1)[0]
            answer.json()
            return answer.status
        return send
    return make


def httpx_sender(url: str, _port: int) -> Callable[[], Sender]:
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=16, max_keepalive_connections=16))
    headers = {"Accept": "application/json", "Content-Type": "application/json"}

    def make() -> Sender:
        client = httpx.Client(base_url=url, transport=transport, auth=("admin", PASSWORD), headers=headers,
                              timeout=httpx.Timeout(60, connect=10), follow_redirects=False)

        def send(number: int) -> int:
            answer = client.post(PATH, content=_body(number))
            answer.json()
            return answer.status_code
        return send
    return make


CLIENTS: dict[str, Callable[[str, int], Callable[[], Sender]]] = {
    "ServiceNowHook (its transport, with lanes)": hook_sender,
    "urllib3 PoolManager (public API)": urllib3_sender,
    "httpx Client per lane over one HTTPTransport": httpx_sender,
}


def measure(make_sender: Callable[[], Sender], requests_total: int, threads: int) -> tuple[float, float]:
    """CPU ms per request and requests per second for one client."""
    per_thread = requests_total // threads

    def lane(index: int) -> None:
        send = make_sender()
        for number in range(per_thread):
            status = send(index * 1_000_000 + number)
            if status != 201:
                raise RuntimeError(f"POST answered {status}")

    with ThreadPoolExecutor(threads) as pool:  # warm up: connections, sessions
        list(pool.map(lambda i: make_sender()(10_000_000 + i), range(threads)))
    cpu, wall = time.process_time(), time.monotonic()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lane, range(threads)))
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    done = per_thread * threads
    return cpu / done * 1000, done / wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2, help="each client is measured this many times, interleaved")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir, EmulatorProcess(Path(workdir), password=PASSWORD) as emulator:
        makers = {name: factory(emulator.url, emulator.port) for name, factory in CLIENTS.items()}
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in CLIENTS}
        for _ in range(args.rounds):
            for name, make in makers.items():
                results[name].append(measure(make, args.requests, args.threads))
        stats = emulator.stats()
    print(f"{args.requests} POSTs x {args.rounds} rounds, {args.threads} threads (a lane each); emulator "
          f"sessions created {stats['sessions_created']}, max transactions {stats['max_transactions']}")
    print("| client | CPU per request (ms, best round) | requests/s (best round) |")
    print("| --- | --- | --- |")
    for name, rounds in results.items():
        print(f"| {name} | {min(cpu for cpu, _ in rounds):.3f} | {max(rate for _, rate in rounds):.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
