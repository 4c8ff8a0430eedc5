"""What the simulation engine costs on top of the clients' own work.

``run_simulation`` with N virtual clients for 5 rounds of FedAvg on a 10k-parameter float32
model, where each client does almost nothing (returns the arrays plus a tiny change), so that
what remains is the framework: dispatch, thread hand-over, reply checks, aggregation, history.

What is measured, per configuration (each in a fresh subprocess, best and median of
``--repeat`` runs):

- wall time of the run, and time per round (median of the rounds' own timings);
- framework overhead per client-round: wall time minus the time spent inside the clients'
  ``fit`` (and ``evaluate``, when federated evaluation is on), divided by N x rounds.
  Target: at most 0.5 ms, and no fixed per-round latency (N=10 rounds take well under 1 ms
  per client);
- peak RSS of the process.

Then, at N=1000: thread pool concurrency 1 vs 2 vs 4, with the near-zero client and with a
client that does ~1 ms of numpy work (which releases the GIL, as real training does); and the
same near-zero tasks on a process pool, which must pickle the arrays both ways.

Then the Ray engine next to the in-process one (``--engines``): a Ray started on this machine
(``RayEngine()``, one worker per CPU), the same runs through one ``RayGrid``; its start-up,
seconds per round, and the peak memory of the whole process tree (this process and every
process Ray started), sampled every 50 ms. The runs screen each update by itself
(``Validation`` without bounds relative to the round), so Ray runs them two ways: ``ray
each``, every update back on its own (``RayGrid(summing=False)``, one actor call per task),
and ``ray sums``, each worker's share in one call and one partial sum back per worker per
round (the default for such runs; ``loop/summing.py``). ``--dp`` wraps FedAvg in DP-FedAvg
(noise multiplier 0.3, clipping norm 1.0), which sums on the workers too.

Run ``python benchmarks/simulation.py`` (well under a minute; about 3 minutes with
``--engines`` on an idle machine) or ``--quick``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from pollinate import Arrays, Client, FedAvg, Sampling, ServerApp, Validation, run_simulation
from pollinate.dp import DifferentialPrivacy
from pollinate.records import Config, Metrics
from pollinate.strategy import Strategy

PARAMETERS = 10_000
ROUNDS = 5
WORK_ELEMENTS = 2_000_000  # np.tanh + sum over this many float32 takes about 1 ms here


class _ClientClock:
    """Total seconds spent inside clients' fit/evaluate, summed over all pool threads."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def add(self, seconds: float) -> None:
        with self._lock:
            self.seconds += seconds

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return _ClientClock, ()  # a Ray worker's clients count on a clock of their own


CLOCK = _ClientClock()


class NearZeroClient(Client):
    """Returns the arrays plus a tiny change; times itself."""

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        started = time.perf_counter()
        new = Arrays({name: a + np.float32(1e-3) for name, a in arrays.items()})
        CLOCK.add(time.perf_counter() - started)
        return new, 10, {}

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        started = time.perf_counter()
        loss = float(arrays["w"][0])
        CLOCK.add(time.perf_counter() - started)
        return loss, 10, {"accuracy": 0.5}


class BusyClient(NearZeroClient):
    """Like NearZeroClient after ~1 ms of numpy work that releases the GIL."""

    data = np.linspace(-1, 1, WORK_ELEMENTS, dtype=np.float32)

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        started = time.perf_counter()
        np.tanh(self.data).sum()
        CLOCK.add(time.perf_counter() - started)
        return super().fit(arrays, config)


CLIENTS: dict[str, type[Client]] = {"near-zero": NearZeroClient, "1 ms numpy": BusyClient}


# --- one configuration (runs in a fresh child process) ------------------------------------


@dataclass(frozen=True)
class Setup:
    n: int
    evaluate: bool = False
    concurrency: int | None = None
    client: str = "near-zero"

    def label(self) -> str:
        threads = self.concurrency or "default"
        return f"N={self.n} evaluate={'on' if self.evaluate else 'off'} threads={threads}"


@dataclass(frozen=True)
class Figures:
    config: Setup
    wall: list[float]
    client_seconds: list[float]
    round_seconds: float
    peak_rss: int

    def overhead_ms(self) -> list[float]:
        """Framework milliseconds per client-round, one per repeat."""
        client_rounds = self.config.n * ROUNDS
        return [
            1e3 * (wall - inside) / client_rounds
            for wall, inside in zip(self.wall, self.client_seconds, strict=True)
        ]


def one_run(config: Setup) -> tuple[float, float, float]:
    """(wall seconds, seconds inside clients, median round seconds) of one simulation."""
    strategy = FedAvg(
        sampling=Sampling(fraction_fit=1.0, fraction_evaluate=1.0 if config.evaluate else 0.0)
    )
    initial = Arrays({"w": np.zeros(PARAMETERS, np.float32)})
    app = ServerApp(strategy, num_rounds=ROUNDS, initial_arrays=initial)
    client = CLIENTS[config.client]
    CLOCK.seconds = 0.0
    started = time.perf_counter()
    result = run_simulation(app, lambda ctx: client(), config.n, concurrency=config.concurrency)
    wall = time.perf_counter() - started
    rounds = [r.seconds for r in result.history.rounds if r.round > 0]
    return wall, CLOCK.seconds, statistics.median(rounds)


def measure(config: Setup, repeats: int) -> Figures:
    """Repeat one configuration; meant to run in its own process."""
    runs = [one_run(config) for _ in range(repeats)]
    return Figures(
        config,
        wall=[r[0] for r in runs],
        client_seconds=[r[1] for r in runs],
        round_seconds=min(r[2] for r in runs),
        peak_rss=peak_rss(),
    )


def measure_in_child(config: Setup, repeats: int) -> Figures:
    """Run ``measure`` in a fresh interpreter so that its peak RSS is its own."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        return child.submit(measure, config, repeats).result()


def peak_rss() -> int:
    """Peak resident bytes of this process (VmHWM; 0 where /proc is missing). A spawned
    child's ru_maxrss would start at its parent's RSS, which Linux keeps across exec."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


# --- the process-pool alternative ---------------------------------------------------------


def _fit_in_process(arrays: Arrays) -> Arrays:
    return Arrays({name: a + np.float32(1e-3) for name, a in arrays.items()})


def process_pool_ms(tasks: int, workers: int) -> float:
    """Milliseconds per near-zero fit task on a process pool (arrays pickled both ways)."""
    arrays = Arrays({"w": np.zeros(PARAMETERS, np.float32)})
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=spawn) as pool:
        list(pool.map(_fit_in_process, [arrays] * workers))  # start the workers first
        started = time.perf_counter()
        list(pool.map(_fit_in_process, [arrays] * tasks, chunksize=1))
        return 1e3 * (time.perf_counter() - started) / tasks


# --- report ------------------------------------------------------------------------------

HEADER = (
    f"{'configuration':<36} {'client':<10} {'wall s':>6} {'median':>6} {'in clients':>10} "
    f"{'s/round':>7} {'overhead ms/client-round':>24} {'peak RSS MB':>11}"
)


def row(f: Figures) -> str:
    return (
        f"{f.config.label():<36} {f.config.client:<10} {min(f.wall):>6.3f} "
        f"{statistics.median(f.wall):>6.3f} {min(f.client_seconds):>10.3f} "
        f"{f.round_seconds:>7.4f} {overhead(f):>24} {f.peak_rss / 1e6:>11.0f}"
    )


def overhead(f: Figures) -> str:
    """Best (median) overhead; not defined when clients' work overlaps on several threads."""
    if f.config.client != "near-zero":
        return "n/a (clients overlap)"
    ms = f.overhead_ms()
    return f"{min(ms):.3f} (median {statistics.median(ms):.3f})"


def configurations(quick: bool) -> list[Setup]:
    sizes = [10, 100] if quick else [10, 100, 1000]
    big = sizes[-1]
    main = [Setup(n, evaluate) for evaluate in (False, True) for n in sizes]
    threads = [Setup(big, False, c, client) for client in CLIENTS for c in (1, 2, 4)]
    return main + threads


# --- the engines side by side -------------------------------------------------------------


ENGINES = ("in-process", "ray each", "ray sums")
STREAMING = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)


def engine_row(engine: str, n: int, client: str, repeats: int, dp: bool = False) -> str:
    """One engine's start-up, seconds per round and peak process-tree memory at N clients
    (in this process: Ray pickles this script's clients by value only from ``__main__``)."""
    from pollinate.loop.run import run
    from pollinate.simulation import RayGrid, SimulationGrid

    tree = TreeMemory()
    started = time.perf_counter()
    kind = CLIENTS[client]  # defined in __main__: Ray's workers get it by value
    if engine == "in-process":
        grid: SimulationGrid | RayGrid = SimulationGrid(lambda ctx: kind(), n)
    else:
        grid = RayGrid(lambda ctx: kind(), n, summing=engine == "ray sums")
    startup = time.perf_counter() - started
    try:
        rounds = []
        for _ in range(repeats):
            strategy: Strategy = FedAvg(sampling=Sampling(fraction_fit=1.0, fraction_evaluate=0.0))
            if dp:
                strategy = DifferentialPrivacy(strategy, noise_multiplier=0.3, clipping_norm=1.0)
            initial = Arrays({"w": np.zeros(PARAMETERS, np.float32)})
            app = ServerApp(
                strategy, num_rounds=ROUNDS, initial_arrays=initial, validation=STREAMING
            )
            result = run(grid, app, seed=0)
            rounds += [r.seconds for r in result.history.rounds if r.round > 0]
        sums = getattr(grid, "sums_received", 0)
    finally:
        grid.close()
        tree.stop()
    return (
        f"{engine:<10} {client:<10} N={n:<5} {startup:>9.2f} {statistics.median(rounds):>9.4f} "
        f"{min(rounds):>9.4f} {tree.peak / 1e6:>12.0f} {tree.processes:>9} {sums:>5}"
    )


class TreeMemory:
    """Peak summed RSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.05) -> None:
        import psutil

        self.peak, self.processes = 0, 0
        self._me, self._every = psutil.Process(), every
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(self._every):
            total, count = 0, 0
            for process in [self._me, *self._me.children(recursive=True)]:
                try:
                    total += process.memory_info().rss
                    count += 1
                except Exception:  # ended meanwhile
                    continue
            if total > self.peak:
                self.peak, self.processes = total, count

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


def engines(quick: bool, repeats: int, dp: bool) -> None:
    print(f"{'engine':<10} {'client':<10} {'N':<7} {'startup s':>9} {'s/round':>9} "
          f"{'best':>9} {'tree MB':>12} {'processes':>9} {'sums':>5}")  # fmt: skip
    sizes = [10, 100] if quick else [10, 100, 1000]
    cases = [(n, "near-zero") for n in sizes] + [(sizes[-1], "1 ms numpy")]
    for n, client in cases:
        for engine in ENGINES:
            print(engine_row(engine, n, client, repeats, dp), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in {10, 100} only")
    parser.add_argument("--repeat", type=int, default=3, help="runs per configuration")
    parser.add_argument("--engines", action="store_true", help="only the engines side by side")
    parser.add_argument("--dp", action="store_true", help="with --engines: DP-FedAvg, not FedAvg")
    args = parser.parse_args()
    if args.engines:
        strategy = "DP-FedAvg" if args.dp else "FedAvg"
        print(f"{ROUNDS} rounds of {strategy}, {PARAMETERS} float32 parameters, fraction_fit=1")
        engines(args.quick, args.repeat, args.dp)
        return
    print(f"{ROUNDS} rounds, {PARAMETERS} float32 parameters, fraction_fit=1")
    print(HEADER)
    for config in configurations(args.quick):
        print(row(measure_in_child(config, args.repeat)), flush=True)
    tasks = 200 if args.quick else 1000
    for workers in (1, 2):
        ms = process_pool_ms(tasks, workers)
        print(f"process pool, {workers} worker(s), near-zero fit: {ms:.3f} ms per task")


if __name__ == "__main__":
    main()
