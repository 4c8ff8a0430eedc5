"""The settings of a secure-aggregation round, checked before any key is made.

Bell et al. 2020 ("Secure Single-Server Aggregation with (Poly)Logarithmic Overhead", §3-4)
connect each client to ``k = O(log n)`` neighbours and share its secrets among them with a
threshold ``t``. Two inequalities make the protocol work, and this module refuses settings that
break them:

- privacy: ``t > k / 2``. An honest client reveals, for each neighbour, either a share of its
  self-mask seed or a share of its key, never both; with a majority threshold the server cannot
  collect ``t`` shares of both kinds for one client, and so cannot strip all of its masks.
- liveness: ``t <= (1 - max_dropout_fraction) * k``. After the tolerated dropouts a client
  still has ``t`` neighbours left to reveal its shares.

>>> config = SecAggConfig()
>>> config.neighbour_count(10), config.threshold(10)
(9, 6)
>>> config.neighbour_count(100), config.threshold(100)
(20, 12)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["SecAggConfig"]


@dataclass(frozen=True)
class SecAggConfig:
    """Parameters of SecAgg+; the defaults tolerate 30% of clients dropping out.

    ``neighbours`` is ``k`` (even, or ``None`` for about ``3 log2 n``); ``threshold_fraction``
    sets ``t = ceil(fraction * k)``; ``clipping_range`` ``c`` bounds every update value to
    ``[-c, c]`` before quantization; the field is ``Z / 2**modulus_bits``.

    Run over the Grid (``ServerApp(secure_aggregation=...)``), each client sends its change to
    the global model weighted by ``min(examples, max_weight) / max_weight``, and that weight,
    so the hub gets the example-weighted mean of the changes without seeing any one of them.
    ``max_weight=None`` weighs every client alike (what DP-FedAvg assumes).
    """

    neighbours: int | None = None
    threshold_fraction: float = 0.6
    max_dropout_fraction: float = 0.3
    clipping_range: float = 8.0
    modulus_bits: int = 32
    max_weight: float | None = 10_000.0

    def __post_init__(self) -> None:
        self._check_fractions()
        if self.max_weight is not None and not (
            math.isfinite(self.max_weight) and self.max_weight >= 1
        ):
            raise ValueError(
                f"max_weight={self.max_weight!r} must be a number >= 1 (the example count at "
                "which a client's weight stops growing), or None for equal weights.\n"
                "Hint: SecAggConfig(max_weight=10_000)"
            )
        if self.neighbours is not None and (self.neighbours < 2 or self.neighbours % 2):
            raise ValueError(
                f"neighbours={self.neighbours!r}: the neighbour graph is a ring with k/2 "
                "neighbours on each side, so k must be even and at least 2.\n"
                "Hint: SecAggConfig(neighbours=16), or neighbours=None for ~3*log2(n)"
            )
        if not 16 <= self.modulus_bits <= 64:
            raise ValueError(
                f"modulus_bits={self.modulus_bits!r} is outside 16..64: fewer bits leave too "
                "few quantization levels, more do not fit uint64.\n"
                "Hint: SecAggConfig(modulus_bits=32)"
            )
        if not (math.isfinite(self.clipping_range) and self.clipping_range > 0):
            raise ValueError(
                f"clipping_range={self.clipping_range!r} must be a positive number: updates "
                "are clipped to [-c, c] before quantization.\n"
                "Hint: SecAggConfig(clipping_range=8.0)"
            )

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> SecAggConfig | None:
        """The config a run's ``secure-aggregation = true`` and ``secagg-*`` keys ask for
        (``secagg-max-dropout-fraction = 0.2``...), or None when it is off.

        >>> SecAggConfig.from_run_config({"secure-aggregation": True, "secagg-neighbours": 8})
        SecAggConfig(neighbours=8, threshold_fraction=0.6, max_dropout_fraction=0.3, \
clipping_range=8.0, modulus_bits=32, max_weight=10000.0)
        """
        names = {f"secagg-{f.name.replace('_', '-')}": f for f in fields(cls)}
        unknown = sorted(k for k in run_config if k.startswith("secagg-") and k not in names)
        if unknown:
            raise ValueError(
                f"unknown secure-aggregation setting {', '.join(unknown)}.\n"
                f"Hint: the settings are {', '.join(names)}"
            )
        if not run_config.get("secure-aggregation", False):
            return None
        given = {f.name: run_config[key] for key, f in names.items() if key in run_config}
        if given.get("neighbours") == 0 or given.get("max_weight") == 0:  # 0: the default
            given = {k: v for k, v in given.items() if v != 0}
        return cls(**given)  # type: ignore[arg-type]

    def _check_fractions(self) -> None:
        if not 0.5 < self.threshold_fraction <= 1:
            raise ValueError(
                f"threshold_fraction={self.threshold_fraction!r} must be in (0.5, 1]: at a "
                "threshold of half the neighbours or less, the server can gather shares of "
                "both a client's self mask and its key, and unmask its update.\n"
                "Hint: SecAggConfig(threshold_fraction=0.6)"
            )
        if not 0 <= self.max_dropout_fraction < 0.5:
            raise ValueError(
                f"max_dropout_fraction={self.max_dropout_fraction!r} must be in [0, 0.5): "
                "the threshold has to stay above half the neighbours.\n"
                "Hint: SecAggConfig(max_dropout_fraction=0.3)"
            )
        if self.threshold_fraction + self.max_dropout_fraction > 1:
            raise ValueError(
                f"threshold_fraction={self.threshold_fraction!r} with max_dropout_fraction="
                f"{self.max_dropout_fraction!r}: once {self.max_dropout_fraction:.0%} of a "
                f"client's neighbours drop out, fewer than the {self.threshold_fraction:.0%} "
                "needed to reconstruct its secrets are left, and the round cannot finish.\n"
                "Hint: keep threshold_fraction + max_dropout_fraction <= 1, e.g. "
                "SecAggConfig(threshold_fraction=0.6, max_dropout_fraction=0.3)"
            )

    def neighbour_count(self, clients: int) -> int:
        """``k`` for a round of ``clients``: everyone when the graph would be (nearly) full."""
        if clients < 2:
            raise ValueError(
                f"secure aggregation needs at least 2 clients, got {clients}: "
                "the sum of one update is that update.\nHint: sample more clients per round"
            )
        wanted = self.neighbours
        if wanted is None:
            wanted = 2 * math.ceil(1.5 * math.log2(clients))
        return min(wanted, clients - 1)

    def threshold(self, clients: int) -> int:
        """``t = ceil(threshold_fraction * k)`` (at least 2, so one share never suffices)."""
        k = self.neighbour_count(clients)
        return max(2, math.ceil(self.threshold_fraction * k - 1e-9))

    def min_survivors(self, clients: int) -> int:
        """Fewest clients whose inputs may be summed: below this the round aborts."""
        return max(2, math.ceil((1 - self.max_dropout_fraction) * clients - 1e-9))
