"""One module decides what an int and a number are: the checks of ``pollinate.checks``."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollinate import checks

HINT = "f(x=1)"


@pytest.mark.parametrize("value", [0, -3, 2.5, math.inf, math.nan, np.int8(1), np.float32(0.5)])
def test_ints_floats_and_numpy_scalars_are_numbers(value: object) -> None:
    assert checks.is_number(value)


@pytest.mark.parametrize("value", [True, False, np.bool_(True), "1", None, [1], np.array([1.0])])
def test_bools_strings_and_arrays_are_not_numbers(value: object) -> None:
    assert not checks.is_number(value)


def test_an_int_comes_back_as_a_plain_int() -> None:
    value = checks.integer("n", np.int64(3), minimum=1, hint=HINT)
    assert value == 3 and type(value) is int


@pytest.mark.parametrize("value", [True, 1.0, "1", None])
def test_an_int_of_the_wrong_kind_is_a_type_error_showing_it_and_a_hint(value: object) -> None:
    with pytest.raises(
        TypeError, match=f"^n must be an int >= 1, got {value!r}\nHint: f\\(x=1\\)$"
    ):
        checks.integer("n", value, minimum=1, hint=HINT)


def test_an_int_below_its_minimum_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="^n must be an int >= 1, got 0\nHint: "):
        checks.integer("n", 0, minimum=1, hint=HINT)


def test_a_number_comes_back_as_a_plain_float() -> None:
    value = checks.number("x", np.float32(0.5), hint=HINT)
    assert value == 0.5 and type(value) is float


@pytest.mark.parametrize(
    ("bounds", "value", "wanted"),
    [
        ({"minimum": 0}, -1, "a finite number >= 0"),
        ({"above": 0}, 0, "a finite number > 0"),
        ({"maximum": 1}, 2, "a finite number <= 1"),
        ({"below": 1}, 1, "a finite number < 1"),
        ({"minimum": 0, "below": 0.5}, 0.5, r"a finite number in \[0, 0.5\)"),
        ({"above": 0, "maximum": 1}, 0, r"a finite number in \(0, 1\]"),
        ({}, math.inf, "a finite number"),
        ({"finite": False}, math.nan, "a number"),
    ],
)
def test_a_number_out_of_bounds_is_a_value_error_naming_them(
    bounds: dict[str, float], value: float, wanted: str
) -> None:
    with pytest.raises(ValueError, match=f"^x must be {wanted}, got {value!r}\nHint: "):
        checks.number("x", value, hint=HINT, **bounds)  # type: ignore[arg-type]


def test_infinity_passes_only_where_asked_for() -> None:
    assert checks.number("x", math.inf, minimum=0, finite=False, hint=HINT) == math.inf


@pytest.mark.parametrize("value", [True, "0.5", None])
def test_a_number_of_the_wrong_kind_is_a_type_error(value: object) -> None:
    with pytest.raises(TypeError, match=f"got {value!r}\nHint: "):
        checks.number("x", value, hint=HINT)


def test_positive_and_fraction_are_numbers_with_their_bounds() -> None:
    assert checks.positive("seconds", 2, hint=HINT) == 2.0
    assert checks.fraction("quorum", 1, hint=HINT) == 1.0
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        checks.fraction("quorum", 0, hint=HINT)
    with pytest.raises(ValueError, match="> 0"):
        checks.positive("seconds", 0.0, hint=HINT)
