"""FedBuff: buffered asynchronous aggregation, so that no step waits for the slowest node."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Unpack

import numpy as np

from pollinate.aggregate.staleness import BufferedStep, staleness_weight
from pollinate.checks import integer, number, positive
from pollinate.records import Arrays
from pollinate.strategy.base import BaseOptions, BaseStrategy, Rounds


class FedBuff(BaseStrategy):
    """FedBuff (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
    Aggregation", AISTATS, Algorithm 1): nodes train continuously, each from the model version
    current when its task was sent; the hub folds each update in as it arrives, weighted by
    its staleness ``tau`` (steps taken since its version), and every ``buffer_size`` = K
    updates applies one step:

        w_{t+1} = w_t + eta_g * sum_i n_i s(tau_i) (w_i - w_{t - tau_i}) / sum_i n_i,
        s(tau) = (1 + tau) ** -staleness_exponent    (1 / sqrt(1 + tau) by default)

    (the paper's ``(1/K) sum_i s(tau_i) Delta_i`` when every node has as many examples;
    ``pollinate.aggregate.staleness`` has the math). ``ServerApp.num_rounds`` counts steps,
    and each step is one record in the history, with the mean staleness of its updates as
    ``fit["staleness"]``; ``ServerApp.round_timeout`` bounds each task. The run loop is
    ``pollinate.loop.buffered``.

    One departure from the paper, for fleets smaller than its thousands of devices: a node
    trains at most once from each model version. Otherwise a fast node would send update
    after update from one version, the same data counted again and again in one step; and
    so, with every node equally fast and K = the number of nodes, FedBuff is FedAvg with a
    server learning rate. A straggler holds no step up as long as K other nodes can fill it.

    Args:
        buffer_size: K, updates per step (10 in the paper). Smaller steps sooner on fewer,
            noisier updates; keep it at most the number of nodes that are not stragglers.
        concurrency: nodes training at once. None: ``Sampling.fraction_fit`` of the
            available nodes (at least ``min_fit_clients``), by default all of them.
        server_learning_rate: ``eta_g``; 1.0 moves the model to the buffer's weighted mean
            of client models when no update is stale.
        staleness_exponent: ``a`` in ``s(tau) = (1 + tau)^-a``; 0 weighs stale updates
            fully.
        **options: the arguments of every strategy (``BaseStrategy``: ``sampling``,
            ``evaluate_fn``, ``on_fit_config_fn``, ``failure_tolerance``, ...). There is no
            federated evaluation: every node is busy training; ``evaluate_fn`` evaluates
            every step centrally.

    >>> strategy = FedBuff(buffer_size=10, concurrency=50, server_learning_rate=1.0)
    >>> strategy.staleness_weight(3)
    0.5
    """

    rounds = Rounds.BUFFERED

    def __init__(
        self,
        *,
        buffer_size: int = 10,
        concurrency: int | None = None,
        server_learning_rate: float = 1.0,
        staleness_exponent: float = 0.5,
        **options: Unpack[BaseOptions],
    ) -> None:
        super().__init__(**options)
        self.buffer_size = integer(
            "buffer_size", buffer_size, minimum=1, hint="FedBuff(buffer_size=10)"
        )
        self.concurrency = (
            None
            if concurrency is None
            else integer("concurrency", concurrency, minimum=1, hint="FedBuff(concurrency=10)")
        )
        self.server_learning_rate = positive(
            "server_learning_rate",
            server_learning_rate,
            hint="FedBuff(server_learning_rate=1.0) applies each step's mean update as it is",
        )
        self.staleness_exponent = number(
            "staleness_exponent",
            staleness_exponent,
            minimum=0,
            hint="FedBuff(staleness_exponent=0.5), the paper's 1 / sqrt(1 + tau); 0 weighs "
            "stale updates fully",
        )

    def __repr__(self) -> str:
        return (
            f"FedBuff(buffer_size={self.buffer_size}, concurrency={self.concurrency}, "
            f"server_learning_rate={self.server_learning_rate}, staleness_exponent="
            f"{self.staleness_exponent})"
        )

    def training_slots(self, available: int) -> int:
        """How many of ``available`` nodes train at once."""
        if self.concurrency is not None:
            return min(self.concurrency, available)
        # the decimal the user wrote, as in sampling: 0.14 * 50 is 7 nodes, not 8
        fraction = Fraction(str(self.sampling.fraction_fit))
        wanted = max(math.ceil(fraction * available), self.min_fit_clients)
        return min(max(wanted, 1), available)

    def choose(self, idle: Sequence[int], count: int, rng: np.random.Generator) -> list[int]:
        """``count`` of the ``idle`` nodes to send a task to now, drawn without replacement."""
        count = min(count, len(idle))
        if count <= 0:
            return []
        chosen = rng.choice(np.asarray(sorted(idle)), size=count, replace=False)
        return sorted(int(i) for i in chosen)

    def staleness_weight(self, staleness: int) -> float:
        """``s(tau)``: how much an update ``staleness`` steps old counts."""
        return staleness_weight(staleness, self.staleness_exponent)

    def start_step(self, current: Arrays) -> BufferedStep:
        """The buffer of the step that moves ``current``."""
        return BufferedStep(current, self.server_learning_rate)
