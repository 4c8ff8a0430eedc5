"""Adversaries: simulated clients that attack, so that robustness is measured, not claimed.

``Adversaries(fraction, attack)`` marks ``fraction`` of the virtual clients as adversarial.
They are chosen once, from ``seed``, and stay adversarial in every round they are sampled:
persistent attackers, the threat model of the papers below. Four named attacks:

- ``sign-flip``: send ``global - scale * (update - global)``, the honest update reversed.
- ``scale``: send ``global + scale * (update - global)``, the honest update boosted.
- ``gaussian-noise``: send ``global + N(0, noise_std^2)`` per coordinate, no training signal.
- ``label-flip``: train on labels ``c -> num_classes - 1 - c`` (``flip_labels``).

The first three poison the model: the grid rewrites an adversarial client's fit reply after
the client trained honestly, so the app needs no change. Only float arrays are rewritten, and
each keeps its dtype and shape: the poisoned reply passes the reply checks (names, shapes,
dtypes) and reaches aggregation, which is what a robust strategy must withstand. Integer
arrays (step counters, BatchNorm's ``num_batches_tracked``) go through as the client sent
them. An attack that overflows a float16 model to inf is rejected by the finite-value check,
as it would be in deployment.

Label flipping poisons the data, which only the app holds, so it cannot be done on the reply:
an adversarial client's ``Context.node_config["attack"]`` names the attack (for every attack,
so an app can see it) and the app calls ``flip_labels`` on its training labels when it is
``"label-flip"``. The quickstart-numpy example does.

Invariant: a seeded simulation with adversaries repeats exactly. The adversarial set depends
only on ``(seed, num_clients)``; the noise of a task only on ``(seed, round, node)``.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt

from pollinate.checks import integer, number, positive
from pollinate.records import Arrays

ATTACKS: tuple[str, ...] = ("sign-flip", "scale", "gaussian-noise", "label-flip")
"""The named attacks, in the order the CLI lists them."""

_DEFAULT_SCALE = {"sign-flip": 1.0, "scale": 10.0}
_DEFAULT_NOISE_STD = {"gaussian-noise": 1.0}


@dataclass(frozen=True)
class Adversaries:
    """``fraction`` of the virtual clients run ``attack``; pass to ``run_simulation``.

    Defaults, and why:

    - ``sign-flip``, ``scale=1.0``: the plain reversed update, the usual "sign flipping" /
      "bit flipping" Byzantine client (Damaskinos et al. 2018; Li et al. 2019, RSA, send the
      honest message times a negative constant; Fang et al. 2020 generalise it to pushing the
      model against the direction it would move). ``scale=1`` is the weakest flip that
      still reverses: with a fraction ``f`` of attackers FedAvg's step shrinks to about
      ``(1 - 2f)`` of the honest one on similar data (more on skewed data, where the flipped
      updates unlearn their classes), so the damage is set by ``fraction``; raise ``scale``
      for a stronger attacker.
    - ``scale``, ``scale=10.0``: explicit boosting (Bhagoji et al. 2019), where an attacker
      multiplies its update by about the number of clients aggregated per round so that it
      outweighs the honest mean; 10 is the boost for ten clients, their setting.
    - ``gaussian-noise``, ``noise_std=1.0``: the Gaussian Byzantine client of Blanchard et
      al. 2017 (Krum), in model space: the update is pure noise. Blanchard et al. use std 200
      on gradients; in model space that wipes any model in one round and says little. A
      model's weights are O(1) or smaller (initialisations scale as 1/sqrt(fan_in); the
      quickstart demo's trained weights have std 0.3, an honest update norm 1.5), so std 1
      buries an attacker's signal and drags the mean, yet leaves the model recoverable. It
      is loud (noise norm ``sqrt(#weights)``): a norm bound spots it, as a Gaussian baseline
      should be spotted. Set it relative to your model's scale.
    - ``seed=0``: the CLI passes the run's ``--seed``.

    >>> adversaries = Adversaries(0.3, "sign-flip")
    >>> len(adversaries.clients(20)), adversaries.scale
    (6, 1.0)
    >>> adversaries.clients(20) == adversaries.clients(20)
    True
    """

    fraction: float
    attack: str
    scale: float | None = None
    noise_std: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fraction(self.fraction)
        _check_attack(self.attack)
        _check_seed(self.seed)
        # Each attack's own parameter gets its default; a parameter it ignores is a mistake.
        scale = _check_param("scale", self.scale, self.attack, _DEFAULT_SCALE)
        noise_std = _check_param("noise_std", self.noise_std, self.attack, _DEFAULT_NOISE_STD)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "noise_std", noise_std)

    def clients(self, num_clients: int) -> frozenset[int]:
        """The ids of the adversarial clients among ``0 .. num_clients - 1``.

        ``fraction * num_clients`` rounded half up, drawn from ``seed``: the same set every
        call, and for one seed a larger fraction adds attackers to the smaller one's set.
        """
        count = math.floor(self.fraction * num_clients + 0.5)
        order = np.random.default_rng(self.seed).permutation(num_clients)
        return frozenset(int(i) for i in order[:count])

    def poison(self, global_arrays: Arrays, update: Arrays, rng: np.random.Generator) -> Arrays:
        """What an adversarial client sends instead of its honest ``update``."""
        # __post_init__ gave each attack its parameter, so the casts only inform mypy
        if self.attack == "sign-flip":
            return sign_flip(global_arrays, update, scale=cast(float, self.scale))
        if self.attack == "scale":
            return scale_update(global_arrays, update, factor=cast(float, self.scale))
        if self.attack == "gaussian-noise":
            return gaussian_noise(global_arrays, update, rng, std=cast(float, self.noise_std))
        return update  # label-flip poisons the data, in the app; the reply is its honest result


def sign_flip(global_arrays: Arrays, update: Arrays, scale: float = 1.0) -> Arrays:
    """The reversed update: ``global - scale * (update - global)`` for each float array.

    >>> g, u = Arrays({"w": np.array([1.0, 1.0])}), Arrays({"w": np.array([2.0, 0.5])})
    >>> sign_flip(g, u)["w"].tolist()
    [0.0, 1.5]
    """
    return _rewrite(global_arrays, update, lambda g, u: g - scale * (u - g))


def scale_update(global_arrays: Arrays, update: Arrays, factor: float = 10.0) -> Arrays:
    """The boosted update: ``global + factor * (update - global)`` for each float array.

    >>> g, u = Arrays({"w": np.array([1.0, 1.0])}), Arrays({"w": np.array([2.0, 0.5])})
    >>> scale_update(g, u, factor=10)["w"].tolist()
    [11.0, -4.0]
    """
    return _rewrite(global_arrays, update, lambda g, u: g + factor * (u - g))


def gaussian_noise(
    global_arrays: Arrays, update: Arrays, rng: np.random.Generator, std: float = 1.0
) -> Arrays:
    """Noise instead of training: ``global + N(0, std^2)`` for each float array's coordinates.

    Arrays are drawn in the update's order, so one ``rng`` seed gives one reply.
    """
    return _rewrite(global_arrays, update, lambda g, u: g + rng.normal(0.0, std, g.shape))


def flip_labels(labels: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Labels ``c -> num_classes - 1 - c``, the usual label-flipping attack (Tolpegin et al.
    2020): every class is swapped for its mirror, so no label stays right when
    ``num_classes`` is even. The dtype is kept.

    >>> flip_labels(np.array([0, 1, 9]), num_classes=10).tolist()
    [9, 8, 0]
    """
    hint = "flip_labels(y_train, num_classes=10) for the ten digits"
    num_classes = integer("num_classes", num_classes, minimum=2, hint=hint)
    y = np.asarray(labels)
    if y.dtype.kind not in "iu":
        raise TypeError(
            f"labels must be integer class ids, got dtype {y.dtype}\n"
            "Hint: flip class ids, not one-hot rows: flip_labels(y.argmax(axis=1), num_classes)"
        )
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}], found {y.min()}..{y.max()}\n"
            "Hint: pass the dataset's number of classes, e.g. flip_labels(y, int(y.max()) + 1)"
        )
    return (num_classes - 1 - y).astype(y.dtype)


def _rewrite(
    global_arrays: Arrays, update: Arrays, attack: Callable[[np.ndarray, np.ndarray], np.ndarray]
) -> Arrays:
    """Apply ``attack(global, update)`` to each float array that matches the global model;
    keep every other array as the client sent it (the reply checks judge those)."""
    out = dict(update)
    for name, u in update.items():
        g = global_arrays.get(name)
        if g is not None and g.shape == u.shape and g.dtype == u.dtype and u.dtype.kind == "f":
            out[name] = attack(g, u).astype(u.dtype)
    return Arrays(out)


def _check_fraction(fraction: object) -> None:
    hint = "Adversaries(0.2, 'sign-flip') makes 20% of the clients attack"
    number("the fraction of adversarial clients", fraction, minimum=0, maximum=1, hint=hint)


def _check_attack(attack: object) -> None:
    if attack in ATTACKS:
        return
    close = difflib.get_close_matches(str(attack), ATTACKS, n=1)
    guess = f" (did you mean {close[0]!r}?)" if close else ""
    suggestion = close[0] if close else ATTACKS[0]
    raise ValueError(
        f"unknown attack {attack!r}{guess}; the attacks are {', '.join(ATTACKS)}\n"
        f"Hint: Adversaries(0.2, {suggestion!r})"
    )


def _check_seed(seed: object) -> None:
    integer("seed", seed, minimum=0, hint="Adversaries(..., seed=1)")


def _check_param(
    name: str, value: float | None, attack: str, defaults: dict[str, float]
) -> float | None:
    """The attack's parameter, defaulted; refuse one the attack does not use, or a bad one."""
    users = " and ".join(defaults)
    if attack not in defaults:
        if value is None:
            return None
        raise ValueError(
            f"{name} {value!r} has no effect on attack {attack!r}; only {users} use a {name}\n"
            f"Hint: Adversaries(0.2, {attack!r}) without {name}"
        )
    if value is None:
        return defaults[attack]
    hint = f"Adversaries(0.2, {attack!r}, {name}={defaults[attack]!r}) is the default"
    return positive(name, value, hint=hint)
