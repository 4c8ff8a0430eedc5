"""The hub's /healthz and /readyz, on its metrics server: real HTTP against a real Hub.

Ready means the hub serves (``Hub.start`` ran: its ports listen, its runs resumed) and its
data dir takes a new file now; live means its HTTP server answers.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pollinate.hub.hub import Hub
from pollinate.hub.metrics import HubMetrics, MetricsServer


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


@pytest.fixture
def server(hub: Hub) -> Iterator[MetricsServer]:
    metrics = HubMetrics(hub)
    server = metrics.serve("127.0.0.1:0")
    try:
        yield server
    finally:
        server.stop()
        metrics.close()


def test_a_hub_is_live_at_once_and_ready_once_it_serves(hub: Hub, server: MetricsServer) -> None:
    assert get(server.port, "/healthz") == (200, "ok\n")
    status, text = get(server.port, "/readyz")
    assert status == 503 and "not serving yet" in text
    hub.start()
    assert get(server.port, "/readyz") == (200, "ok\n")
    status, text = get(server.port, "/metrics")
    assert status == 200 and "pollinate_nodes" in text


def test_a_hub_whose_data_dir_refuses_writes_is_not_ready(
    hub: Hub, server: MetricsServer, tmp_path: Path
) -> None:
    hub.start()
    # the probe file cannot be replaced by a directory's name: every write of it now fails
    # (as root, a read-only mode would not stop the write; a directory in the way does)
    (tmp_path / "hub" / "writable").unlink(missing_ok=True)
    (tmp_path / "hub" / "writable" / "in-the-way").mkdir(parents=True)
    status, text = get(server.port, "/readyz")
    assert status == 503 and "data dir refuses writes" in text
    assert "\n" not in text.rstrip("\n")  # one line: what kubectl describe shows
    assert get(server.port, "/healthz")[0] == 200  # alive: restarting it would not help
    (tmp_path / "hub" / "writable" / "in-the-way").rmdir()
    (tmp_path / "hub" / "writable").rmdir()
    assert get(server.port, "/readyz") == (200, "ok\n")


def test_a_closed_hub_is_not_ready(hub: Hub, server: MetricsServer) -> None:
    hub.start()
    hub.close()
    assert get(server.port, "/readyz")[0] == 503
