"""Time to a target accuracy with stragglers: synchronous FedAvg against FedBuff.

The demo app (examples/quickstart-numpy: softmax regression on scikit-learn's digits, 20
clients, Dirichlet(0.5) label skew, 5 local epochs) in simulation, where 20% of the clients
are 10x slower: ``client_speed=Stragglers(0.2, slowdown=10.0)`` holds a slow client's reply
back for 9x the time its fit really took, without holding a worker thread.

Three configurations, each run ``--repeat`` times with another draw of slow clients
(``Stragglers(seed=repeat)``; the synchronous and asynchronous runs of one repeat share it):

- FedAvg without stragglers: the baseline, what the stragglers cost;
- FedAvg with stragglers: every round waits for its slowest client;
- FedBuff with stragglers: ``buffer_size=10`` (the paper's K), every client training at once,
  ``server_learning_rate=1.0``, staleness weight ``1 / sqrt(1 + tau)``.

Measured: wall-clock seconds from the start of the run until the centralized test accuracy
first reaches each target, and the rounds (steps, for FedBuff) it took. Both strategies
evaluate on the server after every round or step (FedBuff steps twice as often, so it pays
for twice the evaluations), federated evaluation is off, and so is the anomaly score of
update validation (it needs a round's updates side by side, which FedBuff never has).

    .venv/bin/python benchmarks/async.py               # about a minute on 2 cores
    .venv/bin/python benchmarks/async.py --repeat 3    # quicker
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import time
from pathlib import Path

import pollinate
from pollinate import Sampling
from pollinate.app import load_app
from pollinate.loop import Event, RoundFinished
from pollinate.simulation import Stragglers

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "quickstart-numpy"
CLIENTS = 20
TARGETS = (0.90, 0.93)
# budgets, far above what either needs (FedAvg: ~7 rounds to 0.90; FedBuff: ~12 steps)
MAX_ROUNDS, MAX_STEPS = 60, 240


class _Reached(Exception):
    """Every target is reached: the run can stop."""


@dataclasses.dataclass
class Trace:
    """When (seconds, round or step) the run first reached each target."""

    reached: dict[float, tuple[float, int]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    rounds: int = 0


def one_run(name: str, repeat: int) -> Trace:
    app = load_app(APP, {})
    base = app.server_app()
    common = {
        "sampling": Sampling(fraction_evaluate=0.0),
        "evaluate_fn": base.strategy.evaluate_fn,
        "on_fit_config_fn": base.strategy.on_fit_config_fn,
    }
    if name == "FedBuff":
        strategy: pollinate.Strategy = pollinate.FedBuff(
            buffer_size=10, server_learning_rate=1.0, **common
        )
        rounds = MAX_STEPS
    else:
        strategy, rounds = pollinate.FedAvg(**common), MAX_ROUNDS
    server_app = dataclasses.replace(
        base,
        strategy=strategy,
        num_rounds=rounds,
        validation=pollinate.Validation(anomaly_threshold=None),
    )
    speed = None if name == "FedAvg, no stragglers" else Stragglers(0.2, 10.0, seed=repeat)
    trace = Trace()
    started = time.perf_counter()

    def on_event(event: Event) -> None:
        if not isinstance(event, RoundFinished) or event.record.round == 0:
            return
        trace.rounds = event.record.round
        accuracy = float(event.record.centralized["accuracy"])
        for target in TARGETS:
            if accuracy >= target and target not in trace.reached:
                trace.reached[target] = (time.perf_counter() - started, event.record.round)
        if len(trace.reached) == len(TARGETS):
            raise _Reached

    with contextlib.suppress(_Reached):
        pollinate.run_simulation(
            server_app,
            app.client_fn,
            CLIENTS,
            seed=repeat,
            run_config=app.config,
            on_event=on_event,
            client_speed=speed,
        )
    trace.seconds = time.perf_counter() - started
    return trace


def summary(traces: list[Trace], target: float) -> str:
    hits = [t.reached[target] for t in traces if target in t.reached]
    if len(hits) < len(traces):
        return f"reached in {len(hits)} of {len(traces)} runs"
    seconds = [s for s, _ in hits]
    rounds = [r for _, r in hits]
    return (
        f"best {min(seconds):6.3f} s  median {statistics.median(seconds):6.3f} s  "
        f"({statistics.median(rounds):g} rounds/steps, median)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="runs per configuration")
    args = parser.parse_args()
    names = ("FedAvg, no stragglers", "FedAvg", "FedBuff")
    traces: dict[str, list[Trace]] = {name: [] for name in names}
    started = time.perf_counter()
    for repeat in range(args.repeat):
        for name in names:  # interleaved, so that a busy spell of the machine hits all three
            traces[name].append(one_run(name, repeat))
    print(
        f"# {CLIENTS} clients, 20% of them 10x slower, {args.repeat} repeats, "
        f"{os.cpu_count()} cores, {time.perf_counter() - started:.0f} s in all"
    )
    for target in TARGETS:
        print(f"\ntime to test accuracy >= {target:.2f}")
        for name in names:
            label = name if name != "FedAvg" else "FedAvg, stragglers"
            label = label if name != "FedBuff" else "FedBuff, stragglers (K=10)"
            print(f"  {label:<28} {summary(traces[name], target)}")
        pairs = [
            (sync.reached[target][0], buff.reached[target][0])
            for sync, buff in zip(traces["FedAvg"], traces["FedBuff"], strict=True)
            if target in sync.reached and target in buff.reached
        ]
        if pairs:
            ratios = sorted(s / b for s, b in pairs)
            print(
                f"  FedAvg / FedBuff, same stragglers: median {statistics.median(ratios):.2f}x "
                f"(range {ratios[0]:.2f}x to {ratios[-1]:.2f}x over {len(ratios)} repeats)"
            )


if __name__ == "__main__":
    main()
