"""The dashboard of a real hub, in a real Chromium: every page loads clean, and a round shows
on the run page within 2 s of the hub applying it, pushed by server-sent events."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.dashboard.conftest import console_errors, poll, screenshot, texts
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment

ROUND_SHOWN_WITHIN = 2.0
"""The product requirement: seconds from the hub applying a round to the run page showing it."""
ASSERTED_WITHIN = 10.0
"""What the test asserts, with room for a loaded machine; the measured figures are printed."""

# Notes, in the page, when each round's row first appeared (ms since the epoch). Run through
# WebDriver, which the page's content security policy does not apply to.
OBSERVE_ROUNDS = """
window.roundSeen = {};
const note = () => {
  for (const row of document.querySelectorAll('#rounds tr[data-round]')) {
    window.roundSeen[row.dataset.round] ??= Date.now();
  }
};
new MutationObserver(note).observe(document.body, {childList: true, subtree: true});
note();
"""


def test_each_page_loads_clean_and_rounds_appear_live(
    deployment: Deployment, browser: WebDriver, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 3, "gate-dir": str(gates)})
    hub = deployment.start_hub()
    nodes = [
        deployment.start_node(app, p, 2, args=["--label", f"site={site}", "--label", "tier=a"])
        for p, site in enumerate(["berlin", "paris"])
    ]
    base = f"http://{deployment.dashboard}"

    browser.get(deployment.dashboard_link(hub))  # the login link sets the session cookie
    assert browser.current_url == base + "/"
    poll(lambda: texts(browser, "#nodes .state") == ["online", "online"], "two live nodes")
    assert "site=berlin" in texts(browser, "#nodes .chip.label")
    assert any(chip.startswith("cpus=") for chip in texts(browser, "#nodes .chip.resource"))
    assert console_errors(browser) == []

    run = deployment.start_run(app)
    browser.get(base + "/runs")
    run_id = poll(lambda: _a_run(browser), "the run on the runs page")
    assert console_errors(browser) == []

    browser.get(f"{base}/runs/{run_id}")
    poll(lambda: texts(browser, "#rounds tr[data-round='0']"), "round 0 on the run page")
    browser.execute_script(OBSERVE_ROUNDS)
    measured = []
    for rnd in (1, 2, 3):
        (gates / f"r{rnd}").touch()
        seen = poll(
            lambda r=rnd: browser.execute_script(f"return window.roundSeen['{r}']"),
            f"round {rnd} on the run page",
        )
        applied = _applied_at(deployment.directory / "hub-data" / "hub.db", run_id, rnd)
        measured.append(seen / 1000 - applied)
    print(f"round applied -> shown on the run page: {', '.join(f'{s:.3f}' for s in measured)} s")
    assert max(measured) < ASSERTED_WITHIN, f"{measured} (requirement: {ROUND_SHOWN_WITHIN} s)"

    result = run.finish()
    assert result.returncode == 0, result.stdout + result.stderr
    poll(lambda: "finished" in texts(browser, "#status .status"), "the run shown finished")
    # what the page shows is the run's history: counts, who took part, the metrics' charts
    history = result.history
    assert history is not None
    for record in history[1:]:
        row = browser.find_element(By.CSS_SELECTOR, f"#rounds tr[data-round='{record['round']}']")
        cells = [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        assert cells[2:5] == [str(record[k]) for k in ("replies", "failures", "rejected")]
        took_part = texts(browser, f"#rounds tr[data-round='{record['round']}'] .took.ok a")
        assert sorted(took_part) == sorted(f"node {n.node_id}" for n in nodes)
    figures = browser.find_elements(By.CSS_SELECTOR, "figure")
    charts = {figure.get_attribute("data-chart") for figure in figures}
    assert charts == {"metric:loss", "metric:partition", "counts"}
    assert any("finished" in line for line in texts(browser, "#log .line"))
    assert browser.find_elements(By.ID, "stop")[0].is_displayed() is False  # it ended
    assert console_errors(browser) == []
    screenshot(browser, "run")

    browser.get(base + "/runs")
    shown = f"#runs tr[data-run='{run_id}'] .status"
    poll(lambda: texts(browser, shown) == ["finished"], "the run finished on the runs page")
    assert "round 3 / 3" in browser.find_element(By.CSS_SELECTOR, "#runs tbody tr").text
    assert console_errors(browser) == []
    screenshot(browser, "runs")

    browser.get(f"{base}/nodes/{nodes[0].node_id}")
    poll(lambda: texts(browser, "#facts .state") == ["online"], "the node page")
    poll(lambda: "rounds 1, 2, 3" in browser.find_element(By.ID, "took").text, "its rounds")
    assert "partition-id" in texts(browser, "#config td")
    assert texts(browser, "#labels .chip") == ["site=berlin", "tier=a"]
    assert texts(browser, "#facts .expiry") == ["-"]  # an insecure hub: no certificates
    assert console_errors(browser) == []
    screenshot(browser, "node")

    browser.get(base + "/")
    poll(lambda: texts(browser, "#nodes .state") == ["online", "online"], "the fleet")
    assert texts(browser, "#nodes td.runs") == ["-", "-"]  # the run ended: no tasks now
    assert console_errors(browser) == []
    screenshot(browser, "fleet")


def _a_run(browser: WebDriver) -> str | None:
    rows = browser.find_elements(By.CSS_SELECTOR, "#runs tbody tr")
    return rows[0].get_attribute("data-run") if rows else None


def _applied_at(database: Path, run_id: str, rnd: int) -> float:
    """When the hub applied round ``rnd``: the time of its entry in the run's log, committed
    with its checkpoint, just before the hub publishes it."""
    deadline = time.monotonic() + 10
    while True:
        connection = sqlite3.connect(database)
        try:
            rows = connection.execute(
                "SELECT time, text FROM log WHERE run_id = ? AND kind = 'round'", (run_id,)
            ).fetchall()
        finally:
            connection.close()
        for applied, text in rows:
            if json.loads(text)["round"] == rnd:
                return float(applied)
        assert time.monotonic() < deadline, f"round {rnd} is not in the run's log"
        time.sleep(0.05)
