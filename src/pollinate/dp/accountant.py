"""The privacy accountant: epsilon at a given delta after each round of a DP run.

Built on Google's ``dp-accounting`` (Rényi DP, Mironov 2017; subsampled Gaussian per Mironov,
Talwar & Zhang 2019), imported here and only when epsilon is computed: ``import pollinate``
never loads it, and it is an optional extra (``pip install pollinate[dp]``).

Each round is one ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``: the Gaussian mechanism
with noise multiplier ``z`` (noise std ``z * C`` on a sum of updates clipped to norm ``C``),
applied to a sample in which each client takes part with probability ``q``. Assumptions,
stated because epsilon means nothing without them:

- user-level DP: neighbouring runs differ in all the data of one client;
- sampling: the run loop samples a fixed number of clients without replacement; this is
  accounted as Poisson sampling with ``q = sampled / available`` (the usual approximation of
  DP-FedAvg, McMahan et al. 2018), and the sample must stay secret from the adversary;
- equal weights: every sampled client's clipped update counts once (not by its examples), so
  one client moves the sum by at most ``C``;
- adaptive clipping spends part of ``z`` on the noised count of clients below the bound;
  ``z`` here is the whole mechanism's (Andrew et al. 2021, Thm. 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from types import ModuleType

from pollinate.checks import fraction, number


def epsilon(noise_multiplier: float, sampling_rates: Sequence[float], delta: float) -> float:
    """Epsilon at ``delta`` after one round per entry of ``sampling_rates`` (RDP).

    >>> round(epsilon(1.1, [0.01] * 1000, 1e-5), 2)
    1.71
    """
    _check_noise(noise_multiplier)
    _check_delta(delta)
    dp_accounting = _dp_accounting()
    accountant = dp_accounting.rdp.RdpAccountant()
    # rounds with the same rate compose as one self-composed event: as exact, and fast
    for rate, count in Counter(sampling_rates).items():
        _check_rate(rate)
        event = dp_accounting.PoissonSampledDpEvent(
            rate, dp_accounting.GaussianDpEvent(noise_multiplier)
        )
        accountant.compose(event, count)
    return float(accountant.get_epsilon(delta))


def noise_for_epsilon(
    target: float, sampling_rate: float, rounds: int, delta: float, *, tolerance: float = 1e-4
) -> float:
    """The smallest noise multiplier whose epsilon after ``rounds`` rounds is at most
    ``target`` (bisection on ``epsilon``, which falls as the noise grows).

    >>> z = noise_for_epsilon(3.0, 1.0, 20, 1e-5)
    >>> epsilon(z, [1.0] * 20, 1e-5) <= 3.0
    True
    """
    if not target > 0 or not math.isfinite(target):
        raise ValueError(f"target epsilon must be a finite number > 0, got {target!r}")
    low, high = 1e-2, 1.0
    while epsilon(high, [sampling_rate] * rounds, delta) > target:
        low, high = high, high * 2
        if high > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon={target!r}")
    while high - low > tolerance * high:
        mid = (low + high) / 2
        if epsilon(mid, [sampling_rate] * rounds, delta) > target:
            low = mid
        else:
            high = mid
    return high


def _dp_accounting() -> ModuleType:
    try:
        import dp_accounting
        import dp_accounting.rdp
    except ImportError as exc:
        raise ImportError(
            "differential privacy needs Google's dp-accounting library to count epsilon, and "
            f"it is not installed ({exc}).\nHint: pip install 'pollinate[dp]'"
        ) from exc
    return dp_accounting


def _check_noise(noise_multiplier: float) -> None:
    hint = (
        "without noise there is no differential privacy (epsilon is infinite); "
        "noise_multiplier=1.0 is a common start, and pollinate.dp.noise_for_epsilon(target, "
        "q, rounds, delta) finds the noise for a target epsilon."
    )
    number("noise_multiplier", noise_multiplier, above=0, finite=False, hint=hint)


def _check_delta(delta: float) -> None:
    hint = "delta=1e-5, well below 1 / number of clients."
    number("delta", delta, above=0, below=1, hint=hint)


def _check_rate(rate: float) -> None:
    fraction("a sampling rate", rate, hint="epsilon(..., sampling_rates=[0.1, 0.1])")
