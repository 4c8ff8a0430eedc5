"""``pollinate run APP --dashboard``: a local simulation shown live, in a real Chromium, the way
a hub shows its runs."""

from __future__ import annotations

import re
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.dashboard.conftest import console_errors, poll, texts
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment

LINK = re.compile(r"dashboard: (http://\S+)/login\?token=\S+")


def test_a_simulation_shows_its_rounds_live(
    deployment: Deployment, browser: WebDriver, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2, "gate-dir": str(gates)})
    run = deployment.spawn("run", "run", str(app), "--dashboard")
    link = poll(lambda: LINK.search(run.stdout), "the dashboard's login link")
    browser.get(link.group(0).removeprefix("dashboard: "))
    base = link.group(1)

    browser.get(base + "/runs")
    poll(lambda: texts(browser, "#runs tr[data-run='local'] .status") == ["running"], "the run")
    browser.get(base + "/runs/local")
    poll(lambda: texts(browser, "#rounds tr[data-round='0']"), "round 0")
    assert not browser.find_element(By.ID, "stop").is_displayed()  # Ctrl-C stops it
    (gates / "r1").touch()
    poll(lambda: texts(browser, "#rounds tr[data-round='1']"), "round 1 on the run page")
    took_part = texts(browser, "#rounds tr[data-round='1'] .took.ok a")
    assert sorted(took_part) == ["node 0", "node 1", "node 2"]  # the 3 virtual clients
    figures = browser.find_elements(By.TAG_NAME, "figure")
    assert {f.get_attribute("data-chart") for f in figures} == {
        "metric:loss",
        "metric:partition",
        "counts",
    }
    assert console_errors(browser) == []
    browser.get(base + "/")
    poll(lambda: sorted(texts(browser, "#nodes td:first-child")) == took_part, "the fleet")
    assert console_errors(browser) == []
    (gates / "r2").touch()
    assert run.popen.wait(timeout=120) == 0, run.report()
