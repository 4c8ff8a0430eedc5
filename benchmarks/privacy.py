"""Differential privacy, measured: the demo app's accuracy at epsilon 1, 3 and 8.

The demo app (examples/quickstart-numpy: softmax regression on scikit-learn's digits, 20
clients, all sampled every round, Dirichlet(0.5) label skew) trains with hub-side DP-FedAvg
and a fixed clipping norm C: the median norm of the clients' first-round updates, measured
here. For each target epsilon the noise multiplier is the smallest that keeps epsilon at
delta=1e-5 within the target after the run's rounds (``noise_for_epsilon``). Each cell is the
centralized test accuracy after the last round, the median over ``--seeds`` seeds.

    .venv/bin/python benchmarks/privacy.py             # the table in docs/privacy.md
    .venv/bin/python benchmarks/privacy.py --quick     # 5 rounds, one seed
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "quickstart-numpy"
CLIENTS = 20
DELTA = 1e-5
TARGETS = (1.0, 3.0, 8.0)


def median_update_norm(rounds: int) -> float:
    """The median norm of the clients' updates to the initial model: a common choice of C."""
    from pollinate import Context
    from pollinate.app import load_app
    from pollinate.dp import update_norm

    app = load_app(APP, {"num-rounds": str(rounds)})
    initial = app.server_app().initial_arrays
    assert initial is not None
    fit_config = app.server_app().strategy.configure_fit(1)
    norms = []
    for k in range(CLIENTS):
        client = app.client_fn(Context(k, k, CLIENTS, run_config=app.config))
        trained, _, _ = client.fit(initial, fit_config)  # type: ignore[union-attr]
        norms.append(update_norm(initial, trained))
    return float(np.median(norms))


def accuracy(rounds: int, seed: int, noise: float = 0.0, clip: float = 1.0) -> tuple[float, float]:
    """One run: (centralized test accuracy after the last round, epsilon spent)."""
    import pollinate
    from pollinate.app import load_app

    overrides = {"num-rounds": str(rounds), "dp-noise-multiplier": str(noise)}
    overrides["dp-clipping-norm"] = str(clip)
    app = load_app(APP, overrides)
    result = pollinate.run_simulation(
        app.server_app(), app.client_fn, CLIENTS, seed=seed, run_config=app.config
    )
    last = result.history.rounds[-1]
    return float(last.centralized["accuracy"]), float(last.fit.get("dp_epsilon", float("inf")))


def main() -> None:
    from pollinate.dp import noise_for_epsilon

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, nargs="+", default=[5, 20])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 rounds, 1 seed")
    args = parser.parse_args()
    rounds_list, seeds = ([5], 1) if args.quick else (args.rounds, args.seeds)
    started = time.perf_counter()
    print(f"# {CLIENTS} clients, all sampled (q = 1), delta={DELTA}, median of {seeds} seed(s)\n")
    print("| rounds | C | epsilon | noise multiplier | test accuracy |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for rounds in rounds_list:
        clip = median_update_norm(rounds)
        plain = statistics.median(accuracy(rounds, s)[0] for s in range(seeds))
        print(f"| {rounds} | - | no DP | - | {plain:.3f} |")
        for target in TARGETS:
            z = noise_for_epsilon(target, 1.0, rounds, DELTA)
            runs = [accuracy(rounds, s, z, clip) for s in range(seeds)]
            spent = max(e for _, e in runs)
            acc = statistics.median(a for a, _ in runs)
            print(f"| {rounds} | {clip:.2f} | {spent:.2f} | {z:.2f} | {acc:.3f} |")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
