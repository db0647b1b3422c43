"""End to end in a real browser: the Airflow UI of the `make ui` stack, driven by headless Chromium (Playwright).

Log in, find the DAG, trigger it from the form with parameters and see it succeed; stop the emulator, trigger again,
see the load fail and the alert reach a webhook receiver; start the emulator again on the same port, clear the load
from the UI and see the run succeed with no duplicate. Then, on the same stack (which runs with the provider installed
from the repository's wheel), add a connection of type ServiceNow from Admin → Connections: the provider's form, what
it stores, and its Test button (success against the emulator, then 401 with a wrong password). Each step leaves a
screenshot in ``.artifacts/ui/``.

Chromium is Debian's (``/usr/bin/chromium``, installed by ``.ci/run`` and ``make test``), never a downloaded build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Locator, Page, expect, sync_playwright
from playwright.sync_api import Error as PlaywrightError

from ticketsync_dev.local import DAG_ID, REPO
from ticketsync_dev.standalone import ADMIN_USER, LocalStack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CHROMIUM = Path(os.environ.get("TICKETSYNC_CHROMIUM", "/usr/bin/chromium"))
# The machine has no network: nothing that phones home, no QUIC, no first-run or sync machinery.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = REPO / ".artifacts" / "ui"
TABLE = "sn_bom_loan_service"
FIRST_BATCH = 30
LIMIT = 20
MAX_IN_FLIGHT = 4
# How long a page may take to show what it should: generous, the machine may be busy with other work.
UI_TIMEOUT_MS = 90_000
FORM_TIMEOUT_MS = 20_000  # the trigger form is already on screen: a field that does not answer is gone
PARAM_KEYS = {"Row limit": "limit", "In-flight cap": "max_in_flight"}  # form titles -> DAG params


class WebhookReceiver:
    """A Slack/Teams-style incoming webhook on loopback that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append({"path": self.path, "content_type": self.headers.get("Content-Type"),
                                 "json": json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def connection(self) -> str:
        return json.dumps({"conn_type": "http", "host": "127.0.0.1", "port": self.port, "schema": "http",
                           "extra": {"endpoint": "/hooks/ticketsync"}})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, webhook: WebhookReceiver) -> Iterator[LocalStack]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing: `apt-get install -y chromium` (.ci/run and `make test` do it)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    # Its own `airflow db migrate`, not a clone of the session's template: the migration also writes the home's
    # airflow.cfg (its JWT secret among others) before the components start; without it each component would write
    # one of its own, and the tasks' tokens would be refused ("Invalid auth token").
    stack = LocalStack(
        home=tmp_path_factory.mktemp("ui") / "airflow", rows=0,
        connections={"ticketsync_alert_webhook": webhook.connection()},
        # Task retries 1 s, then 2 s apart: the load fails for good within a minute of ServiceNow going away.
        extra_env={"TICKETSYNC_RETRY_DELAY_SECONDS": "1"},
    )
    started = time.monotonic()
    try:
        stack.start()
        print(f"stack ready in {time.monotonic() - started:.0f} s at {stack.url}")
        yield stack
    finally:
        stack.stop()
        # The component and task logs go with the screenshots: what CI keeps when this test fails.
        shutil.copytree(stack.work / "logs", ARTIFACTS / "logs" / "components", dirs_exist_ok=True)
        if (stack.home / "logs").exists():
            shutil.copytree(stack.home / "logs", ARTIFACTS / "logs" / "tasks", dirs_exist_ok=True)
    assert stack.leftovers() == [], "processes of the stack outlived stop()"


@pytest.fixture(scope="module")
def browser(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserContext]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),  # a fresh user-data dir
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 900}, base_url=stack.url,
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        yield context
        context.close()


@pytest.fixture(scope="module")
def page(browser: BrowserContext) -> Iterator[Page]:
    page = browser.pages[0] if browser.pages else browser.new_page()
    yield page
    page.close()


# --- steps -----------------------------------------------------------------------------------------------------
# After logging in, the test moves inside the app by clicking, as a person does: each full page load makes Chromium
# parse the UI's JavaScript again, seconds of CPU on a busy 2-core machine.


def shot(page: Page, name: str, target: Page | Locator | None = None) -> None:
    (target or page).screenshot(path=ARTIFACTS / f"{name}.png")


def page_url(path: str) -> re.Pattern[str]:
    """The URL of the app's page at ``path``, whatever query the UI keeps on it (e.g. the DAG list's search)."""
    return re.compile(rf"^https?://[^/]+{re.escape(path)}/?(\?.*)?$")


def log_in(page: Page, stack: LocalStack) -> None:
    page.goto("/")
    expect(page).to_have_url(re.compile(r"/auth/login"))
    page.get_by_label("Username").fill(ADMIN_USER)
    page.get_by_label("Password").fill(stack.password())
    shot(page, "01-login")
    page.get_by_role("button", name="Sign in").click()
    expect(page).not_to_have_url(re.compile(r"/auth/"))


def find_dag(page: Page) -> None:
    page.get_by_role("link", name="Dags").first.click()
    # the search matches the start of the name; "servicenow" alone also finds servicenow_case_status
    page.get_by_placeholder("Search Dags").fill("servicenow_ticket")
    link = page.get_by_role("link", name=DAG_ID, exact=True)
    expect(link).to_be_visible()
    expect(page.get_by_text("1 Dag", exact=True)).to_be_visible()
    shot(page, "02-dag-found")
    # The UI carries the list's query (?name_pattern=…) into the links it builds, and the run page would read it
    # as a task filter: clear the search before opening the DAG.
    page.get_by_placeholder("Search Dags").fill("")
    expect(page).not_to_have_url(re.compile(r"name_pattern="))
    # The cleared list re-renders with every DAG (servicenow_case_status sorts first): click once it has settled,
    # or the click lands on whatever row moved under it.
    expect(page.get_by_text("1 Dag", exact=True)).not_to_be_visible()
    expect(page.get_by_role("link", name="servicenow_case_status", exact=True)).to_be_visible()
    link.click()
    expect(page).to_have_url(page_url(f"/dags/{DAG_ID}"))


def trigger(page: Page, run_id: str, params: dict[str, int], screenshot: str) -> None:
    """From the DAG's page, open the trigger form, set the given params by their form titles and the run id, check
    the configuration JSON the form will send, submit; the UI opens the new run."""
    if not page_url(f"/dags/{DAG_ID}").search(page.url):  # on a run's page, Trigger is a menu (trigger again…)
        page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name=DAG_ID, exact=True).click()
        expect(page).to_have_url(page_url(f"/dags/{DAG_ID}"))
    expect(page.get_by_text("Latest Dag Version")).to_be_visible()  # the DAG's header has loaded
    for attempt in range(1, 4):
        page.get_by_role("button", name="Trigger Dag", exact=True).click()
        form = page.get_by_role("dialog")
        expect(form.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
        try:
            fill_trigger_form(page, form, run_id, params, screenshot)
            break
        except (PlaywrightError, AssertionError):
            # A page still loading re-renders its header, which closes a form opened too early: open it again.
            if attempt == 3 or form.is_visible():
                raise
            print(f"the trigger form closed while being filled (attempt {attempt}); opening it again")
    form.get_by_role("button", name="Trigger", exact=True).click()
    expect(page).to_have_url(page_url(f"/dags/{DAG_ID}/runs/{run_id}"))


def fill_trigger_form(page: Page, form: Locator, run_id: str, params: dict[str, int], screenshot: str) -> None:
    for title, value in params.items():
        field = form.get_by_label(title)  # the label also holds the "required" star
        field.fill(str(value), timeout=FORM_TIMEOUT_MS)
        expect(field).to_have_value(str(value), timeout=FORM_TIMEOUT_MS)
        field.scroll_into_view_if_needed()
    if params:
        shot(page, f"{screenshot}-params")
    form.get_by_role("button", name="Advanced Options").click(timeout=FORM_TIMEOUT_MS)
    form.get_by_label("Run ID").fill(run_id, timeout=FORM_TIMEOUT_MS)
    for name, value in params.items():
        pattern = re.compile(rf'"{PARAM_KEYS[name]}"\s*:\s*{value}\b')
        expect(form.get_by_text(pattern).first).to_be_visible(timeout=FORM_TIMEOUT_MS)
    shot(page, screenshot, form)


def wait_for(what: str, probe: Callable[[], Any], timeout: float) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def run_state(stack: LocalStack, run_id: str, queued_before: str | None = None) -> str:
    """The run's state; with ``queued_before``, "requeued" until the run was queued again after that time (a clear
    requeues it, and until then the API still answers the old run's state)."""
    run = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}").json()
    if queued_before is not None and run["queued_at"] == queued_before:
        return "requeued"
    return str(run["state"])


def task_states(stack: LocalStack, run_id: str, task_id: str) -> set[str]:
    """The states of the task's instances in the run (``load`` is mapped: one per loader)."""
    listing = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances").json()["task_instances"]
    return {str(ti["state"]) for ti in listing if ti["task_id"] == task_id}


def wait_run_finished(stack: LocalStack, run_id: str, timeout: float = 180, queued_before: str | None = None) -> str:
    """The scheduler takes runs up in its own time: wait on the REST API, then check what the UI shows. With
    ``queued_before`` (the run's ``queued_at`` before a clear), only a state of the run as queued again counts."""
    return str(wait_for(f"run {run_id} to finish", lambda: (
        state if (state := run_state(stack, run_id, queued_before)) in ("success", "failed") else None
    ), timeout))


def task_row(page: Page, task_id: str) -> Locator:
    return page.get_by_role("row").filter(has=page.get_by_role("link", name=task_id, exact=True))


def expect_run_page(page: Page, run_id: str, states: dict[str, str], screenshot: str) -> None:
    """On the run's page (reached from the breadcrumb if on one of its tasks), every task shows its state; the
    page refreshes itself while the run is active."""
    if not page_url(f"/dags/{DAG_ID}/runs/{run_id}").search(page.url):
        page.get_by_role("navigation", name="breadcrumb").get_by_role("link", name=run_id, exact=True).click()
    for task_id, state in states.items():
        expect(task_row(page, task_id)).to_contain_text(state)
    shot(page, screenshot)


def expect_task_log(page: Page, task_id: str, text: str, screenshot: str) -> None:
    """From the run's page, open the task; its log shows ``text``."""
    task_row(page, task_id).get_by_role("link", name=task_id, exact=True).click()
    expect(page.get_by_text(text).first).to_be_visible()
    shot(page, screenshot)


def clear_task(page: Page, task_id: str, downstream: list[str]) -> None:
    """On the failed task's page: Clear, with its downstream tasks (the dialog's default), and confirm."""
    page.get_by_role("button", name="Press shift+c to clear").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Clear Task Instance: {task_id}")).to_be_visible()
    expect(dialog.get_by_text(f"Affected Tasks: {1 + len(downstream)}")).to_be_visible()
    for affected in (task_id, *downstream):
        expect(dialog.get_by_role("row").filter(has_text=affected)).to_contain_text("Failed")
    shot(page, "08-clear-dialog")
    dialog.get_by_role("button", name="Confirm").click()
    expect(dialog).to_be_hidden()


def one_record_each(stack: LocalStack) -> Counter[str]:
    per_correlation = Counter(record["correlation_id"] for record in stack.emulator.records(TABLE))
    assert [key for key, n in per_correlation.items() if n > 1] == [], "two records share a correlation_id"
    return per_correlation


# --- the test ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_trigger_fail_alert_clear_and_succeed_in_the_airflow_ui(
    stack: LocalStack, page: Page, webhook: WebhookReceiver
) -> None:
    requests = stack.seed(FIRST_BATCH, prefix="UI")
    started = time.monotonic()
    try:
        _story(stack, page, webhook, [r["request_id"] for r in requests])
    except BaseException:
        page.screenshot(path=ARTIFACTS / "zz-at-failure.png")
        raise
    finally:
        print(f"browser steps took {time.monotonic() - started:.0f} s; screenshots in {ARTIFACTS}")


class Clock:
    """Prints how long each step took (the figures in the report come from this output)."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        print(f"[{now - self.start:6.1f} s] +{now - self.last:5.1f} s  {step}")
        self.last = now


def _story(stack: LocalStack, page: Page, webhook: WebhookReceiver, request_ids: list[str]) -> None:
    tag = uuid.uuid4().hex[:6]
    done = Clock()
    ok_run, failing_run = f"ui_limit_{tag}", f"ui_servicenow_down_{tag}"

    # 1. Log in, find the DAG, trigger it with a row limit and an in-flight cap from the form; it succeeds.
    log_in(page, stack)
    find_dag(page)
    done("logged in, found the DAG")
    trigger(page, ok_run, {"Row limit": LIMIT, "In-flight cap": MAX_IN_FLIGHT}, "03-trigger-form")
    done("triggered with limit and max_in_flight from the form")
    assert wait_run_finished(stack, ok_run) == "success"
    done("run succeeded")
    expect_run_page(page, ok_run, dict.fromkeys(("extract", "transform", "load", "report"), "Success"),
                    "04-run-succeeded")
    expect_task_log(page, "load", f"'created': {LIMIT}", "05-load-log")
    expect(page.get_by_text(f"up to {MAX_IN_FLIGHT} requests in flight").first).to_be_visible()  # the form's cap
    conf = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{ok_run}").json()["conf"]
    assert (conf["limit"], conf["max_in_flight"]) == (LIMIT, MAX_IN_FLIGHT), conf
    statuses = Counter(row["status"] for row in stack.source_rows().values())
    assert statuses == {"created": LIMIT, "pending": FIRST_BATCH - LIMIT}, statuses
    assert sum(one_record_each(stack).values()) == LIMIT
    left = {request_id for request_id, row in stack.source_rows().items() if row["status"] == "pending"}
    done("success seen in the UI and checked")

    # 2. ServiceNow goes away; the next run's load fails after its retries, and the alert arrives.
    stack.emulator.stop()
    trigger(page, failing_run, {}, "06-trigger-while-servicenow-down")
    done("emulator stopped, triggered again")
    assert wait_run_finished(stack, failing_run, timeout=240) == "failed"
    done("run failed after the load's retries")
    assert task_states(stack, failing_run, "load") == {"failed"}
    expect_run_page(page, failing_run, {"extract": "Success", "transform": "Success", "load": "Failed",
                                        "report": "Failed"}, "07-load-failed")
    alerts = wait_for("the failure alert at the webhook", lambda: list(webhook.received), timeout=60)
    done("failure seen in the UI; alert received")
    (ARTIFACTS / "alerts.json").write_text(json.dumps(alerts, indent=2))
    alert = alerts[0]
    assert alert["path"] == "/hooks/ticketsync"
    assert alert["content_type"].startswith("application/json")
    fields = alert["json"]["ticketsync"]
    assert (fields["kind"], fields["dag_id"], fields["task_id"], fields["run_id"]) == (
        "task_failed", DAG_ID, "load", failing_run)
    assert fields["run_url"] == f"{stack.url}/dags/{DAG_ID}/runs/{failing_run}"
    text = alert["json"]["text"]
    for part in ("load failed", failing_run, "ServiceNow unavailable"):
        assert part in text, text
    assert f"still pending {FIRST_BATCH - LIMIT}" in text, text
    # the alert's link opens the failed try's log in the UI
    assert fields["task_url"].startswith(f"{stack.url}/dags/{DAG_ID}/runs/{failing_run}/tasks/load")
    page.goto(fields["task_url"])
    expect(page.get_by_text("ServiceNow unavailable").first).to_be_visible()
    shot(page, "07b-alert-link-load-log")
    done("alert checked, its link followed")

    # 3. ServiceNow is back on the same port; clear the failed load (and the report after it) from the UI.
    stack.emulator.start()
    queued_before = stack.api("GET", f"/api/v2/dags/{DAG_ID}/dagRuns/{failing_run}").json()["queued_at"]
    clear_task(page, "load", downstream=["report"])
    done("emulator started again, load cleared from the UI")
    # The dialog closes while the clear may still be on its way: until it lands, the run still reads "failed".
    assert wait_run_finished(stack, failing_run, queued_before=queued_before) == "success"
    done("cleared run succeeded")
    expect_run_page(page, failing_run, dict.fromkeys(("extract", "transform", "load", "report"), "Success"),
                    "09-cleared-run-succeeded")

    # No duplicate, nothing lost: every row created once; the restarted emulator got exactly one POST per row left.
    rows = stack.source_rows()
    assert {rows[request_id]["status"] for request_id in request_ids} == {"created"}
    assert set(one_record_each(stack)) == left  # the emulator restarted empty: it holds the second run's cases
    assert stack.emulator.stats()["by_method"].get("POST", 0) == FIRST_BATCH - LIMIT
    assert len(webhook.received) == 1, [a["json"]["ticketsync"]["kind"] for a in webhook.received]
    done("success seen in the UI; no duplicate, nothing lost, one alert")


# --- the provider's connection form -----------------------------------------------------------------------------
# The stack runs with the provider installed from the repository's wheel (LocalStack.provider): the UI reads the
# `servicenow` form from the provider info through /api/v2/connections/hook_meta, and Test calls the hook's
# test_connection in the API server ([core] test_connection = Enabled in the stack).

STANDARD_LABELS = ("Instance host", "User name", "Password", "Port")
EXTRA_LABELS = ("Authentication", "OAuth client id", "OAuth client secret", "Verify TLS certificate", "CA bundle",
                "Client certificate", "Rate limit (requests per second)", "Connect timeout (seconds)",
                "Read timeout (seconds)", "Allow plain http")


def open_connections(page: Page, stack: LocalStack) -> None:
    if not page.url.startswith(stack.url):  # run on its own: a fresh page, not signed in yet
        log_in(page, stack)
    page.get_by_role("button", name="Admin").click()
    page.get_by_role("menuitem", name="Connections").click()
    expect(page.get_by_role("button", name="Add Connection")).to_be_visible()


def form_section(dialog: Locator, name: str) -> None:
    """Open one of the form's sections (an accordion: opening one closes the others)."""
    button = dialog.get_by_role("button", name=name, exact=True)
    if button.get_attribute("aria-expanded") != "true":
        button.click()
    expect(button).to_have_attribute("aria-expanded", "true")


def shot_whole_dialog(page: Page, dialog: Locator, name: str) -> None:
    """The dialog scrolls inside the window: a tall window for the screenshot shows every field of it at once."""
    page.set_viewport_size({"width": 1400, "height": 2000})
    try:
        shot(page, name, dialog)
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})


def press_test(page: Page, conn_id: str, title: str) -> Locator:
    """Press the connection's Test button in the list; the answer comes as a notification titled ``title``."""
    row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))
    row.get_by_role("button", name="Test Connection").click()
    toast = page.get_by_role("status", name=title)
    expect(toast).to_be_visible()
    return toast


@pytest.mark.timeout(300)
def test_the_servicenow_connection_form_and_its_test_button(stack: LocalStack, page: Page) -> None:
    """Admin → Connections → Add: type ServiceNow shows the provider's form; a connection to the emulator made
    with it tests successfully; with a wrong password, Test says the instance answered 401."""
    if stack.emulator.process is None:  # the story above stops it on the way; normally it has started it again
        stack.emulator.start()
    conn_id = f"sn_form_{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    try:
        open_connections(page, stack)
        page.get_by_role("button", name="Add Connection").click()
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("heading", name="Add Connection")).to_be_visible()
        dialog.get_by_role("textbox", name="Connection ID").fill(conn_id)
        dialog.get_by_role("combobox", name="Connection Type").fill("ServiceNow")
        page.get_by_role("option", name="ServiceNow", exact=True).click()

        form_section(dialog, "Standard Fields")
        for label in STANDARD_LABELS:
            expect(dialog.get_by_text(label, exact=True)).to_be_visible()
        expect(dialog.get_by_text("Schema", exact=True)).to_have_count(0)  # hidden: https unless the host says
        # The emulator over plain http on loopback (allowed there without "Allow plain http"). The port goes in its
        # own field: the Airflow 3.3 UI's Test sends an empty port as 0, which the API refuses as "a different
        # endpoint than the stored connection" (400).
        dialog.get_by_role("textbox", name="Instance host").fill("http://127.0.0.1")
        dialog.get_by_role("spinbutton", name="Port").fill(str(stack.emulator.port))
        dialog.get_by_role("textbox", name="User name").fill("admin")
        dialog.get_by_role("textbox", name="Password").fill(stack.emulator.password)
        shot_whole_dialog(page, dialog, "10-servicenow-form-standard-fields")

        form_section(dialog, "Extra Fields")
        for label in EXTRA_LABELS:
            expect(dialog.get_by_text(label, exact=True)).to_be_visible()
        expect(dialog.get_by_role("combobox", name="Authentication")).to_be_visible()
        expect(dialog.get_by_text("basic", exact=True)).to_be_visible()  # the declared default
        expect(dialog.get_by_role("checkbox", name="Verify TLS certificate")).to_be_checked()
        expect(dialog.get_by_role("checkbox", name="Allow plain http")).not_to_be_checked()
        expect(dialog.get_by_role("spinbutton", name="Connect timeout (seconds)")).to_have_value("10")
        dialog.get_by_role("spinbutton", name="Read timeout (seconds)").fill("30")
        dialog.get_by_role("spinbutton", name="Rate limit (requests per second)").fill("5")
        shot_whole_dialog(page, dialog, "11-servicenow-form-extra-fields")
        dialog.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()

        # saved as a servicenow connection with the form's extras (the REST API shows what Airflow stored)
        stored = stack.api("GET", f"/api/v2/connections/{conn_id}").json()
        assert (stored["conn_type"], stored["host"], stored["port"], stored["login"]) == (
            "servicenow", "http://127.0.0.1", stack.emulator.port, "admin")
        extra = json.loads(stored["extra"])
        assert (extra["auth_type"], extra["verify"], extra["allow_insecure_http"]) == ("basic", True, False), extra
        assert (extra["connect_timeout"], extra["read_timeout"], extra["rate_limit"]) == (10, 30, 5), extra

        reads_before = stack.emulator.stats()["by_method"].get("GET", 0)
        ok = press_test(page, conn_id, "Test Connection Successful")
        expect(ok).to_contain_text(f"Connection successfully tested: http://127.0.0.1:{stack.emulator.port} "
                                   f"answered a Table API read of {TABLE}")
        shot(page, "12-servicenow-test-succeeded")
        assert stack.emulator.stats()["by_method"].get("GET", 0) > reads_before  # it did ask the emulator

        # the same connection with a wrong password: Test names the 401 and what to check
        row = page.get_by_role("row").filter(has=page.get_by_role("cell", name=conn_id, exact=True))
        row.get_by_role("button", name="Edit Connection").click()
        expect(dialog.get_by_role("heading", name="Edit Connection")).to_be_visible()
        form_section(dialog, "Standard Fields")
        dialog.get_by_role("textbox", name="Password").fill("not-the-password")
        dialog.get_by_role("button", name="Save").click()
        expect(dialog).to_be_hidden()
        failed = press_test(page, conn_id, "Test Connection Failed")
        expect(failed).to_contain_text("Authentication failed: 401")
        expect(failed).to_contain_text("check its login and password")
        shot(page, "13-servicenow-test-401")
    except BaseException:
        page.screenshot(path=ARTIFACTS / "zz-connection-form-at-failure.png")
        raise
    finally:
        print(f"connection form steps took {time.monotonic() - started:.0f} s")
