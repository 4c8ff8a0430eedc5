"""No node steers, freezes or ends a run: real hub and node processes on 127.0.0.1.

The tiny app (tests/deployment/apps.py) makes every aggregate known in advance: partition
``p`` adds ``p + 1`` to each of the model's four entries and claims ``p + 1`` examples, its
evaluation reports the loss ``sum(w)`` on one example, and the centralized "loss" is
``sum(w)`` too, so the history shows the model itself. The hostile nodes here are played
in-process over the real fleet API (a raw ``FleetClient``), as an attacker holding one
enrolled node's certificate would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.records import Arrays, Message
from pollinate.transport.client import FleetClient, HubRefused
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import RUN_TIMEOUT, BackgroundRun, Deployment, wait_for
from tests.deployment.conftest import deployment as deployment  # the fixture

# the defaults of Validation: claims count at most 5 x the round's median claim, changes at
# most 3 x the round's median change norm
EXAMPLES_MULTIPLE = 5
NORM_MULTIPLE = 3.0
HEARTBEAT_TIMEOUT = 5.0  # short, but no healthy node misses it (nodes beat every 5/6 s)

Answer = Callable[[Message], Message]


class HostileNode:
    """An enrolled node that answers its tasks as ``answer`` says, until stopped."""

    def __init__(self, address: str, name: str, answer: Answer) -> None:
        self.client = FleetClient(address)
        self.client.heartbeat("", {}, name=name)
        self.node_id = self.client.node_id
        self.answer = answer
        self.stop = threading.Event()
        self.answered: list[str] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.run: BackgroundRun | None = None

    def start(self, run: BackgroundRun) -> None:
        self.run = run
        self._thread.start()

    def _serve(self) -> None:
        assert self.run is not None
        deadline = time.monotonic() + RUN_TIMEOUT
        while not self.stop.is_set() and time.monotonic() < deadline and self.run.process.alive():
            self.client.heartbeat("", {})
            task = self.client.pull_task(0.5)
            if task is None:
                continue
            try:
                self.client.push_reply(self.answer(task.message))
                self.answered.append(task.message.kind)
            except HubRefused:
                pass  # refused is a fine answer too: the test checks the run

    def close(self) -> None:
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(RUN_TIMEOUT)
        self.client.close()


@pytest.fixture
def hostile(deployment: Deployment) -> Iterator[list[HostileNode]]:
    made: list[HostileNode] = []
    yield made
    for node in made:
        node.close()


def honest_evaluation(task: Message) -> Message:
    return task.reply(loss=float(task.arrays["w"].sum()), num_examples=1)


def steer_fit(task: Message) -> Message:
    """The attack measured on 2026-12-06: -5 x the global model, with 2**62 examples."""
    if task.kind == "fit":
        return task.reply(arrays=Arrays({"w": -5.0 * task.arrays["w"]}), num_examples=2**62)
    return honest_evaluation(task)


def steer_evaluation(task: Message) -> Message:
    """Loss 0 on 10**15 examples: the federated loss would read 0 without a bound."""
    if task.kind == "fit":
        return task.reply(arrays=task.arrays, num_examples=1)
    return task.reply(loss=0.0, num_examples=10**15)


def bounded_round(w: float, hostile: tuple[float, int]) -> float:
    """The model entry after one round of partitions 0 and 1 and a hostile reply (its new
    entry, its claim), under the default bounds (``loop/bounds.py``), by hand: claims count
    at most 5 x their lower median, changes keep at most 3 x the lower median of the
    non-zero change norms (a change of ``d`` per entry has norm ``2 |d|``)."""
    changes = [1.0, 2.0, hostile[0] - w]
    claims = [1, 2, hostile[1]]
    counted = [min(c, EXAMPLES_MULTIPLE * sorted(claims)[1]) for c in claims]
    norms = sorted(2 * abs(d) for d in changes if d != 0.0)
    bound = NORM_MULTIPLE * norms[(len(norms) - 1) // 2] if len(norms) >= 2 else np.inf
    clipped = [d if 2 * abs(d) <= bound else np.sign(d) * bound / 2 for d in changes]
    return w + sum(n * d for n, d in zip(counted, clipped, strict=True)) / sum(counted)


def entries(record: dict) -> float:  # type: ignore[type-arg]
    return float(record["centralized"]["loss"]) / 4  # sum(w) over four equal entries


def run_beside(
    deployment: Deployment,
    hostile: list[HostileNode],
    tmp_path: Path,
    rounds: int,
    answer: Answer,
    stage: str,
) -> list[dict]:  # type: ignore[type-arg]
    """The tiny app for ``rounds`` rounds on two honest nodes and mallory, who answers with
    ``answer`` (connected before the run starts, so it is sampled); the run's history, once
    the run ended well and mallory answered a ``stage`` task."""
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": rounds})
    deployment.start_hub()
    deployment.start_nodes([app, app])
    mallory = HostileNode(deployment.fleet, "mallory", answer)
    hostile.append(mallory)
    run = deployment.start_run(app)
    mallory.start(run)
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None and len(result.history) == rounds + 1
    assert stage in mallory.answered
    return result.history


def test_a_node_sending_minus_five_times_the_model_with_2_62_examples_moves_it_boundedly(
    deployment: Deployment, hostile: list[HostileNode], tmp_path: Path
) -> None:
    history = run_beside(deployment, hostile, tmp_path, 3, steer_fit, "fit")
    w = 0.0
    honest = 0.0
    for record in history[1:]:
        assert (record["replies"], record["failures"], record["applied"]) == (3, 0, True)
        w = bounded_round(w, (-5.0 * w, 2**62))
        honest += 5 / 3  # the two honest nodes alone: (1 x 1 + 2 x 2) / 3
        assert entries(record) == pytest.approx(w, rel=1e-6)
        # the bound: the hostile reply's weight is at most 10 of 13, its change 3 x the
        # median's; before the bounds, one round took the model to -5 x itself (and the
        # demo's accuracy from 0.929 to 0.000)
        assert abs(entries(record)) < 10 * abs(honest)
    # its influence in a round is at most its bounded share times its bounded change
    assert all(abs(entries(r)) < 1e3 for r in history)


def test_an_evaluation_reply_with_loss_0_and_1e15_examples_does_not_set_the_metrics(
    deployment: Deployment, hostile: list[HostileNode], tmp_path: Path
) -> None:
    history = run_beside(deployment, hostile, tmp_path, 2, steer_evaluation, "evaluate")
    for record in history[1:]:
        loss = float(record["centralized"]["loss"])  # what honest nodes report, sum(w)
        # its claim counts 5 x the median claim (1): 5 of 7, not 10**15 of 10**15 + 2
        assert record["evaluate"]["loss"] == pytest.approx((loss + loss + 5 * 0.0) / 7)
        assert record["evaluate"]["loss"] > 0.2 * loss


def test_a_node_that_never_pulls_its_task_costs_the_round_only_its_own_reply(
    deployment: Deployment, tmp_path: Path
) -> None:
    # a short deadline for the test; the default one (RoundDeadline) ends the round too
    app = write_tiny_app(tmp_path / "app", **{"num-rounds": 2, "round-timeout": 3.0})
    deployment.start_hub()
    deployment.start_nodes([app, app])
    silent = FleetClient(deployment.fleet)
    silent.heartbeat("", {}, name="silent")
    beating = threading.Event()

    def beat() -> None:  # alive, so sampled, but it never pulls a task
        while not beating.wait(0.5):
            silent.heartbeat("", {})

    beater = threading.Thread(target=beat, daemon=True)
    beater.start()
    try:
        result = deployment.run(app)
    finally:
        beating.set()
        beater.join(10)
        silent.close()

    assert result.returncode == 0, result.stdout + result.stderr
    history = result.history
    assert history is not None and len(history) == 3
    for rnd, record in enumerate(history[1:], start=1):
        assert (record["replies"], record["failures"], record["applied"]) == (2, 1, True)
        [fit, evaluate] = record["failed"]
        assert (fit["node_id"], fit["stage"]) == (silent.node_id, "fit")
        assert evaluate["stage"] == "evaluate"
        assert "no reply within round_timeout=3.0s" in fit["reason"]
        # the honest two's mean, as if the silent node were not there
        assert entries(record) == pytest.approx(rnd * 5 / 3)


def test_when_every_node_blinks_mid_run_the_run_waits_for_them_and_finishes(
    deployment: Deployment, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    markers = tmp_path / "markers"
    markers.mkdir()
    app = write_tiny_app(
        tmp_path / "app",
        **{"num-rounds": 3, "gate-dir": str(gates), "marker-dir": str(markers)},
    )
    hub = deployment.start_hub(heartbeat_timeout=HEARTBEAT_TIMEOUT)
    nodes = deployment.start_nodes([app, app])
    (gates / "r1").touch()
    run = deployment.start_run(app)
    # both nodes hold their round-2 fit at the gate; then both are gone
    wait_for(
        lambda: all((markers / f"fit-p{p}-r2").exists() for p in (0, 1)),
        "both nodes to start their round-2 fit",
        RUN_TIMEOUT,
    )
    for node in nodes:
        node.process.kill()

    def waiting() -> bool:
        return "waiting up to" in hub.stderr + run.process.stdout

    wait_for(waiting, "the run to say it waits for nodes", RUN_TIMEOUT)
    assert run.process.alive()
    (gates / "r2").touch()
    (gates / "r3").touch()
    back = [deployment.start_node(app, partition=p, partitions=2) for p in (0, 1)]
    assert sorted(n.node_id for n in back) == sorted(n.node_id for n in nodes)
    result = run.finish()

    assert result.returncode == 0, result.stdout + result.stderr
    history = result.history
    assert history is not None and [r["round"] for r in history] == [0, 1, 2, 3]
    assert (history[1]["replies"], history[1]["failures"]) == (2, 0)
    assert history[2]["applied"] is False  # its fit tasks died with the nodes
    assert (history[3]["replies"], history[3]["failures"], history[3]["applied"]) == (2, 0, True)
