"""The control commands against a live hub: ls, log, stop, and run's user errors."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import Deployment, RunResult, open_deployment


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_app(tmp_path_factory.mktemp("control") / "app")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, app: Path) -> Iterator[Deployment]:
    """One hub and two nodes, shared by the tests of this module (each run waits to end)."""
    with open_deployment(tmp_path_factory.mktemp("control-fleet")) as deployment:
        deployment.start_hub()
        deployment.start_nodes([app, app])
        yield deployment


@pytest.fixture(scope="module")
def finished(fleet: Deployment, app: Path) -> RunResult:
    result = fleet.run(app)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def listing_of(fleet: Deployment, run_id: str) -> str:
    """The line of `pollinate ls` that shows ``run_id``."""
    done = fleet.cli("ls", "--hub", fleet.control)
    assert done.returncode == 0, done.stderr
    [line] = [line for line in done.stdout.splitlines() if run_id in line]
    return line


def words(text: str) -> str:
    return " ".join(text.split())


def test_ls_lists_a_finished_run(fleet: Deployment, finished: RunResult) -> None:
    line = listing_of(fleet, finished.run_id)
    assert "tiny-app" in line and "finished" in line and "2/2" in line


def test_log_replays_the_rounds_of_a_finished_run(fleet: Deployment, finished: RunResult) -> None:
    for follow in ("--no-follow", "--follow"):  # following a run that ended ends at once
        done = fleet.cli("log", finished.run_id, "--hub", fleet.control, follow)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert [line.split()[1] for line in lines if line.startswith("round ")] == ["0", "1", "2"]
        assert lines[-1] == f"run {finished.run_id} finished"


def test_stop_ends_a_long_run(fleet: Deployment, app: Path) -> None:
    run = fleet.start_run(app, "--rounds", "100000")
    run.wait_for_output("round   1")
    run_id = RunResult(0, run.process.stdout, "", None).run_id

    stopped = fleet.cli("stop", run_id, "--hub", fleet.control)
    assert stopped.returncode == 0, stopped.stderr
    result = run.finish()

    assert result.returncode == 1  # the run did not finish
    assert f"run {run_id} stopped: stopped by a user" in result.stdout
    assert "stopped" in listing_of(fleet, run_id)
    again = fleet.cli("stop", run_id, "--hub", fleet.control)
    assert again.returncode == 2
    assert f"run {run_id} is stopped, not running" in words(again.stderr)


def test_log_and_stop_of_an_unknown_run_say_so(fleet: Deployment) -> None:
    for command in ("log", "stop"):
        done = fleet.cli(command, "nosuchrun", "--hub", fleet.control)
        assert done.returncode == 2
        assert "no run 'nosuchrun'; `pollinate ls` lists the runs" in words(done.stderr)
        assert "Traceback" not in done.stdout + done.stderr


def test_an_unknown_config_key_is_refused_with_a_suggestion(fleet: Deployment, app: Path) -> None:
    result = fleet.run(app, "--config", "slow-second=1")
    assert result.returncode == 2
    assert "the app has no config key 'slow-second'. Did you mean 'slow-seconds'?" in words(
        result.stderr
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_a_server_fn_that_raises_fails_its_run_and_the_hub_serves_on(
    fleet: Deployment, app: Path
) -> None:
    failed = fleet.run(app, "--config", "strategy=FedNope")

    assert failed.returncode == 1
    reason = "ValueError: unknown strategy 'FedNope'"
    assert f"run {failed.run_id} failed: {reason}" in failed.stdout
    line = listing_of(fleet, failed.run_id)
    assert "failed" in line and reason in line
    assert "Traceback" not in failed.stdout + failed.stderr

    after = fleet.run(app)
    assert after.returncode == 0, after.stdout + after.stderr
    assert after.history is not None and after.history[-1]["replies"] == 2


def test_the_hub_exits_promptly_on_sigterm(deployment: Deployment, app: Path) -> None:
    # a connected node keeps a long-poll waiting at the hub, which must not hold the exit up
    hub = deployment.start_hub()
    deployment.start_nodes([app, app])
    hub.popen.send_signal(signal.SIGTERM)
    try:
        assert hub.popen.wait(timeout=15) == 0
    except subprocess.TimeoutExpired:
        pytest.fail("the hub was still running 15s after SIGTERM")
