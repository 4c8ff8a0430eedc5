"""A run's server side runs in its own process: confined by Landlock, bounded in memory.

Real run processes started by a real ``Runs`` on a real data dir; the apps' ``server_fn``s
are hostile or greedy on purpose. Each fails alone, saying why; the run beside it finishes.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import pollinate
from pollinate.app import app_hash
from pollinate.hub import sandbox
from pollinate.hub.archives import pack_app
from pollinate.hub.fleet import Fleet
from pollinate.hub.journal import Journal
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState, RunRow
from pollinate.hub.supervisor import RunLimits
from tests.deployment.apps import write_tiny_app

TIMEOUT = 60.0

SERVER = """\
import numpy as np

from pollinate import Arrays, FedAvg, ServerApp


def server_fn(run_config):
    {body}
    return ServerApp(FedAvg(), num_rounds=0, initial_arrays=Arrays({{"w": np.zeros(4)}}))
"""


def hostile_app(directory: Path, body: str) -> Path:
    """An app whose ``server_fn`` runs ``body`` (one line; ``run_config`` is in scope)."""
    directory.mkdir(parents=True)
    (directory / "pyproject.toml").write_text(
        '[project]\nname = "hostile"\n[tool.pollinate]\nserver = "hostile:server_fn"\n'
        'client = "hostile:server_fn"\n[tool.pollinate.config]\ntarget = ""\n'
    )
    (directory / "hostile.py").write_text(SERVER.format(body=body))
    return directory


def submit(runs: Runs, app: Path, **overrides: str) -> str:
    return runs.submit(pack_app(app), app_hash(app), overrides, None, seed=0)


def ended(runs: Runs, run_id: str) -> RunRow:
    runs.join(TIMEOUT)
    row = runs.state.run(run_id)
    assert row is not None and row.status != "running", "the run did not end"
    return row


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state), RunLimits(memory=2 << 30))
    yield runs
    runs.join(TIMEOUT)
    runs.close()
    state.close()


def landlock() -> bool:
    try:
        return sandbox.abi() >= 1
    except sandbox.SandboxUnavailable:
        return False


@pytest.mark.skipif(not landlock(), reason="this kernel has no Landlock")
def test_a_run_cannot_read_the_ca_key_nor_the_database_and_says_why(
    runs: Runs, tmp_path: Path
) -> None:
    data_dir = runs.state.data_dir
    (data_dir / "ca").mkdir()
    (data_dir / "ca" / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    app = hostile_app(tmp_path / "hostile", "open(run_config['target'], 'rb').read()")
    stealing = {
        target: submit(runs, app, target=str(data_dir / target))
        for target in ("ca/ca.key", "hub.db")
    }
    honest = submit(runs, write_tiny_app(tmp_path / "honest"), **{"num-rounds": "0"})

    for target, run_id in stealing.items():
        row = ended(runs, run_id)
        assert row.status == "failed"
        assert row.detail == f"PermissionError: [Errno 13] Permission denied: '{data_dir / target}'"
        assert runs.state.log_after(run_id, 0)[-1].text == f"run {run_id} failed: {row.detail}"
    assert ended(runs, honest).status == "finished"


@pytest.mark.skipif(not landlock(), reason="this kernel has no Landlock")
def test_a_run_cannot_write_outside_its_temp_dir_nor_reach_the_network(
    runs: Runs, tmp_path: Path
) -> None:
    app = hostile_app(tmp_path / "hostile", "open(run_config['target'], 'w').write('x')")
    row = ended(runs, submit(runs, app, target=str(runs.state.data_dir / "planted.py")))
    assert row.detail.startswith("PermissionError: [Errno 13] Permission denied")
    assert not (runs.state.data_dir / "planted.py").exists()

    connect = "__import__('socket').create_connection(('127.0.0.1', 9), timeout=5)"
    row = ended(runs, submit(runs, hostile_app(tmp_path / "dialer", connect)))
    assert row.detail.startswith("PermissionError"), row.detail


def test_a_run_that_allocates_past_its_memory_bound_fails_alone(runs: Runs, tmp_path: Path) -> None:
    greedy = hostile_app(tmp_path / "greedy", "np.ones(1 << 30)")  # 8 GiB of float64 > 2 GiB
    run_id = submit(runs, greedy)
    honest = submit(runs, write_tiny_app(tmp_path / "honest"), **{"num-rounds": "0"})

    row = ended(runs, run_id)
    assert row.status == "failed"
    assert row.detail.startswith("MemoryError: Unable to allocate 8.00 GiB"), row.detail
    assert ended(runs, honest).status == "finished"


def test_the_hub_never_imports_the_apps_code(runs: Runs, tmp_path: Path) -> None:
    app = hostile_app(tmp_path / "hostile", "pass")
    ended(runs, submit(runs, app))
    assert "hostile" not in sys.modules


def test_a_run_process_killed_mid_run_fails_its_run_and_a_concurrent_run_finishes(
    runs: Runs, tmp_path: Path
) -> None:
    killed = submit(runs, write_tiny_app(tmp_path / "waiting"))  # no nodes: round 1 waits
    slow = hostile_app(tmp_path / "slow", "__import__('time').sleep(2)")
    concurrent = submit(runs, slow)  # its server_fn runs while the other is killed
    wait_for(lambda: logged(runs, killed, "waiting up to"), "round 1 to wait for nodes")
    runs._processes[killed].process.send_signal(signal.SIGKILL)

    row = ended(runs, killed)
    assert (row.status, row.detail) == (
        "failed",
        "the run process was killed by SIGKILL (signal 9)",
    )
    assert ended(runs, concurrent).status == "finished"


def logged(runs: Runs, run_id: str, text: str) -> bool:
    return any(text in entry.text for entry in runs.state.log_after(run_id, 0))


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


AS_NOBODY = """\
import json, sys
from pathlib import Path
from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.hub.fleet import Fleet
from pollinate.hub.journal import Journal
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState
from pollinate.hub.supervisor import RunLimits

state = HubState(Path(sys.argv[1]))
runs = Runs(state, Fleet(), Journal(state), RunLimits(memory=2 << 30, user="nobody"))
pairs = zip(sys.argv[2::2], sys.argv[3::2])
apps = [(Path(app), {"target": json.dumps(target)}) for app, target in pairs]
ids = [runs.submit(pack_app(app), app_hash(app), config, None, seed=0) for app, config in apps]
runs.join(60)
print(json.dumps([[state.run(i).status, state.run(i).detail] for i in ids]))
runs.close()
"""
SYSTEM_PYTHON = Path("/usr/bin/python3.11")


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="switching users needs root; the test's hub runs on Debian's python3.11, which "
    "user nobody can run (this venv's interpreter lives under /root, mode 0700)",
)
def test_a_run_as_another_user_runs_as_that_user_and_cannot_read_the_hub(tmp_path: Path) -> None:
    nobody = str(pwd.getpwnam("nobody").pw_uid)
    whoami = hostile_app(
        tmp_path / "whoami", 'import os; assert str(os.getuid()) == run_config["target"]'
    )
    reader = hostile_app(tmp_path / "reader", 'open(run_config["target"]).read()')
    database = tmp_path / "hub" / "hub.db"
    site = next(Path(sys.prefix).glob("lib/python3.11/site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{Path(pollinate.__file__).parents[1]}:{site}"}
    arguments = [str(whoami), nobody, str(reader), str(database)]
    done = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", AS_NOBODY, str(tmp_path / "hub"), *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (status, detail), (read_status, read_detail) = json.loads(done.stdout.splitlines()[-1])
    assert status == "finished", detail  # it ran as nobody
    assert read_status == "failed" and "Permission denied" in read_detail, read_detail
