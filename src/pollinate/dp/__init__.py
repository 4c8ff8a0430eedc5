"""Privacy: differential privacy (DP-FedAvg with fixed or adaptive clipping, and its
accountant).

``DifferentialPrivacy`` wraps a strategy; clients doing client-side clipping call
``clip_update``; ``epsilon`` and ``noise_for_epsilon`` (in ``pollinate.dp.accountant``)
count the privacy a run spends with Google's dp-accounting, the optional ``dp`` extra.
"""

from pollinate.dp.accountant import epsilon, noise_for_epsilon
from pollinate.dp.clip import CLIPPING_NORM_KEY, NORM_BELOW_KEY, clip_update, update_norm
from pollinate.dp.strategy import AdaptiveClipping, DifferentialPrivacy

__all__ = [
    "CLIPPING_NORM_KEY",
    "NORM_BELOW_KEY",
    "AdaptiveClipping",
    "DifferentialPrivacy",
    "clip_update",
    "epsilon",
    "noise_for_epsilon",
    "update_norm",
]
