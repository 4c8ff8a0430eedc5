"""Argument checks for the Python API: one place that decides what an int and a number are.

Misuse raises ``TypeError`` (a value of the wrong kind) or ``ValueError`` (the right kind,
an impossible value), with the bad value shown ``!r`` and a ``Hint:`` line holding a call
that works.

What counts, decided once for all of pollinate:

- A **number** is an ``int`` or ``float``, or a NumPy integer or floating scalar (what
  ``array.sum()`` and ``np.float32(x)`` give). A bool never is, nor ``np.bool_``:
  ``rounds=True`` is a mistake, not 1. ``nan`` is a number to ``is_number`` but no check
  accepts it; infinity passes only where asked for (``finite=False``).
- An **int** is an ``int`` or a NumPy integer scalar, never a bool; the checks return it as
  a plain ``int`` and numbers as a plain ``float``, so what is stored travels in a Config.

>>> integer("num_rounds", 3, minimum=0, hint="ServerApp(strategy, num_rounds=3)")
3
>>> fraction("quorum", 0.5, hint="RoundDeadline(quorum=0.5)")
0.5
>>> positive("floor", 0, hint="RoundDeadline(floor=60.0)")
Traceback (most recent call last):
ValueError: floor must be a finite number > 0, got 0
Hint: RoundDeadline(floor=60.0)
"""

from __future__ import annotations

import math
from typing import Any, TypeGuard

import numpy as np

__all__ = ["Number", "fraction", "integer", "is_number", "number", "positive"]

Number = int | float | np.integer[Any] | np.floating[Any]
"""What ``is_number`` accepts."""


def is_number(value: object) -> TypeGuard[Number]:
    """Whether ``value`` is a real number: int, float or a NumPy integer or floating scalar,
    never a bool.

    >>> [is_number(v) for v in (1, 2.5, np.int64(3), np.float32(0.5), True, np.bool_(1), "1")]
    [True, True, True, True, False, False, False]
    """
    return not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)


def integer(name: str, value: object, *, minimum: int | None = None, hint: str) -> int:
    """``value`` as an ``int``: TypeError unless it is an int (not a bool), ValueError if
    it is below ``minimum``.

    >>> integer("num_selected", np.int64(2), minimum=1, hint="MultiKrum(num_selected=2)")
    2
    >>> integer("num_selected", 2.0, hint="MultiKrum(num_selected=2)")
    Traceback (most recent call last):
    TypeError: num_selected must be an int, got 2.0
    Hint: MultiKrum(num_selected=2)
    """
    wanted = "an int" if minimum is None else f"an int >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name} must be {wanted}, got {value!r}\nHint: {hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be {wanted}, got {value!r}\nHint: {hint}")
    return int(value)


def number(
    name: str,
    value: object,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    above: float | None = None,
    below: float | None = None,
    finite: bool = True,
    hint: str,
) -> float:
    """``value`` as a ``float``: TypeError unless ``is_number(value)``, ValueError if it is
    nan, infinite (unless ``finite=False``) or out of its bounds. ``minimum`` and
    ``maximum`` are inclusive bounds, ``above`` and ``below`` exclusive ones.

    >>> number("beta", 0.1, minimum=0, below=0.5, hint="FedTrimmedAvg(beta=0.1)")
    0.1
    >>> number("beta", 0.5, minimum=0, below=0.5, hint="FedTrimmedAvg(beta=0.1)")
    Traceback (most recent call last):
    ValueError: beta must be a finite number in [0, 0.5), got 0.5
    Hint: FedTrimmedAvg(beta=0.1)
    >>> number("mu", "0.1", minimum=0, hint="FedProx(proximal_mu=0.1)")
    Traceback (most recent call last):
    TypeError: mu must be a finite number >= 0, got '0.1'
    Hint: FedProx(proximal_mu=0.1)
    """
    wanted = ("a finite number" if finite else "a number") + _range(minimum, maximum, above, below)
    if not is_number(value):
        raise TypeError(f"{name} must be {wanted}, got {value!r}\nHint: {hint}")
    x = float(value)
    fits = not math.isnan(x) and (math.isfinite(x) or not finite)
    fits = fits and (minimum is None or x >= minimum) and (maximum is None or x <= maximum)
    fits = fits and (above is None or x > above) and (below is None or x < below)
    if not fits:
        raise ValueError(f"{name} must be {wanted}, got {value!r}\nHint: {hint}")
    return x


def positive(name: str, value: object, *, hint: str) -> float:
    """``value`` as a ``float``: a finite number > 0 (seconds, a rate, a learning rate).

    >>> positive("ttl_seconds", 3600, hint="issue_token(ttl_seconds=3600)")
    3600.0
    """
    return number(name, value, above=0, hint=hint)


def fraction(name: str, value: object, *, hint: str) -> float:
    """``value`` as a ``float``: a share of something, in (0, 1].

    >>> fraction("quorum", 0, hint="RoundDeadline(quorum=0.5)")
    Traceback (most recent call last):
    ValueError: quorum must be a finite number in (0, 1], got 0
    Hint: RoundDeadline(quorum=0.5)
    """
    return number(name, value, above=0, maximum=1, hint=hint)


def _range(
    minimum: float | None, maximum: float | None, above: float | None, below: float | None
) -> str:
    """The bounds in words: '' (none), ' >= 0', ' > 0', ' <= 1', ' in (0, 1]'."""
    low = (f"[{minimum:g}", f">= {minimum:g}") if minimum is not None else None
    low = (f"({above:g}", f"> {above:g}") if above is not None else low
    high = (f"{maximum:g}]", f"<= {maximum:g}") if maximum is not None else None
    high = (f"{below:g})", f"< {below:g}") if below is not None else high
    if low and high:
        return f" in {low[0]}, {high[0]}"
    bound = low or high
    return f" {bound[1]}" if bound else ""
