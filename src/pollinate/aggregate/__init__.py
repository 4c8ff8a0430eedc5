"""The math of aggregation: pure functions and streaming accumulators over Arrays.

Strategies are thin policy on top of this package. One module per kind of aggregate:

- ``mean``: the streaming weighted mean (FedAvg), summed in pieces if need be (``PartialSum``),
  and the server optimizers (FedAvgM, FedOpt); O(model) memory whatever the number of updates.
- ``robust``: coordinate-wise median and trimmed mean, Krum, Multi-Krum and Bulyan; these
  need every update of a round at once (the caller holds one copy per update).
- ``fair``: q-FedAvg's step, streamed like the mean.
- ``staleness``: FedBuff's staleness weights and buffered step, streamed like the mean.
- ``trees``: XGBoost boosters as JSON, checked and merged by appending trees, without xgboost.
"""

from pollinate.aggregate.fair import QFedAvgStep
from pollinate.aggregate.mean import (
    PartialSum,
    WeightedMean,
    adagrad_moment,
    adam_moment,
    adaptive_step,
    first_moment,
    momentum_step,
    weighted_average,
    yogi_moment,
)
from pollinate.aggregate.robust import (
    bulyan,
    coordinate_median,
    krum_scores,
    median_distances,
    multi_krum,
    trimmed_mean,
)

__all__ = [
    "PartialSum",
    "QFedAvgStep",
    "WeightedMean",
    "adagrad_moment",
    "adam_moment",
    "adaptive_step",
    "bulyan",
    "coordinate_median",
    "first_moment",
    "krum_scores",
    "median_distances",
    "momentum_step",
    "multi_krum",
    "trimmed_mean",
    "weighted_average",
    "yogi_moment",
]
