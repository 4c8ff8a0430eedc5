"""The fleet and node pages show the hub's inventory for the session's caller (name, state,
heartbeat, projects, runs, certificate expiry, labels and resources), kept live, with what
nodes sent shown as text; in a real Chromium against hubs in the test's process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from pollinate.app import app_hash
from pollinate.dashboard import DashboardServer, serve_dashboard
from pollinate.hub.access import LOCAL_ADMIN, Caller, Role
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.security import make_key_and_csr
from tests.dashboard.conftest import console_errors, log_in_with_cookie, poll, texts
from tests.deployment.apps import write_tiny_app

CERT_DAYS = 30
HOSTILE_NAME = '<img src=x onerror="window.pwned=1">berlin'
HOSTILE_LABEL = "<script>window.pwned = 1</script>"
CARDIOLOGY_VIEWER = Caller("vera", Role.VIEWER, frozenset({"cardiology"}))


@pytest.fixture
def tls_hub(tmp_path: Path) -> Iterator[Hub]:
    """A hub with TLS, whose node certificates last ``CERT_DAYS`` days."""
    data_dir = tmp_path / "tls-hub"
    data_dir.mkdir()
    lifetime = CERT_DAYS * 86400
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"], lifetime)
    hub = Hub(data_dir, credentials=credentials)
    yield hub
    hub.close()


@pytest.fixture
def tls_dashboard(tls_hub: Hub) -> Iterator[DashboardServer]:
    server = serve_dashboard(tls_hub, "127.0.0.1:0")
    yield server
    server.stop()


def open_page(browser: WebDriver, dashboard: DashboardServer, caller: Caller, path: str) -> None:
    base = f"http://127.0.0.1:{dashboard.port}"
    log_in_with_cookie(browser, base, dashboard.open_session(caller)[0])
    browser.get(base + path)


def row(browser: WebDriver, node_id: int, cell: str) -> list[str]:
    return texts(browser, f"#nodes tr[data-node='{node_id}'] {cell}")


def test_the_fleet_shows_labels_resources_and_state_and_a_cordon_within_seconds(
    hub: Hub, dashboard: DashboardServer, browser: WebDriver
) -> None:
    node = hub.node_id_for_name("berlin")
    resources = {"cpus": "8", "cpu_load": "0.25", "python": "3.12.1"}
    hub.heartbeat(node, "h", {}, labels={"region": "eu", "site": "berlin"}, resources=resources)
    open_page(browser, dashboard, LOCAL_ADMIN, "/")
    poll(lambda: row(browser, node, ".state") == ["online"], "the node online")
    assert row(browser, node, ".name") == ["berlin"]
    assert row(browser, node, ".chip.label") == ["region=eu", "site=berlin"]
    # the fleet shows the main resources (the node page has them all)
    assert row(browser, node, ".chip.resource") == ["cpu_load=0.25", "cpus=8"]
    assert row(browser, node, "td.projects") == ["default"]
    assert row(browser, node, "td.runs") == ["-"]
    assert row(browser, node, "td.expiry") == ["-"]  # no TLS: no certificate to expire
    assert browser.find_element(By.ID, "summary").text == "1 nodes: 1 online"

    hub.cordon_node(node, True)
    poll(lambda: row(browser, node, ".state") == ["cordoned"], "the cordon", timeout=5)
    assert console_errors(browser) == []

    browser.get(f"http://127.0.0.1:{dashboard.port}/nodes/{node}")
    poll(lambda: texts(browser, "#facts .state") == ["cordoned"], "the node page")
    assert texts(browser, "#labels .chip") == ["region=eu", "site=berlin"]
    assert texts(browser, "#resources .chip") == ["cpu_load=0.25", "cpus=8", "python=3.12.1"]
    assert texts(browser, "#facts .name") == ["berlin"]
    assert console_errors(browser) == []


def test_a_node_shows_the_run_it_has_a_task_of(
    hub: Hub, dashboard: DashboardServer, browser: WebDriver, tmp_path: Path
) -> None:
    nodes = [hub.node_id_for_name(name) for name in ("berlin", "paris")]  # the app needs 2
    for node in nodes:
        hub.heartbeat(node, "h", {})
    app = write_tiny_app(tmp_path / "app")
    run_id = hub.submit_run(pack_app(app), app_hash(app), {}, None, 0)
    open_page(browser, dashboard, LOCAL_ADMIN, "/")
    # the nodes never pull: their round 1 tasks wait for them
    poll(lambda: texts(browser, "#nodes td.runs") == [run_id] * 2, "the run's tasks", timeout=20)
    assert texts(browser, "#nodes td.runs a") == [run_id] * 2  # links to the run's page
    assert console_errors(browser) == []


def test_a_nodes_name_and_labels_are_shown_as_text(
    hub: Hub, dashboard: DashboardServer, browser: WebDriver
) -> None:
    node = hub.node_id_for_name(HOSTILE_NAME)
    hub.heartbeat(node, "h", {}, labels={"site": HOSTILE_LABEL}, resources={"cpus": HOSTILE_LABEL})
    open_page(browser, dashboard, LOCAL_ADMIN, "/")
    poll(lambda: row(browser, node, ".name") == [HOSTILE_NAME], "the hostile name")
    assert row(browser, node, ".chip.label") == [f"site={HOSTILE_LABEL}"]
    assert row(browser, node, ".chip.resource") == [f"cpus={HOSTILE_LABEL}"]
    browser.get(f"http://127.0.0.1:{dashboard.port}/nodes/{node}")
    poll(lambda: texts(browser, "#facts .name") == [HOSTILE_NAME], "the node page")
    assert texts(browser, "#labels .chip") == [f"site={HOSTILE_LABEL}"]
    assert browser.find_elements(By.CSS_SELECTOR, "main script, main img") == []
    assert browser.execute_script("return window.pwned") is None
    assert console_errors(browser) == []


def test_certificate_expiry_shows_and_a_viewer_sees_only_their_projects_nodes(
    tls_hub: Hub, tls_dashboard: DashboardServer, browser: WebDriver
) -> None:
    enrolled = {}
    for project in ("cardiology", "oncology"):
        token = tls_hub.create_token(600, projects=[project])[0]
        _, _, node = tls_hub.enrol(token, make_key_and_csr()[1], "ipv4:192.0.2.7:1")
        tls_hub.heartbeat(node, "h", {}, labels={"ward": project})
        enrolled[project] = node
    cardiology, oncology = enrolled["cardiology"], enrolled["oncology"]

    open_page(browser, tls_dashboard, CARDIOLOGY_VIEWER, "/")
    poll(lambda: row(browser, cardiology, ".state") == ["online"], "the viewer's node")
    assert texts(browser, "#nodes tbody tr td:first-child") == [f"node {cardiology}"]
    assert row(browser, cardiology, "td.projects") == ["cardiology"]
    assert row(browser, cardiology, "td.expiry") == [f"{CERT_DAYS:.1f} days"]
    cert = browser.find_element(By.CSS_SELECTOR, f"tr[data-node='{cardiology}'] .cert")
    year = time.localtime(time.time() + CERT_DAYS * 86400).tm_year
    assert str(year) in (cert.get_attribute("title") or "")  # when, to the second
    browser.get(f"http://127.0.0.1:{tls_dashboard.port}/nodes/{oncology}")
    poll(lambda: "does not know node" in browser.find_element(By.ID, "facts").text, "no page")
    assert texts(browser, "#labels .chip") == []
    assert console_errors(browser) == []

    open_page(browser, tls_dashboard, LOCAL_ADMIN, "/")  # an admin sees every node
    poll(lambda: len(texts(browser, "#nodes .state")) == 2, "both nodes")
    assert row(browser, oncology, ".chip.label") == ["ward=oncology"]
    assert console_errors(browser) == []
