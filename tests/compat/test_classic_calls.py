"""Flower's classic tutorial (a server script calling ``start_server``, client scripts
calling ``start_numpy_client``) runs against pollinate with only its ``flwr`` imports
changed: each script is a process of its own, on 127.0.0.1.

``apps/classic`` holds the scripts as Flower's tutorial writes them, on scikit-learn's digits
split between two clients, and the same app in pollinate's simulation shape
(``classictask/sim.py``, which imports the server script's functions).

The deployment run and the simulation agree exactly (asked to a relative 1e-12): with two
clients the arrival order at the hub cannot matter, since a float64 sum of two terms is the
same either way round (IEEE addition commutes; only three or more terms can round
differently), and everything else (sampling every client, the initial model asked of one
client, all zeros, and deterministic lbfgs training) is the same on both sides.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pollinate.flower import start_client
from pollinate.flower.classic import END_GRACE
from pollinate.transport.client import HubUnavailable
from tests.cli_runner import history_rounds, pollinate
from tests.compat.test_flower_apps import with_pollinate_imports

pytestmark = [pytest.mark.slow, pytest.mark.deployment]

TOLERANCE = 1e-12
BOUND = 120.0
"""Seconds any of the scripts may take: a run of three rounds takes a few."""


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def script(app: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=app,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen[str], until: float) -> tuple[int, str, float]:
    """(exit status, output, when it ended), killing it past ``until`` (a monotonic time)."""
    try:
        out, err = process.communicate(timeout=max(until - time.monotonic(), 0.1))
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        return -9, out + err, time.monotonic()
    return process.returncode, out + err, time.monotonic()


def run_tutorial(app: Path, clients: int, clients_first: bool) -> tuple[dict[str, Any], float]:
    """Run server.py and ``clients`` client.py processes; Flower's history, and how long
    after the server the last client ended."""
    address, out = free_address(), app / "history-classic.json"
    common = ["client.py", "--server-address", address, "--num-partitions", str(clients)]
    client_args = [[*common, "--partition-id", str(i)] for i in range(clients)]
    started: list[subprocess.Popen[str]] = []
    if clients_first:
        started = [script(app, *args) for args in client_args]
        time.sleep(2.0)
        assert all(p.poll() is None for p in started), "a client did not wait for its server"
    server = script(app, "server.py", address, str(clients), str(out))
    if not clients_first:
        started = [script(app, *args) for args in client_args]
    until = time.monotonic() + BOUND
    status, output, server_ended = finish(server, until)
    assert status == 0, output
    assert "insecure: no TLS" in output  # pollinate's --insecure warning, logged
    ended = []
    for process in started:
        status, output, when = finish(process, until)
        assert status == 0, output
        assert "Training finished for round 3" in output
        ended.append(when)
    return json.loads(out.read_text()), max(ended) - server_ended


def test_the_classic_tutorial_runs_and_matches_its_simulation(tmp_path: Path) -> None:
    app = with_pollinate_imports("classic", tmp_path)
    history, clients_lag = run_tutorial(app, clients=2, clients_first=False)

    rounds = [1, 2, 3]
    assert [r for r, _ in history["losses_distributed"]] == rounds
    assert [r for r, _ in history["metrics_distributed"]["accuracy"]] == rounds
    assert [r for r, _ in history["losses_centralized"]] == [0, *rounds]
    assert history["metrics_distributed_fit"] == {}  # the clients report no fit metrics
    # the clients end once their server is gone: within its grace, plus start-up slack
    assert clients_lag < END_GRACE + 10

    done = pollinate("run", app, "--out", tmp_path, "--seed", "0", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    simulated = history_rounds(tmp_path)
    for record in simulated:
        rnd = record["round"]
        expected = [("losses_centralized", record["centralized"]["loss"])]
        expected.append(("metrics_centralized", record["centralized"]["accuracy"]))
        if rnd:
            expected.append(("losses_distributed", record["evaluate"]["loss"]))
            expected.append(("metrics_distributed", record["evaluate"]["accuracy"]))
        for field, value in expected:
            series = history[field]
            series = series["accuracy"] if isinstance(series, dict) else series
            ours = dict(map(tuple, series))[rnd]
            assert ours == pytest.approx(value, rel=TOLERANCE, abs=0), (field, rnd)


def test_a_client_started_before_its_server_waits_for_it(tmp_path: Path) -> None:
    app = with_pollinate_imports("classic", tmp_path)
    history, _ = run_tutorial(app, clients=1, clients_first=True)
    assert len(history["losses_distributed"]) == 3


def test_a_client_stops_waiting_for_a_server_at_its_bound() -> None:
    started = time.monotonic()
    with pytest.raises(HubUnavailable, match="no server at .* after"):
        start_client(server_address=free_address(), client=object(), max_wait_time=1.0)
    assert time.monotonic() - started < 5.0
