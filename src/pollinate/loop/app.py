"""The server side of an app: which strategy, how many rounds, from which arrays."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pollinate.checks import integer, is_number, number
from pollinate.loop.deadline import RoundDeadline
from pollinate.loop.grid import Timeout
from pollinate.loop.screen import Validation
from pollinate.records import Arrays
from pollinate.secagg.config import SecAggConfig
from pollinate.strategy.base import BaseStrategy


@dataclass
class ServerApp:
    """What ``server_fn`` returns: the strategy and the shape of the run.

    Args:
        strategy: e.g. ``FedAvg(sampling=Sampling(fraction_fit=0.5))``.
        num_rounds: rounds of fit (+ evaluate) to run.
        initial_arrays: the starting global model; when None, one client's
            ``get_arrays`` / ``get_parameters`` provides it.
        round_timeout: how long each stage of a round waits for replies; replies later
            than that count as failures. None (the default) derives it from the round
            (``RoundDeadline()``): once half the tasks have answered, after ``t`` seconds,
            the stage ends ``max(60 s, 5 t)`` from its start; before that, after an hour
            without a reply. A ``RoundDeadline(...)`` tunes that rule; a number of seconds
            fixes the deadline; ``math.inf`` waits for every reply.
        node_wait: seconds a round waits, when fewer nodes are connected than the strategy
            needs, for them to come (back) before the run fails; the wait is logged.
        max_failed_rounds: the run fails (``RunError``) after this many rounds in a row in
            which no fit task gave a usable update: every client raising, refusing or
            missing its deadline is a broken run, not a slow one. None never stops it.
        validation: how fit updates are screened before the strategy sees them (on by
            default; see ``Validation``).
        secure_aggregation: ``SecAggConfig(...)`` runs every fit as SecAgg+ (``loop/
            secure.py``): the hub learns only the weighted mean of the updates. Needs a
            strategy that aggregates by that mean (FedAvg, FedAvgM, FedProx, FedAdam...).

    >>> from pollinate import FedAvg
    >>> app = ServerApp(FedAvg(), num_rounds=5)
    """

    strategy: BaseStrategy
    num_rounds: int = 3
    initial_arrays: Arrays | None = None
    round_timeout: float | RoundDeadline | None = None
    node_wait: float = 600.0
    max_failed_rounds: int | None = 3
    validation: Validation = field(default_factory=Validation)
    secure_aggregation: SecAggConfig | None = None

    def __post_init__(self) -> None:
        self._check_secure_aggregation()
        if not isinstance(self.strategy, BaseStrategy):
            raise TypeError(
                f"ServerApp.strategy must be a Strategy, got {self.strategy!r}\n"
                "Hint: ServerApp(strategy=FedAvg(), num_rounds=10)"
            )
        self.num_rounds = integer(
            "num_rounds", self.num_rounds, minimum=0, hint="ServerApp(strategy, num_rounds=3)"
        )
        if self.max_failed_rounds is not None:
            self.max_failed_rounds = integer(
                "max_failed_rounds",
                self.max_failed_rounds,
                minimum=1,
                hint="ServerApp(strategy, max_failed_rounds=5), or None never to stop a run",
            )
        if not isinstance(self.validation, Validation):
            raise TypeError(
                f"ServerApp.validation must be a Validation, got {self.validation!r}\n"
                "Hint: ServerApp(strategy, validation=Validation(anomaly_threshold=None))"
            )
        timeout = self.round_timeout
        fixed = is_number(timeout) and timeout > 0  # math.inf waits for every reply
        if not (timeout is None or isinstance(timeout, RoundDeadline) or fixed):
            raise ValueError(
                f"round_timeout must be seconds > 0, a RoundDeadline or None, got {timeout!r}\n"
                "Hint: ServerApp(strategy, round_timeout=120) or leave it out for the default."
            )
        number(
            "node_wait",
            self.node_wait,
            minimum=0,
            hint="ServerApp(strategy, node_wait=600.0): seconds a round waits for enough nodes",
        )

    def stage_timeout(self, tasks: int) -> Timeout:
        """The timeout of one stage of ``tasks`` tasks: a fresh ``StageClock`` under the
        derived rule, the fixed seconds, or None for ``math.inf``."""
        timeout = self.round_timeout
        if timeout is None:
            timeout = RoundDeadline()
        if isinstance(timeout, RoundDeadline):
            return timeout.clock(tasks)
        return None if math.isinf(timeout) else timeout

    def _check_secure_aggregation(self) -> None:
        secure = self.secure_aggregation
        if secure is None:
            return
        if not isinstance(secure, SecAggConfig):
            raise TypeError(
                f"ServerApp.secure_aggregation must be a SecAggConfig or None, got {secure!r}\n"
                "Hint: ServerApp(strategy, secure_aggregation=SecAggConfig())"
            )
        problem = self.strategy.secure_aggregation_problem(secure)
        if problem is not None:
            raise ValueError(problem)
