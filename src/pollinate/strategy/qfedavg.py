"""q-FedAvg: fair resource allocation, a step that weighs clients by their loss."""

from __future__ import annotations

import math
from typing import Unpack

from pollinate.aggregate import QFedAvgStep
from pollinate.checks import is_number, number, positive
from pollinate.errors import RunError
from pollinate.records import Arrays
from pollinate.strategy.base import FitAggregator, FitResult, Strategy, StrategyOptions


class QFedAvg(Strategy):
    """q-FedAvg (Li et al. 2020, "Fair Resource Allocation in Federated Learning", ICLR,
    Algorithm 2). With ``F_k`` client k's loss on the global model ``w_t`` before training,
    ``w^k`` its model after, and ``L = lipschitz``::

        Delta_k = F_k^q L (w_t - w^k)
        h_k     = q F_k^(q-1) ||L (w_t - w^k)||^2 + L F_k^q
        w_{t+1} = w_t - sum_k Delta_k / sum_k h_k

    When to use: the global model should not serve the average client at the expense of the
    worst-off ones; a larger ``q`` evens out the clients' accuracy more (the paper uses 0.001
    to 15). ``q = 0`` is FedAvg with equal weights. ``lipschitz`` is the paper's ``1 / lr``,
    with ``lr`` the clients' learning rate.

    Each client reports its loss on the received model, measured before it trains, in its fit
    metrics under ``loss_key``; a reply without it stops the run with a RunError that says so.

    Cost: streams like FedAvg: one float64 accumulator of the model's size (O(model) memory,
    whatever the number of clients); time O(model) per reply.

    >>> strategy = QFedAvg(q=1.0, lipschitz=1 / 0.01)  # clients train with lr = 0.01
    """

    aggregates_mean = False  # q-weighted: each update counts by its loss, not a plain mean

    def __init__(
        self,
        *,
        q: float,
        lipschitz: float,
        loss_key: str = "loss_before",
        **options: Unpack[StrategyOptions],
    ) -> None:
        hint = "QFedAvg(q=1.0, lipschitz=1 / client_learning_rate)"
        q = number("q", q, minimum=0, hint=hint)
        lipschitz = positive("lipschitz", lipschitz, hint=hint)
        if not isinstance(loss_key, str) or not loss_key:
            raise TypeError(
                f"loss_key must be a metric name, got {loss_key!r}\nHint: QFedAvg(q=1.0, "
                "lipschitz=100.0, loss_key='loss_before')"
            )
        super().__init__(**options)
        self.q, self.lipschitz, self.loss_key = q, lipschitz, loss_key

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        return _QFedAvgAggregator(current, self)


class _QFedAvgAggregator:
    """Folds each reply into the q-FedAvg sums as it arrives."""

    def __init__(self, current: Arrays, strategy: QFedAvg) -> None:
        self._current = current
        self._strategy = strategy
        self._step = QFedAvgStep(current, strategy.q, strategy.lipschitz)

    def add(self, result: FitResult) -> None:
        if result.num_examples == 0:
            return  # trained on nothing: no loss to weigh, and FedAvg gives it no weight
        self._step.add(result.arrays, self._loss(result))

    def finish(self) -> Arrays:
        return self._strategy.server_update(self._current, self._step.result())

    def _loss(self, result: FitResult) -> float:
        key = self._strategy.loss_key
        loss = result.metrics.get(key)
        if is_number(loss) and 0 <= loss < math.inf:
            return float(loss)
        problem = "sent no" if loss is None else f"sent {loss!r} as its"
        raise RunError(
            f"node {result.node_id} {problem} {key!r} metric: q-FedAvg weighs each client by "
            "its loss (a finite number >= 0) on the global model before local training.\n"
            f"Hint: in the client's fit, evaluate the received arrays first and return the "
            f"loss with the metrics, e.g. `return arrays, n, {{{key!r}: loss}}`; or name the "
            "metric the clients report with QFedAvg(loss_key=...)."
        )
