"""Robustness, measured: final test accuracy of robust strategies under simulated attacks.

The demo app (examples/quickstart-numpy: softmax regression on scikit-learn's digits, 20
clients, Dirichlet(0.5) label skew) trains with 0%, 10%, 20% and 30% adversarial clients under
each attack (sign flip, scaling x10, Gaussian noise, label flipping), for FedAvg, FedMedian,
FedTrimmedAvg, Multi-Krum and Bulyan, with and without update validation (the hub's anomaly
score). Each cell is the centralized test accuracy after the last round, the median over
``--seeds`` seeds (each seed draws other attackers).

    .venv/bin/python benchmarks/robustness.py                  # the table in docs/robustness.md
    .venv/bin/python benchmarks/robustness.py --quick          # fewer rounds, one seed

The robust strategies are told the true number of attackers f, as in their papers (Krum and
Bulyan need it); Bulyan needs n >= 4f + 3, so it is given min(f, (n - 3) // 4) and is outside
its guarantee at 30%.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "quickstart-numpy"
CLIENTS = 20
FRACTIONS = (0.0, 0.1, 0.2, 0.3)
ATTACKS = ("sign-flip", "scale", "gaussian-noise", "label-flip")
STRATEGIES = ("FedAvg", "FedMedian", "FedTrimmedAvg", "MultiKrum", "Bulyan")


def make_strategy(name: str, attackers: int, base: object) -> object:
    import pollinate

    common = {
        "sampling": pollinate.Sampling(fraction_evaluate=0.0),
        "evaluate_fn": base.evaluate_fn,  # type: ignore[attr-defined]
        "on_fit_config_fn": base.on_fit_config_fn,  # type: ignore[attr-defined]
        # an attacker's update that validation rejects is a failure; 30% must not stop a round
        "failure_tolerance": 0.5,
    }
    if name == "FedTrimmedAvg":
        return pollinate.FedTrimmedAvg(beta=0.3, **common)  # type: ignore[attr-defined]
    if name == "MultiKrum":
        return pollinate.MultiKrum(  # type: ignore[attr-defined]
            num_malicious=attackers, num_selected=CLIENTS - attackers, **common
        )
    if name == "Bulyan":
        return pollinate.Bulyan(  # type: ignore[attr-defined]
            num_malicious=min(attackers, (CLIENTS - 3) // 4), **common
        )
    return getattr(pollinate, name)(**common)


def accuracy(cell: tuple[str, str, float, bool, int, int]) -> float:
    """One run: the centralized test accuracy after the last round."""
    import pollinate
    from pollinate.app import load_app
    from pollinate.simulation import Adversaries

    strategy, attack, fraction, validated, seed, rounds = cell
    app = load_app(APP, {"num-rounds": str(rounds)})
    server_app = app.server_app()
    attackers = round(fraction * CLIENTS)
    # "on": the defaults (bounded counts and norms, outliers pulled in); "off": none of the
    # bounds relative to the round (the shape, dtype and finite checks stay on)
    validation = (
        pollinate.Validation()
        if validated
        else pollinate.Validation(
            anomaly_threshold=None, norm_multiple=None, examples_multiple=None
        )
    )
    server_app = dataclasses.replace(
        server_app,
        strategy=make_strategy(strategy, attackers, server_app.strategy),
        validation=validation,
    )
    adversaries = Adversaries(fraction, attack, seed=seed) if fraction > 0 else None
    result = pollinate.run_simulation(
        server_app,
        app.client_fn,
        CLIENTS,
        seed=seed,
        run_config=app.config,
        adversaries=adversaries,
    )
    return float(result.history.rounds[-1].centralized["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="5 rounds, 1 seed")
    args = parser.parse_args()
    rounds, seeds = (5, 1) if args.quick else (args.rounds, args.seeds)
    cells = [
        (strategy, attack, fraction, validated, seed, rounds)
        for strategy in STRATEGIES
        for validated in (False, True)
        for attack in ATTACKS
        for fraction in FRACTIONS
        if not (fraction == 0.0 and attack != ATTACKS[0])  # 0% is one column, not four
        for seed in range(seeds)
    ]
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        results = dict(zip(cells, pool.map(accuracy, cells, chunksize=4), strict=True))
    print(
        f"# {len(cells)} runs, {rounds} rounds, {CLIENTS} clients, median of {seeds} seed(s), "
        f"{time.perf_counter() - started:.0f} s\n"
    )
    for attack in ATTACKS:
        print(f"\n## {attack}\n")
        print("| strategy | validation | " + " | ".join(f"{f:.0%}" for f in FRACTIONS) + " |")
        print("| --- | --- | " + " | ".join("---:" for _ in FRACTIONS) + " |")
        for strategy in STRATEGIES:
            for validated in (False, True):
                cells_of_row = [
                    (strategy, ATTACKS[0] if f == 0.0 else attack, f, validated, s, rounds)
                    for f in FRACTIONS
                    for s in range(seeds)
                ]
                medians = [
                    statistics.median(results[c] for c in cells_of_row[i * seeds : (i + 1) * seeds])
                    for i in range(len(FRACTIONS))
                ]
                row = " | ".join(f"{m:.3f}" for m in medians)
                print(f"| {strategy} | {'on' if validated else 'off'} | {row} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
