"""Population size: a simulated round costs O(sampled), whatever the population.

Each population runs in its own process (so its peak RSS is its own): FedAvg, 1,000 clients
sampled per round from 10 thousand to 100 million virtual clients, a 10-number model, 5
rounds. Prints seconds per round and the process's peak RSS.

    .venv/bin/python benchmarks/scale.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

SAMPLED, ROUNDS = 1_000, 5
POPULATIONS = (10_000, 100_000, 1_000_000, 10_000_000, 100_000_000)


def one(population: int) -> dict[str, float]:
    import numpy as np

    from pollinate import Arrays, Client, FedAvg, Sampling, ServerApp, run_simulation

    class Echo(Client):
        def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:
            return arrays, 1, {}

    sampling = Sampling(fraction_fit=SAMPLED / population, fraction_evaluate=0)
    app = ServerApp(
        FedAvg(sampling=sampling), num_rounds=ROUNDS, initial_arrays=Arrays({"w": np.zeros(10)})
    )
    started = time.perf_counter()
    result = run_simulation(app, lambda context: Echo(), num_clients=population)
    seconds = (time.perf_counter() - started) / ROUNDS
    assert all(r.replies == SAMPLED for r in result.history.rounds[1:])
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds_per_round": seconds, "peak_rss_mib": peak_mib}


def main() -> None:
    if len(sys.argv) == 2:
        print(json.dumps(one(int(sys.argv[1]))))
        return
    print(f"FedAvg, {SAMPLED:,} clients sampled per round, {ROUNDS} rounds, a 10-number model")
    print(f"{'population':>12} {'s / round':>10} {'peak RSS':>10}")
    for population in POPULATIONS:
        out = subprocess.run(
            [sys.executable, __file__, str(population)], capture_output=True, text=True, check=True
        )
        figures = json.loads(out.stdout)
        print(
            f"{population:>12,} {figures['seconds_per_round']:>10.3f} "
            f"{figures['peak_rss_mib']:>8.0f} MiB"
        )


if __name__ == "__main__":
    main()
