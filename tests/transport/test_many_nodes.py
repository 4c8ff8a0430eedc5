"""A hub holds hundreds of enrolled nodes heartbeating at once, and runs a round over them.

The nodes are ``benchmarks/fleet.py``'s simulated ones (the same generator that measures
10,000): each enrolled through the hub's real ``Enrol`` call with a multi-use join token, on
its own mutual-TLS connection, heartbeating at the hub's interval and long-polling
``PullTask`` as ``NodeAgent`` does, all on one asyncio loop in a thread of the test.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

from benchmarks.fleet import SimulatedFleet, Tally, write_app

from pollinate.app import app_hash
from pollinate.hub.archives import pack_app
from pollinate.hub.credentials import HubCredentials
from pollinate.hub.hub import Hub
from pollinate.hub.rate_limit import RateLimiter
from pollinate.transport.ports import serve

NODES = 300
SAMPLE = 200
INTERVAL = 1.0  # seconds between a node's heartbeats, as the hub tells its nodes


class Generator(threading.Thread):
    """The simulated nodes, on an event loop in this thread, until ``done`` is set."""

    def __init__(self, address: str, token: str) -> None:
        super().__init__(daemon=True)
        self.address, self.token = address, token
        self.done = threading.Event()
        self.tally: Tally | None = None
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the test reports it
            self.failure = exc

    async def _main(self) -> None:
        fleet = SimulatedFleet(self.address, self.token, NODES, enrols_at_once=16)
        self.tally = fleet.tally
        credentials = await fleet.enrol_all()
        fleet.start(credentials, until=time.monotonic() + 120)
        try:
            while not self.done.is_set():
                await asyncio.sleep(0.1)
        finally:
            await fleet.stop()


def test_a_hub_holds_hundreds_of_nodes_heartbeating_and_runs_a_round_over_them(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "hub"
    credentials = HubCredentials.load_or_create(data_dir, ["localhost"], ["127.0.0.1"])
    hub = Hub(
        data_dir,
        credentials=credentials,
        heartbeat_interval=INTERVAL,
        enrol_limit=RateLimiter(NODES + 10, 100.0),
    )
    servers = serve(hub, "127.0.0.1:0")
    hub.start()
    token, _ = hub.create_token(600, uses=NODES)
    nodes = Generator(f"127.0.0.1:{servers.port}", token)
    nodes.start()
    try:
        _wait(lambda: len(hub.fleet.alive()) == NODES or nodes.failure is not None, 60)
        assert nodes.failure is None, nodes.failure
        time.sleep(3 * INTERVAL)  # every node beats a few times more
        app = write_app(tmp_path / "app")
        overrides = {"sample": str(SAMPLE), "available": str(NODES)}
        run_id = hub.submit_run(pack_app(app), app_hash(app), overrides, None, 0)
        _wait(lambda: _status(hub, run_id) != "running", 60)
        info = hub.run_info(run_id)
        assert info is not None and info.status == "finished", info
        assert len(hub.fleet.alive()) == NODES
    finally:
        nodes.done.set()
        nodes.join(timeout=30)
        servers.stop(0)
        hub.close()
    tally = nodes.tally
    assert tally is not None
    assert tally.failed_beats == []
    assert len(tally.beats) >= 3 * NODES  # the first heartbeat and at least two more each
    assert len(tally.tasks) == SAMPLE, "each sampled node took its task once"
    assert tally.refused_replies == []
    rounds = [e.text for e in hub.state.log_after(run_id, 0) if e.kind == "round"]
    assert f'"replies": {SAMPLE}' in rounds[-1]
    assert '"failures": 0' in rounds[-1]


def _status(hub: Hub, run_id: str) -> str:
    info = hub.run_info(run_id)
    return "" if info is None else str(info.status)


def _wait(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)
