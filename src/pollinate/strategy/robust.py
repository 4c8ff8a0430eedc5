"""What the robust strategies share: an aggregator that keeps the round's updates.

Medians, trimmed means, Krum and Bulyan are statistics of all of a round's updates at once;
they cannot fold updates in as they arrive the way FedAvg's mean does.

Invariant: a robust strategy's aggregator holds a reference to every accepted update of the
round until ``finish`` (one copy per update: O(clients x model) memory where FedAvg needs
O(model)), and hands them over sorted by node id, so the result does not depend on the order
replies arrived in, bit for bit. Replies with zero examples are left out, as FedAvg gives
them no weight.
"""

from __future__ import annotations

import logging

from pollinate.checks import integer
from pollinate.records import Arrays
from pollinate.strategy.base import FitAggregator, FitResult, Strategy, TooFewReplies

log = logging.getLogger("pollinate.strategy")


class RobustStrategy(Strategy):
    """Base of strategies that aggregate the round's updates all at once.

    A subclass sets its own parameters, then calls ``super().__init__(**options)``, and
    implements ``combine``; it overrides ``min_replies`` when it needs more than one update.
    ``Sampling.min_fit_clients`` defaults to ``min_replies``, and less is refused: a round
    could never be aggregated.
    """

    bounds_outliers = False  # the statistic sees outliers as sent, or not at all
    aggregates_mean = False  # it needs each update, which secure aggregation hides

    @property
    def fewest_fit_clients(self) -> int:
        return self.min_replies

    @property
    def default_min_fit_clients(self) -> int:
        return self.min_replies

    @property
    def min_replies(self) -> int:
        """The replies a round needs for the strategy's full guarantee."""
        return 1

    @property
    def fewest_replies(self) -> int:
        """The fewest usable replies a round can be aggregated from at all (a strategy may
        tolerate fewer malicious clients with fewer replies, and says so when it does)."""
        return self.min_replies

    def combine(self, updates: list[Arrays], weights: list[int]) -> Arrays:
        """The aggregate of ``updates`` (in node-id order) with their example counts."""
        raise NotImplementedError

    def start_fit(self, round: int, current: Arrays) -> FitAggregator:
        return _KeepAll(current, self)


class _KeepAll:
    """Keeps every result with examples; at finish, combines them in node-id order."""

    def __init__(self, current: Arrays, strategy: RobustStrategy) -> None:
        self._current = current
        self._strategy = strategy
        self._results: list[FitResult] = []

    def add(self, result: FitResult) -> None:
        if result.num_examples > 0:
            self._results.append(result)

    def finish(self) -> Arrays:
        strategy = self._strategy
        results = sorted(self._results, key=lambda r: r.node_id)
        if not results:
            raise ValueError("no update with examples was added; the aggregate is undefined")
        if len(results) < strategy.fewest_replies:
            raise TooFewReplies(
                f"{type(strategy).__name__} got {len(results)} usable replies this round but "
                f"needs {strategy.requirement}, at least {strategy.fewest_replies} here.\nHint: "
                "sample more clients per round (min_fit_clients) so that failures leave enough."
            )
        combined = strategy.combine([r.arrays for r in results], [r.num_examples for r in results])
        return strategy.server_update(self._current, combined)


def check_malicious(strategy: str, value: int) -> int:
    """``num_malicious`` checked: an int >= 0."""
    hint = f"{strategy}(num_malicious=1) tolerates one client that sends anything."
    return integer("num_malicious", value, minimum=0, hint=hint)


def tolerable(strategy: str, wanted: int, feasible: int, n: int) -> int:
    """``wanted`` malicious clients, or fewer if ``n`` updates cannot tolerate that many (as
    when validation quarantined some): said in the run's log."""
    if wanted <= feasible:
        return wanted
    log.warning(
        "%s: %d updates tolerate at most f=%d malicious clients, not num_malicious=%d; "
        "aggregating with f=%d",
        strategy,
        n,
        feasible,
        wanted,
        feasible,
    )
    return feasible
