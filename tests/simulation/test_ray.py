"""The Ray engine, on a two-node Ray cluster started on this machine and bound to 127.0.0.1.

One cluster for the whole module (Ray starts in 10-15 s here): a head and a second node of
one CPU each, as two raylets with their own object stores, started with Ray's own test
utility and stopped at the end. Every test runs against it; the grids it makes share the
test process's connection to it, and the CLI test connects from a process of its own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, Grid, Sampling, ServerApp, Validation
from pollinate.app import load_app
from pollinate.client import ClientFn
from pollinate.dp import AdaptiveClipping, DifferentialPrivacy
from pollinate.loop import ReplyBounded, RoundFinished, run
from pollinate.loop.history import WALL_TIMES
from pollinate.records import Message
from pollinate.simulation import Adversaries, RayEngine, RayGrid, SimulationGrid
from pollinate.simulation.ray_start import LOOPBACK
from tests.golden import record as golden
from tests.loop.grid_contract import Doubler, GridContract, fit_task
from tests.loop.test_summing import Mixed

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "quickstart-numpy"
GOLDEN = ROOT / "tests" / "golden"
pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    with pytest.MonkeyPatch.context() as env:
        for name, value in LOOPBACK.items():
            env.setenv(name, value)  # before Ray is imported: it reads them then
        ray = pytest.importorskip("ray")
        from ray.cluster_utils import Cluster

        temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's sockets live there
        # the cluster notes its address in $RAY_TMPDIR/ray, a folder it does not make (on a
        # fresh machine /tmp/ray is not there): ours, so nothing is left in /tmp/ray either
        env.setenv("RAY_TMPDIR", temp)
        Path(temp, "ray").mkdir()
        head = {"num_cpus": 1, "include_dashboard": False, "temp_dir": temp}
        cluster = Cluster(initialize_head=True, head_node_args=head)
        try:
            cluster.add_node(num_cpus=1)
            # as RayGrid's own ray.init sends an app (the CLI test checks that one)
            app = {"py_modules": [str(DEMO / "quickstart_numpy")]}
            ray.init(address=cluster.address, runtime_env=app, logging_level=logging.WARNING)
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def test_the_cluster_has_two_nodes_listening_on_loopback_only(cluster: Any) -> None:
    import psutil
    import ray

    assert [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]] == ["127.0.0.1"] * 2
    me = psutil.Process()
    listening = [
        (process.name(), c.laddr.ip, c.laddr.port)
        for process in [me, *me.children(recursive=True)]
        for c in _connections(process)
        if c.status == psutil.CONN_LISTEN
    ]
    assert any(name == "gcs_server" for name, _, _ in listening)
    exposed = [s for s in listening if s[1] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert exposed == []


class Hangs(Client):
    """Sleeps in fit on the node named by ``hang_on`` (a thread event cannot reach Ray)."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if config.get("hang_on") == self.node:
            time.sleep(30)  # its worker is killed when the grid closes
        return Doubler(self.node).fit(arrays, config)


class TestRayGrid(GridContract):
    @pytest.fixture(autouse=True)
    def _cluster(self, cluster: Any) -> None:
        pass

    def make_grid(self, client_fn: ClientFn, num_nodes: int) -> Grid:
        return RayGrid(client_fn, num_nodes, concurrency=2)

    def test_the_deadline_ends_dispatch_without_the_hung_reply(self) -> None:
        grid = self.make_grid(lambda ctx: Hangs(ctx.node_id), 3)
        try:
            tasks = [fit_task(n, hang_on=0) for n in grid.nodes()]
            started = time.monotonic()
            replies = list(grid.dispatch(tasks, timeout=2.0))
        finally:
            grid.close()
        # a task is never queued behind a hung client: node 2 goes to the idle worker
        assert sorted(r.node_id for r in replies) == [1, 2]
        assert time.monotonic() - started < 5


class WhereAmI(Client):
    def fit(self, arrays, config):
        import ray

        time.sleep(0.05)  # long enough that one worker cannot take every task
        return arrays, 1, {"ray-node": ray.get_runtime_context().get_node_id()}


def test_clients_run_on_both_nodes_of_the_cluster(cluster: Any) -> None:
    grid = RayGrid(lambda ctx: WhereAmI(), 20)
    try:
        replies = list(grid.dispatch([fit_task(n) for n in grid.nodes()], timeout=60))
    finally:
        grid.close()
    assert [r.node_id for r in replies] == list(range(20))  # in instruction order
    assert len({r.metrics["ray-node"] for r in replies}) == 2


@pytest.mark.parametrize("case", ["fedavg-scale-attack", "sampled-half", "secure", "dp"])
def test_the_history_equals_the_in_process_engines(cluster: Any, case: str) -> None:
    """The golden histories, which the in-process engine gives (tests/golden), exactly;
    secure aggregation's stages reach each client on the worker that holds its secrets."""
    got = golden.history(golden.CASES[case], engine=RayEngine())
    assert got == json.loads((GOLDEN / f"{case}.json").read_text())


def test_pollinate_run_engine_ray_on_the_cluster_writes_the_in_process_history(
    cluster: Any, tmp_path: Path
) -> None:
    pollinate = str(Path(sys.executable).parent / "pollinate")
    command = [pollinate, "run", str(DEMO), "--rounds", "2"]
    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK}  # the CLI sets them
    env["PYTHONPATH"] = ""  # the app travels in Ray's store: workers need not find it
    ray_engine = ["--engine", "ray", "--address", cluster.address]
    for engine, out in (([], "threads"), (ray_engine, "ray")):
        done = subprocess.run(
            [*command, *engine, "--out", str(tmp_path / out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    threads, ray = (_history_lines(tmp_path / out) for out in ("threads", "ray"))
    assert ray == threads and len(ray) == 3  # rounds 0, 1 and 2
    model = [np.load(tmp_path / out / "model.npz") for out in ("threads", "ray")]
    assert all(np.array_equal(model[0][k], model[1][k]) for k in model[0].files)


def test_a_client_fn_that_cannot_travel_says_so(cluster: Any) -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(Exception, match="lock"):
        RayGrid(lambda ctx: Doubler(0) if lock else None, 2)


def test_secure_aggregation_tasks_come_back_in_order_whichever_worker_is_free(
    cluster: Any,
) -> None:
    """Each client's secagg task goes to the worker that owns it (node id modulo 2 here):
    the first three to worker 0, the last three to worker 1, which takes them while worker
    0 works through its own; the replies still come in instruction order."""
    grid = RayGrid(lambda ctx: Doubler(ctx.node_id), 6, concurrency=2)
    nodes = [0, 2, 4, 1, 3, 5]
    tasks = [Message("secagg", task_id=f"s{n}", run_id="r", round=1, node_id=n) for n in nodes]
    try:
        replies = list(grid.dispatch(tasks, timeout=60))
    finally:
        grid.close()
    assert [r.node_id for r in replies] == nodes
    assert all(r.error for r in replies)  # no protocol state: each client says so


STREAMING = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)


@pytest.mark.parametrize("screen", ["streaming", "streaming-dp", "relative"])
def test_a_streaming_run_sums_on_the_workers_with_the_in_process_history(
    cluster: Any, screen: str
) -> None:
    """One partial sum per worker per round comes back, and the history is the in-process
    engine's (DP-FedAvg's too: its noised model and adaptive bound); a screen relative to
    the round (the demo's) keeps every update (no sum)."""
    app = load_app(DEMO, {"num-rounds": "3"})

    def server_app() -> ServerApp:  # a fresh strategy for each run (DP's bound moves)
        made = app.server_app()
        if screen.startswith("streaming"):
            made = replace(made, validation=STREAMING)
        if screen == "streaming-dp":
            # 9 of the run's 60 changes within it (counted in-process): tallies cross
            clipping = AdaptiveClipping(initial_norm=2.0, count_stddev=0.5)
            dp = DifferentialPrivacy(
                made.strategy, noise_multiplier=0.3, adaptive=clipping, noise_seed=7
            )
            made = replace(made, strategy=dp)
        return made

    attack = Adversaries(0.2, "scale")
    options: dict[str, Any] = {"run_config": app.config, "adversaries": attack}
    here = SimulationGrid(app.client_fn, app.clients, **options)
    ray = RayGrid(app.client_fn, app.clients, concurrency=2, **options)
    try:
        expected = run(here, server_app(), seed=1).history.rounds
        got = run(ray, server_app(), seed=1)
    finally:
        here.close()
        ray.close()
    assert _records(got.history.rounds) == _records(expected)
    assert ray.sums_received == (0 if screen == "relative" else 2 * 3)


def test_failures_and_rejections_on_workers_are_recorded_as_in_process(cluster: Any) -> None:
    validation = replace(STREAMING, max_norm=50.0, max_examples=100)
    initial = Arrays({"w": np.linspace(-1, 1, 50, dtype=np.float32)})

    def events_and_rounds(grid: Grid) -> tuple[list[Any], list[dict[str, Any]]]:
        strategy = FedAvg(sampling=Sampling(fraction_evaluate=0.0))
        app = ServerApp(strategy, num_rounds=2, initial_arrays=initial, validation=validation)
        events: list[Any] = []
        try:
            result = run(grid, app, seed=2, on_event=events.append)
        finally:
            grid.close()
        kept = [e for e in events if not isinstance(e, RoundFinished)]
        return kept, _records(result.history.rounds)

    ray = RayGrid(lambda ctx: Mixed(ctx.node_id), 7, concurrency=2)
    got = events_and_rounds(ray)
    assert got == events_and_rounds(SimulationGrid(lambda ctx: Mixed(ctx.node_id), 7))
    assert ray.sums_received == 2 * 2
    failed = {f["node_id"]: (f["kind"], f["reason"]) for f in got[1][1]["failed"]}
    assert failed[1][0] == "client" and "no data today" in failed[1][1]
    assert failed[2][0] == "rejected" and "non-finite" in failed[2][1]
    assert failed[3][0] == "rejected" and "max_norm" in failed[3][1]
    assert sum(isinstance(e, ReplyBounded) for e in got[0]) == 2  # node 4, capped each round


class HangsInRoundOne(Client):
    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays, config):
        if self.node == 0 and config["round"] == 1:
            time.sleep(20)  # its worker is killed when the grid closes
        return Arrays({"w": arrays["w"] + 1}), 1, {}


def test_a_hung_client_on_a_worker_costs_its_batch_the_deadline_not_the_round(
    cluster: Any,
) -> None:
    """Round 1: node 0 hangs on worker 0, whose later tasks (2, 4) wait behind it; at the
    deadline the worker sends the sum of what it answered (nothing) and worker 1 its own, and
    the round applies the mean of nodes 1, 3 and 5. Round 2: worker 0 still holds the hung
    client (a task counts until its end is seen), so worker 1 takes every task."""
    strategy = FedAvg(
        sampling=Sampling(fraction_evaluate=0.0), on_fit_config_fn=lambda rnd: {"round": rnd}
    )
    initial = Arrays({"w": np.zeros(3, np.float32)})
    app = ServerApp(
        strategy, num_rounds=2, initial_arrays=initial, validation=STREAMING, round_timeout=3.0
    )
    grid = RayGrid(lambda ctx: HangsInRoundOne(ctx.node_id), 6, concurrency=2)
    try:
        started = time.monotonic()
        result = run(grid, app, seed=0)
        took = time.monotonic() - started
    finally:
        grid.close()
    first, second = result.history.rounds[1:]
    assert [(f.node_id, f.kind) for f in first.failed] == [(n, "timeout") for n in (0, 2, 4)]
    assert "round_timeout=3.0s" in first.failed[0].reason
    assert first.replies == 3 and first.applied
    assert second.replies == 6 and second.failed == []
    assert result.arrays["w"].tolist() == [2.0, 2.0, 2.0]
    assert grid.sums_received == 2 + 1
    assert took < 15  # not the hung client's 20 s


def _records(rounds: list[Any]) -> list[dict[str, Any]]:
    records = [r.to_dict() for r in rounds]
    for record in records:
        for name in WALL_TIMES:
            record.pop(name)
    return json.loads(json.dumps(records))


def _history_lines(out: Path) -> list[dict[str, Any]]:
    """history.jsonl's rounds, without wall-clock times."""
    lines = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    rounds = [line for line in lines if "round" in line]
    for line in rounds:
        for name in WALL_TIMES:
            line.pop(name, None)
    return rounds


def _connections(process: Any) -> list[Any]:
    try:
        return process.net_connections(kind="inet")
    except Exception:  # a process that ended meanwhile
        return []
