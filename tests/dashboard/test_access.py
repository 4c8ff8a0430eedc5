"""Who may see and do what on the dashboard, and text from outside shown as text, in a real
Chromium against an in-process hub (``hub``, ``dashboard``: conftest.py) whose run (a real run
process) waits for nodes."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from pollinate.app import app_hash
from pollinate.dashboard import DashboardServer
from pollinate.hub.access import DEFAULT_PROJECT, LOCAL_ADMIN, Caller, Role
from pollinate.hub.archives import pack_app
from pollinate.hub.hub import Hub
from pollinate.hub.state import RunStatus
from pollinate.loop.events import RoundFinished
from pollinate.loop.history import Failure, RoundRecord
from tests.dashboard.conftest import console_errors, log_in_with_cookie, poll, texts
from tests.deployment.apps import write_tiny_app

VIEWER = Caller("vera", Role.VIEWER, frozenset({DEFAULT_PROJECT}))
MEMBER = Caller("max", Role.MEMBER, frozenset({DEFAULT_PROJECT}))
STRANGER = Caller("sam", Role.MEMBER, frozenset({"oncology"}))  # the run is in `default`
HOSTILE_METRIC = '<img src=x onerror="window.pwned=1">loss'
HOSTILE_ID = '"><img src=x onerror="window.pwned=1">'
HOSTILE_LINE = "<script>window.pwned = 1</script> node says hi"


@pytest.fixture
def run_id(hub: Hub, tmp_path: Path) -> str:
    """A running run: its round 1 waits for nodes, of which there are none."""
    app = write_tiny_app(tmp_path / "app")
    run_id = hub.submit_run(pack_app(app), app_hash(app), {}, None, 0)
    poll(lambda: _round_logged(hub, run_id, 0), "the run's round 0")
    return run_id


def test_a_viewer_sees_no_stop_button_and_a_forged_stop_is_refused(
    hub: Hub, dashboard: DashboardServer, run_id: str, browser: WebDriver
) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    session_id, session = dashboard.open_session(VIEWER)
    log_in_with_cookie(browser, base, session_id)
    browser.get(f"{base}/runs/{run_id}")
    poll(lambda: texts(browser, "#status .status") == ["running"], "the run shown running")
    assert not browser.find_element(By.ID, "stop").is_displayed()
    assert console_errors(browser) == []
    # the viewer's own session, its own CSRF token, sent from the dashboard's own page
    answer = _post_from_page(browser, f"/api/runs/{run_id}/stop", session.csrf)
    assert answer["status"] == 403
    assert "user vera (viewer in default) cannot stop runs" in answer["body"]["error"]
    [refused] = console_errors(browser)  # the browser notes the refusal, and only it
    assert f"/api/runs/{run_id}/stop" in refused and "403" in refused
    assert _post(base, f"/api/runs/{run_id}/stop", session_id, session.csrf)[0] == 403
    refusals = [row for row in hub.audit() if row.who == "vera"]
    assert refusals and all(row.outcome.startswith("refused") for row in refusals)
    assert _status(hub, run_id) is RunStatus.RUNNING


def test_a_member_stops_a_run_with_the_button_and_a_stop_without_the_csrf_token_is_refused(
    hub: Hub, dashboard: DashboardServer, run_id: str, browser: WebDriver
) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    session_id, session = dashboard.open_session(MEMBER)
    assert _post(base, f"/api/runs/{run_id}/stop", session_id, "")[0] == 403
    assert _post(base, f"/api/runs/{run_id}/stop", session_id, "x" * 43)[0] == 403
    assert _post(base, f"/api/runs/{run_id}/stop", "", session.csrf)[0] == 401
    assert _status(hub, run_id) is RunStatus.RUNNING
    log_in_with_cookie(browser, base, session_id)
    browser.get(f"{base}/runs/{run_id}")
    stop = poll(lambda: _displayed(browser, "stop"), "the stop button")
    stop.click()
    poll(lambda: _status(hub, run_id) is RunStatus.STOPPED, "the run stopped")
    poll(lambda: texts(browser, "#status .status") == ["stopped"], "the run shown stopped")
    assert not browser.find_element(By.ID, "stop").is_displayed()
    assert console_errors(browser) == []
    stops = [row for row in hub.audit() if row.who == "max" and row.action == "stop run"]
    assert [row.outcome for row in stops] == ["ok"]  # the hub audits the dashboard's stop


def test_a_member_of_another_project_sees_neither_the_run_nor_its_nodes(
    hub: Hub, dashboard: DashboardServer, run_id: str, browser: WebDriver
) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    session_id, session = dashboard.open_session(STRANGER)
    log_in_with_cookie(browser, base, session_id)
    browser.get(f"{base}/runs/{run_id}")
    poll(lambda: "cannot read runs" in browser.find_element(By.ID, "status").text, "refusal")
    assert texts(browser, "#rounds tbody tr") == []
    browser.get(f"{base}/runs")
    poll(lambda: browser.find_element(By.ID, "live").text == "live", "the runs stream")
    assert texts(browser, "#runs tbody tr") == []
    assert _post(base, f"/api/runs/{run_id}/stop", session_id, session.csrf)[0] == 403
    assert console_errors(browser) == []
    assert _status(hub, run_id) is RunStatus.RUNNING


def test_without_a_session_nothing_is_served_and_a_login_link_works_once(
    dashboard: DashboardServer, run_id: str, browser: WebDriver
) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    for path in ("/", "/runs", f"/runs/{run_id}", "/nodes/1", "/events/fleet", "/events/runs"):
        assert _get_status(base + path) == 401, path
    link = dashboard.login_link(VIEWER)
    browser.get(link)
    cookie = browser.get_cookie("pollinate_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert browser.execute_script("return document.body.dataset.role") == "viewer"
    assert _get_status(link) == 403  # spent


def test_text_from_outside_is_shown_as_text(
    hub: Hub, dashboard: DashboardServer, run_id: str, browser: WebDriver
) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    session_id, _ = dashboard.open_session(LOCAL_ADMIN)
    log_in_with_cookie(browser, base, session_id)
    browser.get(f"{base}/runs/{HOSTILE_ID}")  # an address is text from outside too
    poll(lambda: texts(browser, "h1") == [f"Run {HOSTILE_ID}"], "the page of no such run")
    poll(lambda: "There is no run" in browser.find_element(By.ID, "status").text, "its status")
    browser.get(f"{base}/runs/{run_id}")
    poll(lambda: texts(browser, "#rounds tr[data-round='0']"), "round 0")
    record = RoundRecord(
        round=1,
        centralized={HOSTILE_METRIC: 0.5},
        evaluate={"loss": 0.25},
        failures=1,
        failed=[Failure(7, "fit", HOSTILE_LINE)],
    )
    hub.events.publish(run_id, RoundFinished(record))  # as the run's loop publishes a round
    hub.runs.log(run_id, "log", HOSTILE_LINE)  # as the run's log takes a node's warning
    poll(lambda: texts(browser, "#rounds tr[data-round='1']"), "the hostile round")
    poll(lambda: any(HOSTILE_LINE in t for t in texts(browser, "#log .line")), "the line")
    # the charts follow the table on the next animation frame
    poll(lambda: HOSTILE_METRIC in texts(browser, "figcaption"), "the metric's chart")
    assert HOSTILE_LINE in browser.find_element(By.CSS_SELECTOR, "tr[data-round='1'] .why").text
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert browser.execute_script("return window.pwned") is None
    assert console_errors(browser) == []


def _round_logged(hub: Hub, run_id: str, rnd: int) -> bool:
    rows = hub.state.log_after(run_id, 0)
    return any(r.kind == "round" and json.loads(r.text)["round"] == rnd for r in rows)


def _status(hub: Hub, run_id: str) -> RunStatus | None:
    row = hub.state.run(run_id)
    return None if row is None else row.status


def _displayed(browser: WebDriver, element_id: str) -> object:
    element = browser.find_element(By.ID, element_id)
    return element if element.is_displayed() else None


def _post_from_page(browser: WebDriver, path: str, csrf: str) -> dict[str, object]:
    """A stop request made by script in the page, as a viewer could forge one."""
    return browser.execute_async_script(  # type: ignore[no-any-return]
        """
        const [path, csrf, done] = arguments;
        fetch(path, {method: "POST", headers: {"X-CSRF-Token": csrf}})
          .then(async (r) => done({status: r.status, body: await r.json()}));
        """,
        path,
        csrf,
    )


def _post(base: str, path: str, session_id: str, csrf: str) -> tuple[int, str]:
    request = urllib.request.Request(base + path, method="POST", data=b"")
    request.add_header("Cookie", f"pollinate_session={session_id}")
    request.add_header("X-CSRF-Token", csrf)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
