"""How fast, and in how much memory, the hub folds FedAvg updates into the next global model.

What is measured, per configuration of K updates of P float32 parameters:

- the real path, ``FedAvg().start_fit(1, current)``, ``add(FitResult(...))`` per update,
  then ``finish()``: seconds (best and median of ``--repeat``) and GB/s of update bytes
  folded (``K * P * 4 / seconds``);
- the same as a percentage of the machine's memory read bandwidth, measured in the same run
  with ``np.sum`` over a 400 MB float32 array: folding reads every update byte at least once,
  so read bandwidth is its ceiling (target: at least 50%);
- peak RSS growth during aggregation: the child's peak RSS (VmHWM, reset just before) minus
  its RSS just before ``start_fit``, on a first run that also pays for warm-up (the helper
  thread and its scratch block). Each configuration runs in a fresh subprocess, and updates
  come round-robin from a pool of pre-made arrays (at least 256 MB, so they are read from
  memory, not from cache), so the benchmark itself never holds K updates. Target: the same
  growth for K=10 and K=100 (O(model), not O(K x model));
- a baseline in the same process, timed in turn with the real path: the plain numpy loop
  ``acc += w * u``;
- the largest relative error of the result against a float64 numpy reference.

With ``--robust``, the robust statistics instead: ``coordinate_median`` of K updates of P
float32 and ``median_distances`` (the default screen's anomaly score), each as shipped (a
sorting network down the rows up to 32 updates, blocks shared among threads) against the
same code with numpy's sort and one thread (what they were before), and against
``np.median`` of the stacked updates, all in the same run: seconds, best of ``--repeat``.

Run ``python benchmarks/aggregate.py`` (under half a minute) or ``--quick`` (seconds).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np

from pollinate import Arrays, FedAvg
from pollinate.aggregate import coordinate_median, robust
from pollinate.strategy.base import FitResult

POOL_BYTES = 256 * 10**6
BANDWIDTH_BYTES = 400 * 10**6


@dataclass(frozen=True)
class Figures:
    """What one configuration measured."""

    k: int
    p: int
    seconds: list[float]
    baseline_seconds: list[float]
    rss_growth: int
    max_rel_error: float

    def gbps(self) -> float:
        return self.k * self.p * 4 / min(self.seconds) / 1e9

    def baseline_gbps(self) -> float:
        return self.k * self.p * 4 / min(self.baseline_seconds) / 1e9


# --- memory ------------------------------------------------------------------------------


def current_rss() -> int:
    """Resident bytes now (Linux /proc), or the peak so far where /proc is missing."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * resource.getpagesize()
    except OSError:
        return peak_rss()


def reset_peak_rss() -> None:
    """Start the peak anew (Linux >= 4.0), so that it covers the aggregation only, not the
    making of the pool (nor, with ru_maxrss, the parent's RSS, which Linux keeps across exec)."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    """Peak resident bytes: VmHWM where /proc has it, else ru_maxrss (KiB on Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def read_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """GB/s of ``np.sum`` over a float32 array of ``nbytes`` (best of ``repeats``)."""
    data = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    best = min(_timed(data.sum) for _ in range(repeats))
    return nbytes / best / 1e9


def _timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


# --- one configuration (runs in a fresh child process) ------------------------------------


def make_pool(k: int, p: int) -> list[np.ndarray]:
    """Enough distinct updates to exceed the caches, but never more than K."""
    count = min(k, max(2, -(-POOL_BYTES // (p * 4))))
    rng = np.random.default_rng(1)
    return [rng.random(p, dtype=np.float32) for _ in range(count)]


def weights(k: int) -> list[int]:
    return [1 + i % 7 for i in range(k)]


def fedavg(current: Arrays, pool: list[np.ndarray], k: int) -> Arrays:
    """The hub's real path: one FedAvg aggregator, K updates folded in as they arrive."""
    aggregator = FedAvg().start_fit(1, current)
    for i, n in enumerate(weights(k)):
        aggregator.add(FitResult(i, Arrays({"w": pool[i % len(pool)]}), n, {}))
    return aggregator.finish()


def plain_loop(pool: list[np.ndarray], k: int) -> np.ndarray:
    """Baseline: what one writes without thinking about memory traffic."""
    acc = np.zeros_like(pool[0])
    for i, n in enumerate(weights(k)):
        acc += np.float32(n) * pool[i % len(pool)]
    return acc / np.float32(sum(weights(k)))


def reference(pool: list[np.ndarray], k: int) -> np.ndarray:
    """The weighted mean in float64, summing each pool entry's weights first."""
    per_entry = np.zeros(len(pool))
    for i, n in enumerate(weights(k)):
        per_entry[i % len(pool)] += n
    acc = np.zeros(pool[0].size)
    for w, update in zip(per_entry, pool, strict=True):
        acc += w * update.astype(np.float64)
    return acc / per_entry.sum()


def measure(k: int, p: int, repeats: int) -> Figures:
    """Time and memory of one configuration; meant to run in its own process."""
    pool = make_pool(k, p)
    current = Arrays({"w": np.zeros(p, np.float32)})
    growth, result = rss_growth(lambda: fedavg(current, pool, k))
    ref = reference(pool, k)
    error = float(np.max(np.abs(result["w"] - ref) / np.maximum(np.abs(ref), 1e-12)))
    del result, ref
    seconds, baseline = [], []
    for _ in range(repeats):  # interleaved, so that both meet the same allocator state
        seconds.append(_timed(lambda: fedavg(current, pool, k)))
        baseline.append(_timed(lambda: plain_loop(pool, k)))
    return Figures(k, p, seconds, baseline, growth, error)


def rss_growth(aggregate: Callable[[], Arrays]) -> tuple[int, Arrays]:
    """Peak RSS during ``aggregate()`` minus RSS before it, and its result."""
    reset_peak_rss()
    before = current_rss()
    result = aggregate()
    return peak_rss() - before, result


def measure_in_child(k: int, p: int, repeats: int) -> Figures:
    """Run ``measure`` in a fresh interpreter so that its peak RSS is its own."""
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as child:
        return child.submit(measure, k, p, repeats).result()


# --- report ------------------------------------------------------------------------------

HEADER = (
    f"{'K':>4} {'P':>6} {'model MB':>8} {'best s':>7} {'median s':>8} {'GB/s':>6} "
    f"{'% read bw':>9} {'RSS growth MB':>13} {'x model':>7} {'plain GB/s':>10} {'rel err':>8}"
)


def row(f: Figures, bandwidth: float) -> str:
    model = f.p * 4 / 1e6
    growth = f.rss_growth / 1e6
    return (
        f"{f.k:>4} {f.p:>6.0e} {model:>8.0f} {min(f.seconds):>7.3f} "
        f"{statistics.median(f.seconds):>8.3f} {f.gbps():>6.1f} "
        f"{100 * f.gbps() / bandwidth:>8.0f}% {growth:>13.0f} {growth / model:>7.1f} "
        f"{f.baseline_gbps():>10.1f} {f.max_rel_error:>8.1e}"
    )


# --- robust statistics ---------------------------------------------------------------------


def robust_rows(ks: list[int], p: int, repeats: int) -> None:
    print(
        f"{'K':>4} {'P':>6} {'statistic':>17} {'shipped s':>9} {'sort, 1 thread s':>16} "
        f"{'x':>5} {'np.median s':>11} {'x':>5}"
    )
    rng = np.random.default_rng(0)
    for k in ks:
        updates = [Arrays({"w": rng.standard_normal(p).astype(np.float32)}) for _ in range(k)]
        baseline = _best(partial(_stacked_median, updates), repeats)
        for name, statistic in (
            ("coordinate_median", coordinate_median),
            ("median_distances", robust.median_distances),
        ):
            shipped = _best(partial(statistic, updates), repeats)
            network, threads = robust._NETWORK_ROWS, robust._THREADS
            robust._NETWORK_ROWS, robust._THREADS = 0, 1
            try:
                before = _best(partial(statistic, updates), repeats)
            finally:
                robust._NETWORK_ROWS, robust._THREADS = network, threads
            print(
                f"{k:>4} {p:>6.0e} {name:>17} {shipped:>9.3f} {before:>16.3f} "
                f"{before / shipped:>4.1f}x {baseline:>11.3f} {baseline / shipped:>4.1f}x"
            )


def _stacked_median(updates: list[Arrays]) -> np.ndarray:
    return np.median(np.stack([u["w"] for u in updates]), axis=0)


def _best(work: Callable[[], object], repeats: int) -> float:
    return min(_timed(work) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="K in {10, 50}, P = 1e6")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per configuration")
    parser.add_argument(
        "--robust", action="store_true", help="the robust statistics (K in {5, 10, 20, 50})"
    )
    parser.add_argument("--k", type=int, nargs="+", help="with --robust: these values of K")
    args = parser.parse_args()
    if args.robust:
        ks = args.k or ([5, 10] if args.quick else [5, 10, 20, 50])
        robust_rows(ks, 10**6 if args.quick else 10**7, args.repeat)
        return
    ks, ps = ([10, 50], [10**6]) if args.quick else ([10, 100], [10**6, 10**7])
    before = read_bandwidth(BANDWIDTH_BYTES)
    figures = [measure_in_child(k, p, args.repeat) for p in ps for k in ks]
    after = read_bandwidth(BANDWIDTH_BYTES)
    bandwidth = max(before, after)
    print(
        f"memory read bandwidth (np.sum, 400 MB float32): {before:.1f} GB/s before, "
        f"{after:.1f} GB/s after; percentages below use the higher, {bandwidth:.1f} GB/s"
    )
    print(HEADER)
    for f in figures:
        print(row(f, bandwidth))


if __name__ == "__main__":
    main()
