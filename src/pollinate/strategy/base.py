"""What every strategy shares: sampling, per-round config, failure tolerance, metrics.

A strategy is policy, not transport: the run loop asks it whom to sample and what to send,
feeds it replies one at a time as they arrive, and asks for the new global arrays. The math
lives in ``pollinate.aggregate``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import Enum
from fractions import Fraction
from typing import ClassVar, Protocol, TypedDict, Unpack

import numpy as np

from pollinate.aggregate import PartialSum, WeightedMean, weighted_average
from pollinate.checks import integer, number
from pollinate.errors import RunError
from pollinate.records import Arrays, Config, Metrics
from pollinate.secagg.config import SecAggConfig

EvaluateFn = Callable[[int, Arrays], "tuple[float, Metrics] | None"]
ConfigFn = Callable[[int], Config]
MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]


@dataclass(frozen=True, slots=True)
class FitResult:
    """One client's successful fit reply, already checked against the global model.

    With secure aggregation the hub sees no single reply: the round's mean then arrives as
    one result, with ``count`` the number of clients it is the mean of.
    """

    node_id: int
    arrays: Arrays
    num_examples: int
    metrics: Metrics
    count: int = 1


class TooFewReplies(RunError):
    """A round's usable replies are too few for the strategy to aggregate: the round keeps
    the previous global model, as when too many fail."""


class TooFewClients(RunError):
    """Sampling found fewer clients than the strategy needs (``needed``): the run loop waits
    for more (``ServerApp.node_wait``) before it lets this end the run."""

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        self.needed = needed


class UnusableUpdate(RunError):
    """Raised by ``FitAggregator.add`` to leave one update out, saying why: the run loop
    counts it as rejected (an event, a line in the log, the history's ``rejected``)."""


class FitAggregator(Protocol):
    """Folds fit results in as they arrive, then yields the next global arrays. ``add`` may
    raise ``UnusableUpdate`` for an update the strategy cannot use."""

    def add(self, result: FitResult) -> None: ...
    def finish(self) -> Arrays: ...


class Rounds(Enum):
    """How a strategy's rounds run, which picks the run loop's protocol (``loop/protocol.py``)."""

    SYNCHRONOUS = "synchronous"
    """Each round samples nodes, waits for their updates (up to its deadline), aggregates."""
    BUFFERED = "buffered"
    """Nodes train continuously; the model steps every K updates (``FedBuff``)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """Whom a round asks: one value, passed as ``FedAvg(sampling=Sampling(...))``.

    Args:
        fraction_fit: fraction of available clients sampled for fit each round.
        fraction_evaluate: fraction sampled for federated evaluation (0 turns it off).
        min_fit_clients: sample at least this many for fit; None: the strategy's own
            minimum (2 for a mean; Krum, Bulyan and the medians need more).
        min_evaluate_clients: sample at least this many for evaluate (when it is on).
        min_available_clients: a round does not start with fewer clients available; None:
            2 (1 for a strategy that trains one client a round).

    >>> Sampling(fraction_fit=0.1, min_fit_clients=10)  # doctest: +NORMALIZE_WHITESPACE
    Sampling(fraction_fit=0.1, fraction_evaluate=1.0, min_fit_clients=10,
             min_evaluate_clients=2, min_available_clients=None)
    """

    fraction_fit: float = 1.0
    fraction_evaluate: float = 1.0
    min_fit_clients: int | None = None
    min_evaluate_clients: int = 2
    min_available_clients: int | None = None

    def __post_init__(self) -> None:
        for name in ("fraction_fit", "fraction_evaluate"):
            _check_fraction(name, getattr(self, name))
        for name in ("min_fit_clients", "min_evaluate_clients", "min_available_clients"):
            count = getattr(self, name)
            # None: the strategy's own minimum (min_evaluate_clients has no such default)
            if count is not None or name == "min_evaluate_clients":
                integer(name, count, minimum=0, hint=f"Sampling({name}=2)")


class BaseOptions(TypedDict, total=False):
    """The keyword arguments every strategy takes besides its own (see ``BaseStrategy``)."""

    sampling: Sampling
    failure_tolerance: float
    evaluate_fn: EvaluateFn | None
    on_fit_config_fn: ConfigFn | None
    fit_metrics_aggregation_fn: MetricsAggregationFn | None


class StrategyOptions(BaseOptions, total=False):
    """The keyword arguments of a synchronous strategy besides its own (see ``Strategy``): a
    subclass forwards them as ``**options: Unpack[StrategyOptions]``, so a misspelt one
    fails in mypy as it does at run time."""

    on_evaluate_config_fn: ConfigFn | None
    evaluate_metrics_aggregation_fn: MetricsAggregationFn | None


class BaseStrategy:
    """What every strategy has, whatever its rounds: whom it asks (``sampling``), what it
    sends them, how much failure a round tolerates, centralized evaluation, fit metrics,
    when the run is finished, and the state it resumes from.

    Args:
        sampling: whom rounds ask (``Sampling``); the default asks every available client,
            at least the strategy's minimum.
        failure_tolerance: largest fraction of a round's fit tasks that may fail (raise,
            time out, send unusable arrays) for the round's aggregate to be applied.
        evaluate_fn: centralized evaluation ``(round, arrays) -> (loss, metrics)`` on the
            server side, run after every round (and on the initial arrays as round 0).
        on_fit_config_fn: ``round -> Config`` sent with every fit task.
        fit_metrics_aggregation_fn: combines clients' ``(num_examples, metrics)`` pairs;
            default: weighted average of numeric metrics.
    """

    #: How rounds run: the run loop carries them out with the matching protocol.
    rounds: ClassVar[Rounds]

    def __init__(
        self,
        *,
        sampling: Sampling | None = None,
        failure_tolerance: float = 0.5,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = weighted_average,
    ) -> None:
        _check_fraction("failure_tolerance", failure_tolerance)
        self.sampling = self._complete(sampling or Sampling())
        self.failure_tolerance = failure_tolerance
        self.evaluate_fn = evaluate_fn
        self.on_fit_config_fn = on_fit_config_fn
        self.fit_metrics_aggregation_fn = fit_metrics_aggregation_fn

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(sampling={self.sampling!r}, failure_tolerance="
            f"{self.failure_tolerance})"
        )

    #: The condition on a round's number of updates n, as the strategy's paper states it.
    requirement: ClassVar[str] = "n >= 1"

    @property
    def fewest_fit_clients(self) -> int:
        """The fewest fit clients a round can be aggregated from (``requirement``): a
        ``Sampling`` asking for fewer is refused. A mean takes any number."""
        return 0

    @property
    def default_min_fit_clients(self) -> int:
        """``Sampling.min_fit_clients`` when it is left out: 2, or ``fewest_fit_clients``."""
        return max(2, self.fewest_fit_clients)

    @property
    def min_fit_clients(self) -> int:
        return self.sampling.min_fit_clients or 0

    @property
    def min_available_clients(self) -> int:
        return self.sampling.min_available_clients or 0

    def configure_fit(self, round: int) -> Config:
        """The config every fit instruction of ``round`` carries."""
        return dict(self.on_fit_config_fn(round)) if self.on_fit_config_fn else {}

    def aggregate_fit_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        fn = self.fit_metrics_aggregation_fn
        return fn(results) if fn else {}

    def evaluate(self, round: int, arrays: Arrays) -> tuple[float, Metrics] | None:
        """Centralized evaluation with ``evaluate_fn``, or None when there is none."""
        return self.evaluate_fn(round, arrays) if self.evaluate_fn else None

    def finished(self, rounds_done: int) -> str | None:
        """Why the run should stop after ``rounds_done`` rounds (e.g. a privacy budget is
        spent), or None to go on; asked before every round. The run then ends normally."""
        return None

    def secure_aggregation_problem(self, config: SecAggConfig) -> str | None:
        """Why this strategy cannot run with secure aggregation ``config``, or None if it
        can: the hub then learns only the mean of the updates."""
        return f"{type(self).__name__} cannot run with secure aggregation."

    def state(self) -> Arrays:
        """Arrays the strategy carries between rounds (momentum, moments); empty for FedAvg."""
        return Arrays()

    def load_state(self, state: Arrays) -> None:
        """Restore what ``state`` returned."""

    def _complete(self, sampling: Sampling) -> Sampling:
        """``sampling`` with the strategy's minimum filled in; less than it is refused."""
        needed, given = self.fewest_fit_clients, sampling.min_fit_clients
        if given is not None and given < needed:
            raise ValueError(
                f"{type(self).__name__} needs {self.requirement} updates per round, at least "
                f"{needed} here, but min_fit_clients={given!r}.\nHint: leave min_fit_clients "
                f"out (it defaults to {self.default_min_fit_clients}), or set it higher to "
                "leave room for failures."
            )
        fit = self.default_min_fit_clients if given is None else given
        available = sampling.min_available_clients
        return replace(
            sampling,
            min_fit_clients=fit,
            min_available_clients=min(2, fit) if available is None else available,
        )


class Strategy(BaseStrategy):
    """A strategy of synchronous rounds: FedAvg's sampling and configuration with a
    pluggable server update. Each round samples clients to fit, folds their updates in as
    they arrive, and applies the aggregate; then samples clients to evaluate.

    Args:
        on_evaluate_config_fn: ``round -> Config`` sent with every evaluate task.
        evaluate_metrics_aggregation_fn: combines the evaluation replies' metrics.
        **options: the arguments of every strategy (``BaseStrategy``): ``sampling``,
            ``failure_tolerance``, ``evaluate_fn``, ``on_fit_config_fn``,
            ``fit_metrics_aggregation_fn``.
    """

    rounds = Rounds.SYNCHRONOUS

    #: The strategy aggregates by the weighted mean of the updates (and a server update on
    #: it), so it runs with secure aggregation, where the hub learns only that mean, and
    #: under DP-FedAvg. Strategies that need each update (medians, Krum) set it False.
    aggregates_mean: ClassVar[bool] = True

    #: Fit replies carry arrays with the global model's names, shapes and dtypes, so the hub
    #: validates each against the model (``loop/screen.py``). Strategies whose updates are
    #: another shape (trees that grow the model, for instance) set it False: the hub then
    #: checks only that the reply has examples and finite arrays.
    updates_like_model: ClassVar[bool] = True

    #: How the hub treats an update far from the round's median update (``loop/screen.py``).
    #: A weighted mean lets it in, bounded (pulled in, its norm clipped), so that an honest
    #: client with skewed data still counts. Robust strategies set it False: their statistic
    #: needs an outlier to stay an outlier (pulled in, it hides from Krum's scores and
    #: shifts medians), so the hub leaves such an update out of the round instead.
    bounds_outliers: ClassVar[bool] = True

    def __init__(
        self,
        *,
        on_evaluate_config_fn: ConfigFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = weighted_average,
        **options: Unpack[BaseOptions],
    ) -> None:
        super().__init__(**options)
        self.on_evaluate_config_fn = on_evaluate_config_fn
        self.evaluate_metrics_aggregation_fn = evaluate_metrics_aggregation_fn

    # --- sampling and configuration ----------------------------------------------------

    def sample_fit(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        """The node ids that train this round (sorted), drawn without replacement."""
        fraction = self.sampling.fraction_fit
        return self._sample(available, fraction, self.min_fit_clients, "fit", rng)

    def sample_evaluate(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        """The node ids that evaluate this round; empty when federated evaluation is off."""
        sampling = self.sampling
        if sampling.fraction_evaluate == 0.0:
            return []
        return self._sample(
            available, sampling.fraction_evaluate, sampling.min_evaluate_clients, "evaluate", rng
        )

    def _sample(
        self,
        available: Sequence[int],
        fraction: float,
        minimum: int,
        stage: str,
        rng: np.random.Generator,
    ) -> list[int]:
        n = len(available)
        # the decimal the user wrote: 0.14 * 50 is 7.000000000000001 in floats, not 8 clients
        wanted = max(math.ceil(Fraction(str(fraction)) * n), minimum, 1)
        needed = max(self.min_available_clients, wanted)
        if n < needed:
            raise TooFewClients(
                f"{type(self).__name__} needs {needed} clients for {stage} but only {n} are "
                f"available.\nHint: lower Sampling(min_{stage}_clients=..., "
                "min_available_clients=...), or run more clients (--clients N in simulation).",
                needed,
            )
        # Indices first, then the nodes at them: the same draw as choosing from the sorted
        # nodes, but a population given as a range (a simulation's) is never materialised, so
        # a round costs O(sampled) whatever the population (numpy draws few of many in place).
        ordered = ascending(available)
        chosen = rng.choice(n, size=wanted, replace=False)
        return sorted(int(ordered[i]) for i in chosen)

    def configure_evaluate(self, round: int) -> Config:
        return dict(self.on_evaluate_config_fn(round)) if self.on_evaluate_config_fn else {}

    # --- aggregation ---------------------------------------------------------------------

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        """An aggregator for ``round``'s fit replies; finishing it applies the server update."""
        return _MeanThenUpdate(current, self)

    def server_update(self, current: Arrays, mean: Arrays) -> Arrays:
        """The next global arrays from the current ones and the clients' weighted mean."""
        return mean

    def aggregate_evaluate_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        fn = self.evaluate_metrics_aggregation_fn
        return fn(results) if fn else {}

    def secure_aggregation_problem(self, config: SecAggConfig) -> str | None:
        """Why this strategy cannot run with secure aggregation ``config``, or None if it can:
        the hub then learns only the mean of the updates, which mean-based strategies need."""
        if self.aggregates_mean:
            return None
        return (
            f"{type(self).__name__} cannot run with secure aggregation: the hub then learns "
            "only the weighted mean of the updates, and this strategy needs each update.\n"
            "Hint: FedAvg, FedAvgM, FedProx, FedAdagrad, FedAdam or FedYogi"
        )


class _MeanThenUpdate:
    """Weighted mean by examples, streamed, followed by the strategy's server update."""

    def __init__(self, current: Arrays, strategy: Strategy) -> None:
        self._current = current
        self._strategy = strategy
        self._mean = WeightedMean(current)

    def add(self, result: FitResult) -> None:
        self._mean.add(result.arrays, result.num_examples)

    def merge(self, partial: PartialSum) -> None:
        """Updates summed elsewhere (a Ray worker's, ``loop/summing.py``), as if added here."""
        self._mean.merge(partial)

    def worker_fold(self) -> ExamplesMean:
        return ExamplesMean()

    def finish(self) -> Arrays:
        return self._strategy.server_update(self._current, self._mean.result())


@dataclass(frozen=True)
class ExamplesMean:
    """How a worker sums updates for a weighted mean by examples (``loop/summing.py``)."""

    def start(self, current: Arrays) -> _ExamplesSum:
        return _ExamplesSum(current)


class _ExamplesSum:
    def __init__(self, current: Arrays) -> None:
        self._mean = WeightedMean(current)

    def add(self, result: FitResult) -> None:
        self._mean.add(result.arrays, result.num_examples)

    def partial(self) -> PartialSum:
        return self._mean.partial()


def _check_fraction(name: str, value: float) -> None:
    number(name, value, minimum=0, maximum=1, hint=f"{name}=0.1 means 10%.")


def ascending(nodes: Sequence[int]) -> Sequence[int]:
    """``nodes`` in ascending order: a ``range`` with step 1 as it is, anything else sorted."""
    if isinstance(nodes, range) and nodes.step == 1:
        return nodes
    return sorted(nodes)
