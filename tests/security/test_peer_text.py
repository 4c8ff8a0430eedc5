"""Text from peers is bounded and inert (issue 13, "Freeze").

A node that answered its fit task with a long ``error`` used to freeze the hub: rich's
highlighter took 71 s over 80 KB and more than 7 minutes over 1 MiB, the control port and the
heartbeats timing out meanwhile. Here a hostile node, played over the real fleet API, sends
that reply to a real hub process while two honest nodes train: the run finishes, its history
records the failure as one line that says how long the error was, and the control port
answers all along. An honest client with a long exception message, in simulation under
``-v``, gets the same treatment.
"""

from __future__ import annotations

import json
import struct
import threading
import time
from pathlib import Path

from pollinate import wire
from pollinate.errors import PollinateError
from pollinate.records import Message
from pollinate.text import MAX_TEXT
from pollinate.transport import CHUNK_BYTES, NODE_ID_HEADER, data_chunk
from pollinate.transport.client import ControlClient, FleetClient, HubUnavailable
from tests.cli_runner import history_rounds, pollinate
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import RUN_TIMEOUT, BackgroundRun, Deployment, wait_for
from tests.deployment.conftest import deployment as deployment  # the fixture

# As long as a reply's header may be (wire.Limits.max_header_bytes is 1 MiB), less the rest
HUGE = (1 << 20) - 4096


def raw_reply(task: Message, error: str) -> bytes:
    """The wire bytes of a failed reply to ``task`` whose error is ``error``, exactly: built
    by hand, as a hostile node would, since a Message caps its own error."""
    encoded = wire.encode(task.reply())
    header = json.loads(encoded[8:])
    header["error"] = error
    body = json.dumps(header).encode()
    return wire.MAGIC + struct.pack("<I", len(body)) + body


class HostileNode:
    """A node played over the real fleet API: answers every fit with a huge error."""

    def __init__(self, address: str) -> None:
        self.client = FleetClient(address)
        self.client.heartbeat("", {}, name="hostile")
        self.node_id = self.client.node_id
        self.sent = 0
        self.errors: list[str] = []

    def serve_safely(self, run: BackgroundRun) -> None:
        try:
            self.serve(run)
        except Exception as exc:  # seen by the test, not lost in this thread
            self.errors.append(f"{type(exc).__name__}: {exc}")

    def serve(self, run: BackgroundRun) -> None:
        """Until the run ends: every fit answered with the huge error, evaluations well."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline and run.process.alive():
            task = self.next_task()
            if task is None:
                continue
            if task.kind != "fit":
                self.client.push_reply(task.reply(loss=0.0, num_examples=1))
                continue
            self.push(raw_reply(task, "x" * HUGE))
            self.sent += 1

    def next_task(self) -> Message | None:
        """A task, or None after a short wait (or while the hub restarts)."""
        try:
            self.client.heartbeat("", {}, name="hostile")
            pulled = self.client.pull_task(0.2)
        except HubUnavailable:
            time.sleep(0.2)
            return None
        return None if pulled is None else pulled.message

    def push(self, data: bytes) -> None:
        pieces = range(0, len(data), CHUNK_BYTES)
        chunks = iter([data_chunk(data[i : i + CHUNK_BYTES]) for i in pieces])
        # the FleetClient's own stream, fed bytes that no Message would encode
        *_, ack = self.client._push(
            chunks, metadata=[(NODE_ID_HEADER, str(self.node_id))], timeout=RUN_TIMEOUT
        )
        assert ack.accepted, ack.reason


class ControlWatch:
    """Asks the hub's control port for its runs, again and again, until stopped; counts the
    answers and keeps every failure (a frozen hub makes each call time out after 30 s)."""

    def __init__(self, address: str) -> None:
        self.client = ControlClient(address)
        self.answers = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.client.list_runs()
                self.answers += 1
            except PollinateError as exc:
                self.failures.append(str(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.client.close()


def test_a_megabyte_error_from_a_node_is_recorded_cut_and_the_hub_keeps_answering(
    deployment: Deployment, tmp_path: Path
) -> None:
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2})
    hub = deployment.start_hub()
    deployment.start_nodes([app, app])
    hostile = HostileNode(deployment.fleet)
    watch = ControlWatch(deployment.control)
    try:
        run = deployment.start_run(app)
        serving = threading.Thread(target=hostile.serve_safely, args=(run,), daemon=True)
        serving.start()
        wait_for(lambda: hostile.sent or hostile.errors, "the hostile reply to be accepted")
        # the hub is handling it now (routing, the run loop failing the task, logging it)
        listed = deployment.cli("ls", "--hub", deployment.control)
        assert listed.returncode == 0, listed.stderr
        result = run.finish()
        serving.join(timeout=RUN_TIMEOUT)
    finally:
        watch.stop()
        hostile.client.close()

    assert hostile.errors == []
    assert hostile.sent == 2  # one fit task a round
    assert watch.failures == [] and watch.answers > 0  # the control port answered throughout
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    reason = f"client failed: {'x' * MAX_TEXT}… [{HUGE} chars]"
    for record in result.history[1:]:
        assert (record["replies"], record["failures"]) == (2, 1)
        assert record["failed"] == [
            {"node_id": hostile.node_id, "stage": "fit", "reason": reason, "kind": "client"}
        ]
    # the run's log and the hub's own log say so on one line each, and hold no megabyte
    log = deployment.cli("log", result.run_id, "--hub", deployment.control)
    assert log.returncode == 0, log.stderr
    assert f"…[{HUGE}chars]" in "".join(log.stdout.split())
    assert len(log.stdout) < 100_000
    assert f"…[{HUGE}chars]" in "".join(hub.stderr.split())
    assert len(hub.stderr) < 100_000
    assert hub.alive()


CLIENT = """\
import numpy as np

from pollinate import Arrays, Client


class Loud(Client):
    def __init__(self, partition):
        self.partition = partition

    def fit(self, arrays, config):
        if self.partition == 0:
            raise RuntimeError("x" * 40000)
        return Arrays({"w": arrays["w"] + 1}), 1, {}

    def evaluate(self, arrays, config):
        return 0.0, 1, {}


def client_fn(context):
    return Loud(context.partition_id)
"""

SERVER = """\
import numpy as np

from pollinate import Arrays, FedAvg, ServerApp


def server_fn(run_config):
    return ServerApp(FedAvg(), num_rounds=1, initial_arrays=Arrays({"w": np.zeros(4)}))
"""

PYPROJECT = """\
[project]
name = "loud-app"
version = "0.1.0"

[tool.pollinate]
server = "loud_app.server:server_fn"
client = "loud_app.client:client_fn"

[tool.pollinate.simulation]
clients = 3
"""


def test_a_long_exception_message_in_simulation_is_cut_and_logged_as_one_line(
    tmp_path: Path,
) -> None:
    app = tmp_path / "app"
    (app / "loud_app").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "loud_app" / "__init__.py").write_text("")
    (app / "loud_app" / "server.py").write_text(SERVER)
    (app / "loud_app" / "client.py").write_text(CLIENT)

    done = pollinate("run", app, "-v", "--out", tmp_path / "out", cwd=tmp_path, timeout=600)

    assert done.returncode == 0, done.stderr[-5000:]
    history = history_rounds(tmp_path / "out")
    [failure] = history[1]["failed"]
    reason = failure["reason"]
    assert reason.startswith("client failed: RuntimeError: xxxx")
    line = 1 + CLIENT.splitlines().index('            raise RuntimeError("x" * 40000)')
    assert "… [40000 chars] (at " in reason and reason.endswith(f"client.py:{line})")
    assert len(reason) <= len("client failed: ") + MAX_TEXT
    # under -v the failure is logged, cut, on one line (rich wraps it across screen lines)
    assert "…[40000chars](at" in "".join(done.stderr.split())
    assert len(done.stderr) < 20_000


def test_a_recorded_megabyte_error_replayed_after_a_hub_restart_costs_nothing(
    deployment: Deployment, tmp_path: Path
) -> None:
    # the honest nodes wait at the gate: the round is still open when the hub dies
    gate = tmp_path / "gate"
    gate.mkdir()
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 1, "gate-dir": str(gate)})
    hub = deployment.start_hub()
    deployment.start_nodes([app, app])
    hostile = HostileNode(deployment.fleet)
    run = deployment.start_run(app)
    task = wait_for(hostile.next_task, "a fit task for the hostile node", RUN_TIMEOUT)
    assert task.kind == "fit"
    hostile.push(raw_reply(task, "x" * HUGE))
    replies = deployment.directory / "hub-data" / "runs"
    wait_for(lambda: list(replies.glob("*/replies/*.pln")), "the hostile reply on disk")
    hub.kill()
    hub = deployment.restart_hub()  # resumes round 1: the recorded reply is handed back
    watch = ControlWatch(deployment.control)
    try:
        (gate / "r1").touch()
        serving = threading.Thread(target=hostile.serve_safely, args=(run,), daemon=True)
        serving.start()
        result = run.finish()
        serving.join(timeout=RUN_TIMEOUT)
    finally:
        watch.stop()
        hostile.client.close()

    assert hostile.errors == []
    assert watch.failures == [] and watch.answers > 0
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    [first] = result.history[1:]
    assert first["resumed"] and (first["replies"], first["failures"]) == (2, 1)
    reason = f"client failed: {'x' * MAX_TEXT}… [{HUGE} chars]"
    assert first["failed"] == [
        {"node_id": hostile.node_id, "stage": "fit", "reason": reason, "kind": "client"}
    ]
    assert f"…[{HUGE}chars]" in "".join(hub.stderr.split())  # the new hub logged it, cut
    assert len(hub.stderr) < 100_000
