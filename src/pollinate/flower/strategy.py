"""Flower's strategies by their Flower names and arguments, as pollinate strategies.

One place maps Flower's keyword arguments, both generations of them, onto pollinate's
(``_FlowerStrategy.__init__``):

=================================================  ========================================
Flower 1.x / Message API                           pollinate
=================================================  ========================================
``fraction_fit`` / ``fraction_train``              ``Sampling(fraction_fit=...)``
``fraction_evaluate``                              ``Sampling(fraction_evaluate=...)``
``min_fit_clients`` / ``min_train_nodes``          ``Sampling(min_fit_clients=...)``
``min_evaluate_clients`` / ``min_evaluate_nodes``  ``Sampling(min_evaluate_clients=...)``
``min_available_clients`` / ``min_available_nodes`` ``Sampling(min_available_clients=...)``
``accept_failures`` (True)                         ``failure_tolerance=1.0`` (False: 0.0)
``evaluate_fn(round, ndarrays, config)``           ``evaluate_fn(round, arrays)``
``on_fit_config_fn`` / ``on_evaluate_config_fn``   the same
``fit_/evaluate_metrics_aggregation_fn``           the same (Flower's default: none)
``initial_parameters``                             ``ServerApp(initial_arrays=...)``
=================================================  ========================================

A round samples ``max(int(n * fraction), min_clients)`` clients, as Flower does (pollinate
rounds ``n * fraction`` up). The adaptive strategies turn on the options that reproduce
Flower's formulas (``FedOpt(initial_v=0.0)``, ``FedAdam(bias_correction=True)``, and
FedAdagrad's ``beta_1 = 0``): see docs/migrating-from-flower.md.

``start(grid=..., initial_arrays=..., num_rounds=...)`` is the Message API's entry point:
it runs the strategy on a grid and returns a ``Result`` (``server.py`` hands the engine's
grid to ``@app.main()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pollinate.aggregate import weighted_average
from pollinate.flower.client import ROUND_KEY, WEIGHT_KEY
from pollinate.flower.records import (
    ArrayRecord,
    ConfigRecord,
    MetricRecord,
    Parameters,
    RecordDict,
    metric_values,
)
from pollinate.loop.app import ServerApp as PollinateServerApp
from pollinate.loop.grid import Grid
from pollinate.loop.run import run
from pollinate.loop.screen import Validation
from pollinate.records import Arrays, Config, Metrics
from pollinate.strategy import fedavg, fedopt
from pollinate.strategy.base import ConfigFn, FitAggregator, Strategy

FLOWER_VALIDATION = Validation(
    anomaly_threshold=None,
    norm_multiple=None,
    examples_multiple=None,
    quarantine_threshold=None,
    pull_threshold=None,
)
"""Flower bounds no update by the others of its round, so the compat server apps turn
pollinate's relative bounds off (shapes, dtypes and finite values are still checked): an
honest outlier is then aggregated as Flower would. Use pollinate's own ``ServerApp`` to keep
them on."""

MessageAggrFn = Callable[[list[RecordDict], str], MetricRecord]


@dataclass
class Result:
    """What ``start`` returns, as Flower's: the final model and the metrics by round."""

    arrays: ArrayRecord = field(default_factory=ArrayRecord)
    train_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_clientapp: dict[int, MetricRecord] = field(default_factory=dict)
    evaluate_metrics_serverapp: dict[int, MetricRecord] = field(default_factory=dict)


class _FlowerStrategy(Strategy):
    """Flower's arguments, Flower's sample sizes, and ``start``; the rest is pollinate's."""

    _message_api = False

    #: Called once, in the engine's thread, when the last round has been recorded: how
    #: ``@app.main()`` learns that ``start`` may return (``server.py``).
    on_last_round: Callable[[], None] | None = None

    def __init__(
        self,
        *,
        fraction_fit: float | None = None,
        fraction_train: float | None = None,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int | None = None,
        min_train_nodes: int | None = None,
        min_evaluate_clients: int | None = None,
        min_evaluate_nodes: int | None = None,
        min_available_clients: int | None = None,
        min_available_nodes: int | None = None,
        evaluate_fn: Callable[..., Any] | None = None,
        on_fit_config_fn: ConfigFn | None = None,
        on_evaluate_config_fn: ConfigFn | None = None,
        accept_failures: bool = True,
        initial_parameters: Parameters | None = None,
        fit_metrics_aggregation_fn: Callable[..., Metrics] | None = None,
        evaluate_metrics_aggregation_fn: Callable[..., Metrics] | None = None,
        train_metrics_aggr_fn: MessageAggrFn | None = None,
        evaluate_metrics_aggr_fn: MessageAggrFn | None = None,
        weighted_by_key: str = WEIGHT_KEY,
        arrayrecord_key: str = "arrays",
        configrecord_key: str = "config",
        inplace: bool = True,
        **own: Any,
    ) -> None:
        from pollinate.strategy.base import Sampling

        fraction = _first(fraction_fit, fraction_train, 1.0)
        sampling = Sampling(
            fraction_fit=fraction,
            fraction_evaluate=fraction_evaluate,
            min_fit_clients=_first(min_fit_clients, min_train_nodes, 2),
            min_evaluate_clients=_first(min_evaluate_clients, min_evaluate_nodes, 2),
            min_available_clients=_first(min_available_clients, min_available_nodes, 2),
        )
        super().__init__(
            sampling=sampling,
            failure_tolerance=1.0 if accept_failures else 0.0,
            evaluate_fn=None,
            on_fit_config_fn=on_fit_config_fn,
            on_evaluate_config_fn=on_evaluate_config_fn,
            fit_metrics_aggregation_fn=fit_metrics_aggregation_fn
            or _records_fn(train_metrics_aggr_fn, weighted_by_key),
            evaluate_metrics_aggregation_fn=evaluate_metrics_aggregation_fn
            or _records_fn(evaluate_metrics_aggr_fn, weighted_by_key),
            **own,
        )
        self._classic_evaluate_fn = evaluate_fn
        self.initial_parameters = initial_parameters
        self._train_config: Config = {}
        self._evaluate_config: Config = {}
        self._result = Result()
        self._round = 0
        self._app: PollinateServerApp | None = None

    # --- Flower's sample sizes and config --------------------------------------------------

    def sample_fit(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        wanted = _flower_count(len(available), self.sampling.fraction_fit, self.min_fit_clients)
        return self._sample(available, 0.0, wanted, "fit", rng)

    def sample_evaluate(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        sampling = self.sampling
        if sampling.fraction_evaluate == 0.0:
            return []
        minimum = sampling.min_evaluate_clients
        wanted = _flower_count(len(available), sampling.fraction_evaluate, minimum)
        return self._sample(available, 0.0, wanted, "evaluate", rng)

    def configure_fit(self, round: int) -> Config:
        return self._with_round({**self._train_config, **super().configure_fit(round)}, round)

    def configure_evaluate(self, round: int) -> Config:
        config = {**self._evaluate_config, **super().configure_evaluate(round)}
        return self._with_round(config, round)

    def _with_round(self, config: Config, round: int) -> Config:
        return {**config, ROUND_KEY: round} if self._message_api else config

    # --- results, noted round by round for ``Result`` ----------------------------------------

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        self._round = round
        return super().start_fit(round, current)

    def aggregate_fit_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        metrics = super().aggregate_fit_metrics(results)
        self._result.train_metrics_clientapp[self._round] = MetricRecord(metrics)
        return metrics

    def aggregate_evaluate_metrics(self, results: list[tuple[int, Metrics]]) -> Metrics:
        metrics = super().aggregate_evaluate_metrics(results)
        self._result.evaluate_metrics_clientapp[self._round] = MetricRecord(metrics)
        return metrics

    def evaluate(self, round: int, arrays: Arrays) -> tuple[float, Metrics] | None:
        self._round = round
        self._result.arrays = ArrayRecord(arrays)
        fn = self._classic_evaluate_fn
        if fn is None:
            return None
        if not self._message_api:  # Flower 1.x: (round, ndarrays, config) -> (loss, metrics)
            out = fn(round, arrays.to_list(), {})
            return None if out is None else (float(out[0]), metric_values(out[1]))
        record = fn(round, ArrayRecord(arrays))  # Message API: (round, ArrayRecord) -> metrics
        if record is None:
            return None
        self._result.evaluate_metrics_serverapp[round] = MetricRecord(record)
        metrics = metric_values(record)
        loss = next((v for k, v in metrics.items() if k.endswith("loss")), math.nan)
        return float(loss), metrics

    def state(self) -> Arrays:
        """The strategy's state; asked once per recorded round (``loop/recorder.py``), which
        is when ``on_last_round`` learns of the last one."""
        state = super().state()
        app, hook = self._app, self.on_last_round
        if hook is not None and app is not None and self._round >= app.num_rounds:
            self.on_last_round = None
            hook()
        return state

    # --- the Message API's entry point ---------------------------------------------------------

    def start(
        self,
        grid: Grid,
        initial_arrays: Arrays,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run ``num_rounds`` rounds from ``initial_arrays`` on ``grid``; the final model and
        the metrics by round. The grid is a pollinate ``Grid``: the one ``@app.main()``
        receives, or e.g. a ``SimulationGrid``."""
        app = self.server_app(initial_arrays, num_rounds, timeout)
        self._train_config, self._evaluate_config = (
            dict(train_config or {}),
            dict(evaluate_config or {}),
        )
        if evaluate_fn is not None:
            self._classic_evaluate_fn = evaluate_fn
        hand_over = getattr(grid, "hand_over", None)
        if callable(hand_over):  # the engine runs the loop (server.py)
            hand_over(app)
        else:
            run(grid, app)
        return self._result

    def server_app(
        self, initial_arrays: Arrays | None, num_rounds: int, timeout: float | None
    ) -> PollinateServerApp:
        """The pollinate ServerApp that runs this strategy as Flower would."""
        self._message_api = initial_arrays is not None and self.initial_parameters is None
        if self._message_api:
            self._to_message_defaults()
        initial = initial_arrays if initial_arrays is not None else self.initial_parameters
        self._app = PollinateServerApp(
            strategy=self,
            num_rounds=num_rounds,
            initial_arrays=None if initial is None else Arrays(initial),
            round_timeout=timeout,
            validation=FLOWER_VALIDATION,
        )
        return self._app

    def _to_message_defaults(self) -> None:
        """The Message API aggregates metrics by ``num-examples`` unless told otherwise."""
        if self.fit_metrics_aggregation_fn is None:
            self.fit_metrics_aggregation_fn = weighted_average
        if self.evaluate_metrics_aggregation_fn is None:
            self.evaluate_metrics_aggregation_fn = weighted_average


class FedAvg(_FlowerStrategy, fedavg.FedAvg):
    """Flower's ``FedAvg`` (both generations' arguments) as pollinate's FedAvg."""


class FedProx(_FlowerStrategy, fedavg.FedProx):
    """Flower's ``FedProx(proximal_mu=...)`` as pollinate's FedProx."""


class FedAdam(_FlowerStrategy, fedopt.FedAdam):
    """Flower's ``FedAdam``: v starts at 0 and the step is bias-corrected, as in Flower."""

    def __init__(self, *, eta_l: float = 0.1, tau: float = 1e-9, **options: Any) -> None:
        super().__init__(tau=tau, initial_v=0.0, bias_correction=True, **options)
        self.eta_l = eta_l


class FedYogi(_FlowerStrategy, fedopt.FedYogi):
    """Flower's ``FedYogi``: v starts at 0, as in Flower."""

    def __init__(
        self, *, eta: float = 1e-2, eta_l: float = 0.0316, tau: float = 1e-3, **options: Any
    ) -> None:
        super().__init__(eta=eta, tau=tau, initial_v=0.0, **options)
        self.eta_l = eta_l


class FedAdagrad(_FlowerStrategy, fedopt.FedAdagrad):
    """Flower's ``FedAdagrad``: beta_1 = 0 and v starts at 0, as in Flower."""

    def __init__(self, *, eta_l: float = 0.1, tau: float = 1e-9, **options: Any) -> None:
        super().__init__(tau=tau, beta_1=0.0, initial_v=0.0, **options)
        self.eta_l = eta_l


def _flower_count(available: int, fraction: float, minimum: int) -> int:
    """Flower's sample size: ``int(n * fraction)`` (rounded down), at least ``minimum``."""
    return max(int(available * fraction), minimum)


def _first(*values: Any) -> Any:
    return next(v for v in values if v is not None)


def _records_fn(fn: MessageAggrFn | None, key: str) -> Callable[..., Metrics] | None:
    """A Message-API metrics aggregation (over RecordDicts) as pollinate's (over pairs)."""
    if fn is None:
        return None

    def aggregate(results: list[tuple[int, Metrics]]) -> Metrics:
        records = [RecordDict({"metrics": MetricRecord({**m, key: n})}) for n, m in results]
        return metric_values(fn(records, key))

    return aggregate
