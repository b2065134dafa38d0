"""The flows console in a real browser (Debian's Chromium through Selenium), against a real
Temporal dev server, a worker and a database: a marketer builds a flow with the step editor, sees
a validation error on the field it concerns, fixes it, saves, enrolls contacts, watches the
counts, pauses, resumes, ends and deletes it; merge tags are suggested as `[[` is typed and steps
move up and down; overlaps have their own section; an admin changes a role and deactivates a user,
who is refused from then on; repeated failed sign-ins are refused; a viewer can change nothing; a
POST without the CSRF token is refused.

Screenshots of each page go to ``tmp_path`` (or the folder ``CONSOLE_SCREENSHOTS`` names); the
README's are taken from the running dev stack.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait
from sqlalchemy import Engine
from sqlmodel import select
from temporalio.testing import WorkflowEnvironment

from console.app import create_app
from console.web import ConsoleSettings
from control.flows import UnknownFlow, deploy_flow, load_flow, read_document
from models.accounts import Role, User, add_user
from models.database import PROJECT_ROOT, session
from models.demo import DEMO_FORM_ID, VIP_SELECTION_ID
from models.engine import FlowStatus
from models.flow import SendEmail, Split, SplitBasis
from testkit.servers import free_port
from tracking.server import serving
from worker import build_worker

PASSWORD = "a long enough password"
WAIT = 30  # seconds the browser waits for what a page shows


@dataclass(frozen=True)
class Console:
    url: str
    engine: Engine
    shots: Path

    def sign_in(self, driver: webdriver.Chrome, email: str) -> None:
        driver.get(f"{self.url}/login")
        driver.find_element(By.ID, "email").send_keys(email)
        driver.find_element(By.ID, "password").send_keys(PASSWORD)
        driver.find_element(By.ID, "sign-in").click()
        WebDriverWait(driver, WAIT).until(lambda d: d.find_elements(By.ID, "who"))

    def shot(self, driver: webdriver.Chrome, name: str) -> None:
        # The whole page, however long: the window grows to it first.
        driver.set_window_size(1400, 800)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(800, min(int(height) + 40, 4000)))
        driver.save_screenshot(str(self.shots / f"{name}.png"))


@pytest.fixture
async def console(
    dev_env: WorkflowEnvironment, engine: Engine, task_queue: str, tmp_path: Path
) -> AsyncIterator[Console]:
    with session(engine) as db:
        for role in Role:
            add_user(db, f"{role.value}@example.com", PASSWORD, role, role.value.title())
    settings = ConsoleSettings(
        secret="console-test-secret-" + uuid.uuid4().hex,
        task_queue=task_queue,
        temporal_ui_url="http://localhost:8233",
        port=free_port(),
    )
    shots = Path(os.environ.get("CONSOLE_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    app = create_app(engine, dev_env.client, settings)
    async with (
        build_worker(dev_env.client, engine, task_queue=task_queue),
        serving(app, host="127.0.0.1", port=settings.port) as url,
    ):
        yield Console(url, engine, shots)


def _text(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def _field(driver: webdriver.Chrome, step: str, field: str, tag: str = "input") -> Any:
    return driver.find_element(
        By.CSS_SELECTOR, f'[data-step="{step}"] [data-field="{field}"] {tag}'
    )


def _until(driver: webdriver.Chrome, check: Callable[[webdriver.Chrome], object]) -> None:
    """Poll ``check`` until it holds. A poll may land while the page is being replaced (a form
    posted and redirected): Chrome then says "Node with given id does not belong to the
    document" as a plain WebDriverException. Any such error counts as "not yet", and the last
    one is told if the wait runs out."""
    seen: list[WebDriverException] = []

    def safely(d: webdriver.Chrome) -> object:
        try:
            return check(d)
        except WebDriverException as error:  # not there yet, or the page drew itself again
            seen[:] = [error]
            return False

    try:
        WebDriverWait(driver, WAIT, poll_frequency=0.2).until(safely)
    except TimeoutException as timeout:
        if seen:
            raise TimeoutException(f"{timeout.msg or ''} last error: {seen[0].msg}") from seen[0]
        raise


def _choose(driver: webdriver.Chrome, css: str, value: str) -> None:
    Select(driver.find_element(By.CSS_SELECTOR, css)).select_by_value(value)


# Posts from the page itself, with the session cookie: what a forged form would do.
POST = """
const [url, token, done] = arguments;
const body = new URLSearchParams(token ? {csrf: token} : {});
fetch(url, {method: "POST", body: body, redirect: "manual"})
  .then((answer) => done(answer.status)).catch((error) => done(String(error)));
"""


def _build_run_pause_resume(console: Console, driver: webdriver.Chrome, flow_id: str) -> None:
    console.sign_in(driver, "marketer@example.com")
    # A new flow from the blank template opens in the step editor.
    driver.get(f"{console.url}/flows")
    driver.find_element(By.ID, "new-id").send_keys(flow_id)
    driver.find_element(By.ID, "new-name").send_keys("Browser-built welcome")
    driver.find_element(By.CSS_SELECTOR, "#new-flow button").click()
    _until(driver, lambda d: _text(d, "#verdict") == "Valid, ready to run")

    # An email step at the end: its empty subject is an error on that field, live.
    _choose(driver, "#steps > select", "send_email")
    _until(
        driver,
        lambda d: (
            "invalid"
            in _field(d, "send-email-1", "subject")
            .find_element(By.XPATH, "..")
            .get_attribute("class")
        ),
    )
    error = _text(driver, '[data-step="send-email-1"] [data-field="subject"] .field-error')
    assert "at least 1 character" in error
    assert driver.find_element(By.ID, "save").get_attribute("disabled") is not None
    console.shot(driver, "step-editor-invalid")
    # Fixed: a subject, a body, and the email leads to the finish; the flow starts with it.
    _field(driver, "send-email-1", "subject").send_keys("Welcome, [[customer.firstname]]")
    _field(driver, "send-email-1", "text", "textarea").send_keys("Glad to have you.")
    _field(driver, "send-email-1", "next").send_keys("done")
    # A working-days wait after the email, reconnected between it and the finish.
    _choose(driver, '[data-step="send-email-1"] header select', "wait_time")
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-step="wait-time-1"]'))
    _field(driver, "wait-time-1", "amount").send_keys("3")
    _choose(driver, '[data-step="wait-time-1"] [data-field="unit"] select', "working_days")
    # A split after the wait: VIPs one way, everyone else too, both on to the finish.
    _choose(driver, '[data-step="wait-time-1"] header select', "split")
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-step="split-1"]'))
    _choose(driver, '[data-step="split-1"] [data-field="basis"] select', "selection")
    driver.find_element(
        By.XPATH,
        '//*[@data-step="split-1"]//*[@data-field="branches"]'
        '/button[starts-with(normalize-space(.), "Add")]',
    ).click()
    _until(driver, lambda d: _field(d, "split-1", "branches.0.name"))
    _field(driver, "split-1", "branches.0.name").send_keys("VIPs")
    _field(driver, "split-1", "branches.0.selection_id").send_keys(str(VIP_SELECTION_ID))
    _field(driver, "split-1", "branches.0.next").send_keys("done")
    _field(driver, "split-1", "everyone_else.next").send_keys("done")
    start = driver.find_element(By.CSS_SELECTOR, '#settings [data-field="start"] input')
    start.clear()
    start.send_keys("send-email-1")
    _until(driver, lambda d: _text(d, "#verdict") == "Valid to save, not ready to run")
    problems = _text(driver, "#problems")
    assert "email settings" in problems  # an email step needs the flow's sender to run
    console.shot(driver, "step-editor")
    driver.find_element(By.ID, "save").click()
    _until(driver, lambda d: "Saved as version 2" in _text(d, "#saved"))
    stored = load_flow(console.engine, flow_id)
    assert [s.type for s in stored.flow.steps] == ["finish", "send_email", "wait_time", "split"]
    split = stored.flow.step("split-1")
    assert isinstance(split, Split) and split.basis is SplitBasis.selection
    assert (split.branches[0].selection_id, split.branches[0].next) == (VIP_SELECTION_ID, "done")
    assert stored.flow.step("wait-time-1").next == "split-1"  # type: ignore[union-attr]

    # Not ready to run: the flow page says why and offers no enrollment.
    driver.get(f"{console.url}/flows/{flow_id}")
    assert driver.find_element(By.CSS_SELECTOR, "#enroll button").get_attribute("disabled")
    # The email step taken out again in the editor: a wait, then the finish, ready to run.
    driver.get(f"{console.url}/flows/{flow_id}/edit")
    _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, '[data-step="send-email-1"]'))
    driver.find_element(
        By.CSS_SELECTOR, '[data-step="send-email-1"] header .tools button.remove'
    ).click()
    start = driver.find_element(By.CSS_SELECTOR, '#settings [data-field="start"] input')
    start.clear()
    start.send_keys("wait-time-1")
    _until(driver, lambda d: _text(d, "#verdict") == "Valid, ready to run")
    driver.find_element(By.ID, "save").click()
    _until(driver, lambda d: "Saved as version 3" in _text(d, "#saved"))

    # Enrolled from the flow page; the counts come in as the participants record themselves.
    driver.get(f"{console.url}/flows/{flow_id}")
    driver.find_element(By.ID, "contacts").send_keys("1 2 3")
    driver.find_element(By.CSS_SELECTOR, "#enroll button").click()
    _until(driver, lambda d: "Enrolled 3 of 3" in _text(d, ".flash"))

    def three_waiting(d: webdriver.Chrome) -> bool:
        d.refresh()
        return _text(d, "#in-progress") == "3" and "at 3" in _text(d, "#diagram")

    _until(driver, three_waiting)
    assert _text(driver, '#by-step [data-step="wait-time-1"]') == "3"
    console.shot(driver, "flow-page")

    # Pause: the confirmation says how many it reaches; the lifecycle code does it.
    driver.find_element(By.ID, "pause").click()
    assert "3 active participants freeze" in _text(driver, "#confirm-pause .question")
    driver.find_element(By.ID, "confirm-pause-yes").click()
    _until(driver, lambda d: "Paused: 3 participants" in _text(d, ".flash"))
    assert _text(driver, "#status") == "paused"
    assert load_flow(console.engine, flow_id).status is FlowStatus.paused
    driver.find_element(By.ID, "resume").click()
    assert "3 participants go on" in _text(driver, "#confirm-resume .question")
    driver.find_element(By.ID, "confirm-resume-yes").click()
    _until(driver, lambda d: "Resumed 3 participants" in _text(d, ".flash"))
    assert _text(driver, "#status") == "running"

    # The participants, masked, and one participant's page with its Temporal UI link.
    driver.find_element(By.CSS_SELECTOR, '#by-step a[href*="step=wait-time-1"]').click()
    assert _text(driver, "#total") == "3 participants"
    console.shot(driver, "participants")
    driver.find_element(By.CSS_SELECTOR, "#participants tbody a").click()
    link = driver.find_element(By.ID, "temporal-link").get_attribute("href")
    assert f"/workflows/flow-{flow_id}-contact-" in str(link)
    _until(
        driver, lambda d: "wait-time-1" in _text(d, "#trail") or "3 working" in _text(d, "#trail")
    )
    console.shot(driver, "participant")

    driver.get(f"{console.url}/flows")
    assert flow_id in _text(driver, f'#flows tr[data-flow="{flow_id}"]')
    console.shot(driver, "flows-list")

    # Without the session's CSRF token a change is refused, and nothing changes.
    assert driver.execute_async_script(POST, f"{console.url}/flows/{flow_id}/pause", "") == 403
    assert load_flow(console.engine, flow_id).status is FlowStatus.running

    # Ended, then deleted: the confirmation counts the participants it had.
    driver.get(f"{console.url}/flows/{flow_id}")
    driver.find_element(By.ID, "end").click()
    driver.find_element(By.ID, "confirm-end-yes").click()
    _until(driver, lambda d: "Ended: 3 active participants" in _text(d, ".flash"))
    driver.find_element(By.ID, "delete").click()
    question = _text(driver, "#confirm-delete .question")
    assert "3 versions" in question and "had 3 participants (0 active now)" in question
    driver.find_element(By.ID, "confirm-delete-yes").click()
    _until(driver, lambda d: f"Deleted {flow_id}" in _text(d, ".flash"))
    assert driver.current_url == f"{console.url}/flows"
    assert not driver.find_elements(By.CSS_SELECTOR, f'#flows tr[data-flow="{flow_id}"]')
    with pytest.raises(UnknownFlow):
        load_flow(console.engine, flow_id)


async def test_a_marketer_builds_runs_pauses_and_resumes_a_flow(
    console: Console, browser: webdriver.Chrome
) -> None:
    flow_id = f"browser-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(_build_run_pause_resume, console, browser, flow_id)


def _viewer_changes_nothing(console: Console, driver: webdriver.Chrome) -> None:
    console.sign_in(driver, "viewer@example.com")
    driver.get(f"{console.url}/flows/welcome")
    assert driver.find_elements(By.ID, "status")
    # No buttons that change anything, no enrollment, no new flow.
    for element in ("pause", "run", "end", "delete", "edit", "enroll"):
        assert not driver.find_elements(By.ID, element), element
    driver.get(f"{console.url}/flows")
    assert not driver.find_elements(By.ID, "new-flow")
    # Reaching for a change directly is refused too, token or not.
    driver.get(f"{console.url}/flows/welcome/edit")
    assert "Not allowed" in _text(driver, "h1")
    token = driver.find_element(By.NAME, "csrf").get_attribute("value")
    assert driver.execute_async_script(POST, f"{console.url}/flows/welcome/run", token) == 403
    assert driver.execute_async_script(POST, f"{console.url}/flows/welcome/delete", token) == 403
    driver.get(f"{console.url}/users")
    assert "Not allowed" in _text(driver, "h1")


async def test_a_viewer_can_change_nothing(console: Console, browser: webdriver.Chrome) -> None:
    deploy_flow(console.engine, read_document(PROJECT_ROOT / "flows" / "welcome.json"))
    await asyncio.to_thread(_viewer_changes_nothing, console, browser)
    stored = load_flow(console.engine, "welcome")
    assert stored.status is FlowStatus.not_running and stored.version == 1


def _wrong_password_then_admin(console: Console, driver: webdriver.Chrome) -> None:
    driver.get(f"{console.url}/flows")
    assert "/login" in driver.current_url  # not signed in: sent to sign in
    driver.find_element(By.ID, "email").send_keys("admin@example.com")
    driver.find_element(By.ID, "password").send_keys("not the password")
    driver.find_element(By.ID, "sign-in").click()
    _until(driver, lambda d: "do not match" in _text(d, ".flash"))
    console.sign_in(driver, "admin@example.com")
    driver.get(f"{console.url}/users")
    assert "viewer@example.com" in _text(driver, "#users")
    # The sign-in form itself needs the token its page gave.
    driver.delete_all_cookies()
    driver.get(f"{console.url}/login")
    assert driver.execute_async_script(POST, f"{console.url}/login", "forged") == 403


async def test_signing_in(console: Console, browser: webdriver.Chrome) -> None:
    await asyncio.to_thread(_wrong_password_then_admin, console, browser)


def _every_kind_in_the_editor(console: Console, driver: webdriver.Chrome) -> list[str]:
    console.sign_in(driver, "marketer@example.com")
    driver.get(f"{console.url}/flows/webinar-follow-up/edit")
    _until(driver, lambda d: _text(d, "#verdict") == "Valid, ready to run")
    # Each step has its form: one card per step, each named by its id.
    cards = driver.find_elements(By.CSS_SELECTOR, "#steps .step")
    stored = load_flow(console.engine, "webinar-follow-up")
    assert [c.get_attribute("data-step") for c in cards] == [s.id for s in stored.flow.steps]
    logs: list[dict[str, object]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [str(entry["message"]) for entry in logs]


async def test_every_step_kind_has_its_form(console: Console, browser: webdriver.Chrome) -> None:
    deploy_flow(console.engine, read_document(PROJECT_ROOT / "flows" / "every-step.json"))
    logged = await asyncio.to_thread(_every_kind_in_the_editor, console, browser)
    assert not [line for line in logged if "editor.js" in line]  # no script error


def _overlaps_in_their_section(console: Console, driver: webdriver.Chrome) -> None:
    console.sign_in(driver, "viewer@example.com")
    driver.get(f"{console.url}/flows/vip-form")
    section = _text(driver, "#overlaps")
    assert "Overlaps with forms and links" in section
    row = _text(driver, '#overlaps tr[data-step="to-vip"]')
    assert "Mark as VIP" in row and "selection_id" in row
    assert "'Webinar sign-up'" in row and "whichever comes second changes nothing" in row
    # Not repeated among the other warnings.
    assert "comes second changes nothing" not in " ".join(
        element.text for element in driver.find_elements(By.CSS_SELECTOR, "ul.problems")
    )
    console.shot(driver, "flow-overlaps")


async def test_overlaps_have_a_section_of_their_own(
    console: Console, browser: webdriver.Chrome
) -> None:
    document = {
        "id": "vip-form",
        "name": "VIPs from the webinar form",
        "triggers": [{"kind": "form_submitted", "form_id": DEMO_FORM_ID}],
        "start": "to-vip",
        "steps": [
            {
                "id": "to-vip",
                "name": "Mark as VIP",
                "type": "add_to_list",
                "selection_id": VIP_SELECTION_ID,
                "next": "done",
            },
            {"id": "done", "type": "finish"},
        ],
    }
    deploy_flow(console.engine, document)
    await asyncio.to_thread(_overlaps_in_their_section, console, browser)


def _in_row(driver: webdriver.Chrome, email: str, css: str) -> Any:
    return driver.find_element(By.CSS_SELECTOR, f'#users tr[data-user="{email}"] {css}')


def _admin_manages_users(console: Console, driver: webdriver.Chrome) -> None:
    # The marketer's session, kept to try again once they are deactivated.
    console.sign_in(driver, "marketer@example.com")
    marketer_session = driver.get_cookie("console_session")
    assert marketer_session is not None
    driver.delete_all_cookies()

    console.sign_in(driver, "admin@example.com")
    driver.get(f"{console.url}/users")
    Select(_in_row(driver, "viewer@example.com", 'select[name="role"]')).select_by_value("marketer")
    _in_row(driver, "viewer@example.com", "button.change-role").click()
    _until(driver, lambda d: "viewer@example.com is now marketer" in _text(d, ".flash"))
    _in_row(driver, "marketer@example.com", "button.deactivate").click()
    _in_row(driver, "marketer@example.com", "dialog button.confirm").click()
    _until(driver, lambda d: "marketer@example.com is deactivated" in _text(d, ".flash"))
    assert _text(driver, '#users tr[data-user="marketer@example.com"] .status') == "deactivated"
    # The last active admin stays one.
    Select(_in_row(driver, "admin@example.com", 'select[name="role"]')).select_by_value("viewer")
    _in_row(driver, "admin@example.com", "button.change-role").click()
    _until(driver, lambda d: "last active admin" in _text(d, ".flash"))
    console.shot(driver, "users")

    # The deactivated marketer's open session has ended, and they cannot sign in again.
    driver.delete_all_cookies()
    driver.get(f"{console.url}/login")
    driver.add_cookie({"name": "console_session", "value": marketer_session["value"]})
    driver.get(f"{console.url}/flows")
    assert "/login" in driver.current_url
    driver.find_element(By.ID, "email").send_keys("marketer@example.com")
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "sign-in").click()
    _until(driver, lambda d: "do not match an active user" in _text(d, ".flash"))
    assert not driver.find_elements(By.ID, "who")

    # The former viewer now edits: the new-flow form is theirs.
    driver.delete_all_cookies()
    console.sign_in(driver, "viewer@example.com")
    driver.get(f"{console.url}/flows")
    assert driver.find_elements(By.ID, "new-flow")


async def test_an_admin_changes_roles_and_deactivates_users(
    console: Console, browser: webdriver.Chrome
) -> None:
    await asyncio.to_thread(_admin_manages_users, console, browser)
    with session(console.engine) as db:
        users = {u.email: u for u in db.exec(select(User)).all()}
    assert users["viewer@example.com"].role == "marketer"
    assert not users["marketer@example.com"].active
    assert users["admin@example.com"].role == "admin"


def _too_many_attempts(console: Console, driver: webdriver.Chrome) -> None:
    def attempt(email: str, password: str) -> str:
        driver.get(f"{console.url}/login")
        driver.find_element(By.ID, "email").send_keys(email)
        driver.find_element(By.ID, "password").send_keys(password)
        driver.find_element(By.ID, "sign-in").click()
        # The answer's page: signed in, or the sign-in page again with its message.
        _until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#who, .flash"))
        return "" if driver.find_elements(By.ID, "who") else _text(driver, ".flash")

    for _ in range(5):
        assert "do not match" in attempt("viewer@example.com", "not the password")
    # The sixth attempt is refused before the password is looked at, even the right one.
    refused = attempt("viewer@example.com", PASSWORD)
    assert "Too many failed sign-ins for viewer@example.com" in refused
    assert "try again in 15 minutes" in refused
    # Another account from the same address signs in as usual.
    assert attempt("admin@example.com", PASSWORD) == ""


async def test_sign_in_attempts_are_limited_per_account_and_address(
    console: Console, browser: webdriver.Chrome
) -> None:
    await asyncio.to_thread(_too_many_attempts, console, browser)


def _edit_with_suggestions_and_moves(console: Console, driver: webdriver.Chrome) -> None:
    console.sign_in(driver, "marketer@example.com")
    driver.get(f"{console.url}/flows/welcome/edit")
    _until(driver, lambda d: _text(d, "#verdict") == "Valid, ready to run")
    # The upload field stays inside its side panel.
    inside = driver.execute_script(
        "const input = document.getElementById('upload').getBoundingClientRect();"
        "const card = document.getElementById('upload').closest('.card').getBoundingClientRect();"
        "return input.left >= card.left && input.right <= card.right;"
    )
    assert inside

    # Typing "[[" offers the merge tags that match what follows; Enter takes the first.
    subject = _field(driver, "welcome-email", "subject")
    subject.send_keys(Keys.END, " [[customer.fir")
    _until(driver, lambda d: d.find_element(By.ID, "tag-suggestions").is_displayed())
    offered = [li.text for li in driver.find_elements(By.CSS_SELECTOR, "#tag-suggestions li")]
    assert offered == ["[[customer.firstname]]"]
    console.shot(driver, "step-editor-suggestions")
    subject.send_keys(Keys.ENTER)
    assert (
        subject.get_attribute("value") == "Welcome, [[customer.firstname]]! [[customer.firstname]]"
    )
    assert not driver.find_element(By.ID, "tag-suggestions").is_displayed()
    # Clicking a tag in the side panel still inserts it at the cursor.
    subject.send_keys(" ")
    driver.find_element(By.XPATH, "//ul[@id='merge-tag-list']//a[.='[[company.name]]']").click()
    assert str(subject.get_attribute("value")).endswith("[[customer.firstname]] [[company.name]]")

    # The first step moved down the list, and the last one cannot move further down.
    first = driver.find_element(By.CSS_SELECTOR, '[data-step="welcome-email"] .move-down')
    assert driver.find_element(
        By.CSS_SELECTOR, '[data-step="welcome-email"] .move-up'
    ).get_attribute("disabled")
    first.click()
    _until(
        driver,
        lambda d: (
            [
                c.get_attribute("data-step")
                for c in d.find_elements(By.CSS_SELECTOR, "#steps .step")
            ][:2]
            == ["settle-in", "welcome-email"]
        ),
    )
    assert driver.find_element(By.CSS_SELECTOR, '[data-step="done"] .move-down').get_attribute(
        "disabled"
    )
    _until(driver, lambda d: _text(d, "#verdict") == "Valid, ready to run")
    driver.find_element(By.ID, "save").click()
    _until(driver, lambda d: "Saved as version 2" in _text(d, "#saved"))


async def test_the_editor_suggests_merge_tags_and_moves_steps(
    console: Console, browser: webdriver.Chrome
) -> None:
    deploy_flow(console.engine, read_document(PROJECT_ROOT / "flows" / "welcome.json"))
    await asyncio.to_thread(_edit_with_suggestions_and_moves, console, browser)
    stored = load_flow(console.engine, "welcome")
    assert [s.id for s in stored.flow.steps][:2] == ["settle-in", "welcome-email"]
    [email] = [s for s in stored.flow.steps if isinstance(s, SendEmail) and s.id == "welcome-email"]
    assert email.subject.endswith("[[customer.firstname]] [[company.name]]")
