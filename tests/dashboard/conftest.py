"""A real headless Chromium (Debian's ``chromium`` and ``chromium-driver``) driven by Selenium.

Nothing is downloaded: the driver is ``/usr/bin/chromedriver``, so Selenium's own browser
manager never runs. ``make system-deps`` installs both packages. The deployment fixtures
(a real hub and nodes) come from ``tests/deployment/conftest.py``; ``hub`` and ``dashboard``
are a hub in the test's process and its dashboard.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from pollinate.dashboard import DashboardServer, serve_dashboard
from pollinate.hub.hub import Hub
from tests.deployment.conftest import (  # noqa: F401 (fixtures and the report hook)
    deployment,
    pytest_runtest_makereport,
)
from tests.deployment.conftest import wait_for as poll  # noqa: F401 (the tests' wait)

CHROMIUM = "/usr/bin/chromium"
DRIVER = "/usr/bin/chromedriver"
SCREENSHOTS = os.environ.get("POLLINATE_SCREENSHOTS", "")
"""A directory to save each page's screenshot into (docs/img: see docs/monitoring.md)."""


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    if not (shutil.which(CHROMIUM) and shutil.which(DRIVER)):
        pytest.fail("Chromium is missing: `make system-deps` installs chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub in this process, without TLS (nodes named by the test: ``node_id_for_name``)."""
    hub = Hub(tmp_path / "hub")
    yield hub
    hub.close()


@pytest.fixture
def dashboard(hub: Hub) -> Iterator[DashboardServer]:
    """``hub``'s dashboard, on a free loopback port."""
    server = serve_dashboard(hub, "127.0.0.1:0")
    yield server
    server.stop()


def console_errors(driver: WebDriver) -> list[str]:
    """The console's errors since the last call (uncaught exceptions, failed loads, CSP
    refusals, console.error)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def texts(driver: WebDriver, selector: str) -> list[str]:
    """The rendered text of each element ``selector`` matches, read at one instant (the
    pages replace elements as updates come, which would make a list of handles stale)."""
    script = "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText)"
    return list(driver.execute_script(script, selector))


def log_in_with_cookie(driver: WebDriver, base: str, session_id: str) -> None:
    """Give the browser a session minted in the test, as the login link's cookie."""
    driver.get(base + "/static/dashboard.css")  # a cookie needs a page of its site
    driver.add_cookie(
        {
            "name": "pollinate_session",
            "value": session_id,
            "path": "/",
            "httpOnly": True,
            "sameSite": "Strict",
        }
    )


def screenshot(driver: WebDriver, name: str) -> None:
    """Save the whole page (up to 2000 pixels high) as ``dashboard-NAME.png`` in
    ``SCREENSHOTS``, if set."""
    if not SCREENSHOTS:
        return
    Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
    width, height = driver.get_window_size()["width"], driver.get_window_size()["height"]
    tall = int(driver.execute_script("return document.documentElement.scrollHeight"))
    driver.set_window_size(width, min(max(tall + 140, 600), 2000))
    driver.save_screenshot(str(Path(SCREENSHOTS) / f"dashboard-{name}.png"))
    driver.set_window_size(width, height)
