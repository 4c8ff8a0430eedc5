"""Client speeds: simulated stragglers, so that waiting for slow nodes is measured, not guessed.

``SimulationGrid(..., client_speed=Stragglers(0.2, slowdown=10.0))`` makes a fifth of the
virtual clients ten times slower. A slow client's task takes ``slowdown`` times as long as
the client really took: the grid holds its reply back for ``(slowdown - 1) x`` the measured
time after the client returns. So the delay scales with the real work (more local epochs or
a bigger model make a straggler slower by the same factor), and no worker thread is held
meanwhile: the other clients go on computing, as other machines would.

``client_speed`` may also be any function ``node_id -> slowdown`` (1.0: full speed), e.g. a
draw from the speeds of a measured fleet.

Invariant: which clients are slow depends only on ``(seed, num_clients)``, and not on the
draw that picks ``Adversaries``: with one seed, the slow clients and the attackers are drawn
independently.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pollinate.checks import integer, number

ClientSpeed = Callable[[int], float]
"""``node_id -> slowdown``: how many times longer than its real work a client's task takes."""


@dataclass(frozen=True)
class Stragglers:
    """``fraction`` of the virtual clients take ``slowdown`` times as long as they work.

    >>> stragglers = Stragglers(0.2, slowdown=10.0)
    >>> len(stragglers.clients(20)), sorted(slowdowns(stragglers, 20))[-5:]
    (4, [1.0, 10.0, 10.0, 10.0, 10.0])
    """

    fraction: float
    slowdown: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        fraction, slowdown = self.fraction, self.slowdown
        hint = "Stragglers(0.2, slowdown=10.0) makes 20% of clients 10x slower."
        number("Stragglers.fraction", fraction, minimum=0, maximum=1, hint=hint)
        _check_slowdown(slowdown, "Stragglers.slowdown")
        integer("Stragglers.seed", self.seed, minimum=0, hint="Stragglers(0.2, seed=1)")

    def clients(self, num_clients: int) -> frozenset[int]:
        """The ids of the slow clients among ``0 .. num_clients - 1``: ``fraction *
        num_clients`` rounded half up, drawn from ``seed``."""
        count = math.floor(self.fraction * num_clients + 0.5)
        # seeded with a second word, so as not to repeat Adversaries' draw for the same seed
        order = np.random.default_rng([self.seed, 1]).permutation(num_clients)
        return frozenset(int(i) for i in order[:count])


def slowdowns(speed: ClientSpeed | Stragglers, num_clients: int) -> list[float]:
    """Each client's slowdown, checked: ``>= 1`` and finite."""
    if isinstance(speed, Stragglers):
        slow = speed.clients(num_clients)
        return [speed.slowdown if n in slow else 1.0 for n in range(num_clients)]
    if not callable(speed):
        raise TypeError(
            f"client_speed must be Stragglers(...) or a function node_id -> slowdown, got "
            f"{speed!r}\nHint: client_speed=Stragglers(0.2, slowdown=10.0)"
        )
    factors = [speed(n) for n in range(num_clients)]
    for n, factor in enumerate(factors):
        _check_slowdown(factor, f"client_speed({n})")
    return [float(f) for f in factors]


def _check_slowdown(value: object, what: str) -> None:
    hint = "a slowdown is how many times longer than its real work a task takes; 1.0 is none."
    number(what, value, minimum=1, hint=hint)
