"""Real deployments on 127.0.0.1: a hub process, node processes, and the CLI as a user runs it.

Every process started here is killed when its deployment closes (a fixture finalizer), every
wait is bounded, and waits are on conditions (a port that accepts, a line in a log, a file),
never on sleeps. Background processes write stdout/stderr to files in the deployment's
directory; when a test fails, the report shows them.
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pollinate.loop.history import History
from pollinate.transport.client import FleetClient

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart-numpy"
POLLINATE = [sys.executable, "-m", "pollinate"]
# wide enough that rich never wraps a line we look for; no colour codes in the text
ENV = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("POLLINATE_HUB", None)  # commands name their hub; no login of the machine's user counts
ENV.pop("POLLINATE_CREDENTIALS", None)

# Generous bounds: they only matter when something hangs, and CI machines can be slow.
START_TIMEOUT = 60.0
RUN_TIMEOUT = 120.0
CLI_TIMEOUT = 60.0


def free_ports(count: int) -> list[int]:
    """Distinct ports nobody listens on now: bind port 0 and let the kernel choose."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds saying what was awaited."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


class Process:
    """A background ``pollinate`` process whose output goes to files."""

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        directory: Path,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.stdout_path = directory / f"{name}.stdout"
        self.stderr_path = directory / f"{name}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.popen = subprocess.Popen(
                [*prefix, *POLLINATE, *args],
                stdout=out,
                stderr=err,
                env={**ENV, **(env or {})},
                cwd=directory,
            )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to say goodbye, as in a crash."""
        if self.alive():
            self.popen.kill()
        self.popen.wait(timeout=30)

    def report(self) -> str:
        status = "running" if self.alive() else f"exit {self.popen.returncode}"
        return (
            f"===== {self.name} ({status}): {' '.join(map(str, self.popen.args))}\n"
            f"--- stdout\n{self.stdout}--- stderr\n{self.stderr}"
        )


@dataclass
class Node:
    process: Process
    partition: int
    node_id: int


@dataclass
class RunResult:
    """What ``pollinate run --hub`` left: exit status, output and history.jsonl (if written)."""

    returncode: int
    stdout: str
    stderr: str
    history: list[dict[str, Any]] | None

    @property
    def run_id(self) -> str:
        found = re.search(r"run (\w+) submitted", self.stdout)
        assert found, f"no run id in the output of `pollinate run`:\n{self.stdout}{self.stderr}"
        return found.group(1)


class BackgroundRun:
    """``pollinate run --hub`` going on while the test does something else."""

    def __init__(self, process: Process, out: Path) -> None:
        self.process, self.out = process, out

    def wait_for_output(self, text: str, timeout: float = RUN_TIMEOUT) -> None:
        wait_for(lambda: text in self.process.stdout, f"{text!r} from `pollinate run`", timeout)

    def finish(self, timeout: float = RUN_TIMEOUT) -> RunResult:
        try:
            returncode = self.process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"`pollinate run` did not end within {timeout:.0f}s") from None
        return RunResult(returncode, self.process.stdout, self.process.stderr, _history(self.out))


class Deployment:
    """A hub and nodes on 127.0.0.1, each a real process, all killed by ``close``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.processes: list[Process] = []
        self.fleet = self.control = self.metrics = self.dashboard = ""
        # the commands' own config directory (no login of the machine's user leaks in), and
        # what else their environment holds (POLLINATE_CREDENTIALS for a TLS hub)
        self.env = {"XDG_CONFIG_HOME": str(directory / "config")}
        self._names = itertools.count()

    # --- processes ------------------------------------------------------------------------

    def spawn(
        self,
        name: str,
        *args: str,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ) -> Process:
        """``pollinate ARGS`` in the background, run through ``prefix`` (e.g. ``ip netns
        exec NS``) if given, with the deployment's environment and ``env`` over it."""
        environment = {**self.env, **(env or {})}
        process = Process(f"{name}-{next(self._names)}", args, self.directory, prefix, environment)
        self.processes.append(process)
        return process

    def start_hub(self, *, heartbeat_timeout: float = 30.0) -> Process:
        """A hub on free ports; returns once its address accepts connections. ``fleet`` and
        ``control`` name the same address: nodes and users reach a hub at one."""
        self.fleet, self.metrics, self.dashboard = (f"127.0.0.1:{p}" for p in free_ports(3))
        self.control = self.fleet
        return self.restart_hub(heartbeat_timeout=heartbeat_timeout)

    def restart_hub(self, *, heartbeat_timeout: float = 30.0) -> Process:
        """A hub on the ports and data dir of the last one (which must be gone)."""
        hub = self.spawn(
            "hub",
            "hub",
            "--data-dir",
            str(self.directory / "hub-data"),
            "--address",
            self.fleet,
            "--metrics-address",
            self.metrics,
            "--dashboard-address",
            self.dashboard,
            "--insecure",
            "--heartbeat-timeout",
            str(heartbeat_timeout),
        )
        wait_for(lambda: _accepts(self.fleet, hub), f"the hub to listen on {self.fleet}")
        return hub

    def dashboard_link(self, hub: Process) -> str:
        """The one-time dashboard login link ``hub`` printed."""
        found = wait_for(
            lambda: re.search(r"dashboard: (http://\S+/login\?token=\S+)", hub.stdout),
            "the hub's dashboard login link",
        )
        return str(found.group(1))

    def start_nodes(self, apps: Sequence[Path]) -> list[Node]:
        """One node per app, serving partition ``i`` of ``len(apps)``; returns once each
        has connected to the hub (and so has a node id)."""
        started = [self._spawn_node(app, p, len(apps)) for p, app in enumerate(apps)]
        return [Node(process, p, self._node_id(process)) for p, process in enumerate(started)]

    def start_node(
        self,
        app: Path,
        partition: int,
        partitions: int,
        *,
        hub: str = "",
        prefix: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> Node:
        """A node serving ``partition``, dialling ``hub`` (default: the hub's fleet address)
        from inside ``prefix`` (e.g. a network namespace), with more ``pollinate node``
        ``args`` (``--label region=eu``, ``--resources gpus=1``)."""
        process = self._spawn_node(app, partition, partitions, hub, prefix, args)
        return Node(process, partition, self._node_id(process))

    def _spawn_node(
        self,
        app: Path,
        partition: int,
        partitions: int,
        hub: str = "",
        prefix: Sequence[str] = (),
        args: Sequence[str] = (),
    ) -> Process:
        return self.spawn(
            f"node-p{partition}",
            "node",
            "--hub",
            hub or self.fleet,
            "--app",
            str(app),
            "--node-config",
            f"partition-id={partition}",
            "--node-config",
            f"num-partitions={partitions}",
            "--insecure",
            "--verbose",
            *args,
            prefix=prefix,
        )

    def _node_id(self, process: Process) -> int:
        def connected() -> int | None:
            if not process.alive():
                raise AssertionError(f"{process.name} exited before it connected")
            found = re.search(r"connected as node (\d+)", process.stderr)
            return int(found.group(1)) if found else None

        return int(wait_for(connected, f"{process.name} to connect"))

    # --- the CLI --------------------------------------------------------------------------

    def cli(
        self, *args: str | Path, timeout: float = CLI_TIMEOUT, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``pollinate ARGS`` to completion, as a user runs it (``env`` over the
        deployment's environment)."""
        try:
            return subprocess.run(
                [*POLLINATE, *map(str, args)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**ENV, **self.env, **(env or {})},
                cwd=self.directory,
                check=False,
            )
        except subprocess.TimeoutExpired:
            command = " ".join(map(str, args))
            raise AssertionError(
                f"`pollinate {command}` did not end within {timeout:.0f}s"
            ) from None

    def run(self, app: Path, *args: str, timeout: float = RUN_TIMEOUT) -> RunResult:
        """``pollinate run APP --hub CONTROL --out DIR ARGS`` to completion."""
        out = self.directory / f"run-{next(self._names)}"
        done = self.cli("run", app, "--hub", self.control, "--out", out, *args, timeout=timeout)
        return RunResult(done.returncode, done.stdout, done.stderr, _history(out))

    def start_run(self, app: Path, *args: str) -> BackgroundRun:
        out = self.directory / f"run-{next(self._names)}"
        args = ("run", str(app), "--hub", self.control, "--out", str(out), *args)
        return BackgroundRun(self.spawn("run", *args), out)

    def reserve_node_ids(self, names: Sequence[str]) -> list[int]:
        """Say hello under each name, in order, before the nodes do: the hub gives ids in
        order of first contact, so this fixes which named node gets which id."""
        ids = []
        for name in names:
            client = FleetClient(self.fleet)
            try:
                client.heartbeat("", {}, name=name)
                ids.append(client.node_id)
            finally:
                client.close()
        return ids

    # --- the end --------------------------------------------------------------------------

    def logs(self) -> str:
        return "\n".join(process.report() for process in self.processes)

    def close(self) -> None:
        for process in self.processes:
            if process.alive():
                process.popen.kill()
        for process in self.processes:
            process.popen.wait(timeout=30)


def _accepts(address: str, process: Process) -> bool:
    if not process.alive():
        raise AssertionError(f"{process.name} exited")
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


def _history(out: Path) -> list[dict[str, Any]] | None:
    if not (out / "history.jsonl").exists():
        return None
    return [record.to_dict() for record in History.load(out).rounds]


# --- fixtures -------------------------------------------------------------------------------

_OPEN: list[Deployment] = []


@contextmanager
def open_deployment(directory: Path) -> Iterator[Deployment]:
    """A deployment in ``directory`` for the length of a fixture."""
    directory.mkdir(parents=True, exist_ok=True)
    deployment = Deployment(directory)
    _OPEN.append(deployment)
    try:
        yield deployment
    finally:
        _OPEN.remove(deployment)
        deployment.close()


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    """A fresh deployment for one test: start its hub and nodes in the test."""
    with open_deployment(tmp_path / "deployment") as opened:
        yield opened


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report shows the output of every process of its deployments."""
    report = yield
    if report.failed and _OPEN:
        for deployment in _OPEN:
            report.sections.append(
                (f"pollinate processes in {deployment.directory}", deployment.logs())
            )
    return report
