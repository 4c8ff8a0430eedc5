"""The accountant's epsilon is dp-accounting's, computed directly for the same parameters."""

from __future__ import annotations

import subprocess
import sys

import dp_accounting
import pytest
from dp_accounting.rdp import RdpAccountant

from pollinate.dp import epsilon, noise_for_epsilon


def direct(q: float, z: float, rounds: int, delta: float) -> float:
    accountant = RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(dp_accounting.SelfComposedDpEvent(event, rounds))
    return float(accountant.get_epsilon(delta))


@pytest.mark.parametrize(
    ("q", "z", "rounds", "delta"),
    [(1.0, 1.0, 10, 1e-5), (0.1, 1.1, 100, 1e-5), (0.01, 0.8, 1000, 1e-6), (0.5, 5.0, 1, 1e-5)],
)
def test_epsilon_equals_dp_accounting_computed_directly(
    q: float, z: float, rounds: int, delta: float
) -> None:
    assert epsilon(z, [q] * rounds, delta) == pytest.approx(direct(q, z, rounds, delta), abs=1e-9)


def test_rounds_with_different_rates_compose() -> None:
    accountant = RdpAccountant()
    for q in [0.1, 0.2, 0.1]:
        accountant.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0))
        )
    assert epsilon(1.0, [0.1, 0.2, 0.1], 1e-5) == pytest.approx(
        accountant.get_epsilon(1e-5), abs=1e-9
    )


def test_epsilon_grows_with_rounds_and_falls_with_noise() -> None:
    assert epsilon(1.0, [0.1] * 10, 1e-5) < epsilon(1.0, [0.1] * 20, 1e-5)
    assert epsilon(2.0, [0.1] * 10, 1e-5) < epsilon(1.0, [0.1] * 10, 1e-5)


@pytest.mark.parametrize("target", [1.0, 3.0, 8.0])
def test_noise_for_epsilon_reaches_the_target_and_barely_more(target: float) -> None:
    z = noise_for_epsilon(target, 1.0, 20, 1e-5)
    assert epsilon(z, [1.0] * 20, 1e-5) <= target
    assert epsilon(z * 0.99, [1.0] * 20, 1e-5) > target


def test_no_noise_is_refused_with_a_hint() -> None:
    with pytest.raises(
        ValueError,
        match="noise_multiplier must be a number > 0.*\nHint: without noise there is no differen",
    ):
        epsilon(0.0, [1.0], 1e-5)


@pytest.mark.parametrize("delta", [0.0, 1.0, -1e-5])
def test_an_impossible_delta_is_refused(delta: float) -> None:
    with pytest.raises(ValueError, match=r"delta must be a finite number in \(0, 1\)"):
        epsilon(1.0, [1.0], delta)


def test_importing_pollinate_privacy_does_not_load_dp_accounting() -> None:
    code = "import sys, pollinate.dp; print('dp_accounting' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
