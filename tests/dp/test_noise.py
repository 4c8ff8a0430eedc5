"""DP noise from a cryptographic generator: Gaussian, fresh on every draw, repeatable only
when seeded for an experiment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from pollinate.dp.noise import GaussianNoise


def test_the_samples_are_normal_with_the_asked_deviation() -> None:
    samples = GaussianNoise().normal(2.5, (200_000,))
    assert stats.kstest(samples / 2.5, "norm").pvalue > 1e-6  # fails an honest run 1 in 10^6
    assert samples.std() == pytest.approx(2.5, rel=0.01)
    assert abs(samples.mean()) < 5 * 2.5 / np.sqrt(samples.size)


def test_every_draw_is_fresh_and_only_a_seed_repeats_them() -> None:
    noise = GaussianNoise()
    first, second = noise.normal(1.0, (3, 5)), noise.normal(1.0, (3, 5))
    assert first.shape == (3, 5) and not np.array_equal(first, second)
    assert not np.array_equal(first, GaussianNoise().normal(1.0, (3, 5)))
    seeded = [GaussianNoise.seeded(7, round=2).normal(1.0, (4,)) for _ in range(2)]
    np.testing.assert_array_equal(*seeded)
    other_round = GaussianNoise.seeded(7, round=3).normal(1.0, (4,))
    assert not np.array_equal(seeded[0], other_round)


def test_a_scalar_and_odd_sizes() -> None:
    noise = GaussianNoise()
    assert noise.normal(1.0).shape == () and np.isfinite(noise.normal(1.0))
    assert noise.normal(1.0, (7,)).shape == (7,)
    assert noise.normal(1.0, (0,)).shape == (0,)
