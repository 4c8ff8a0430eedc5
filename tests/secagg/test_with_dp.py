"""Secure aggregation under DP-FedAvg: clients clip, the hub sums masked updates and noises
the mean, so no one sees an update and the model is differentially private."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, ServerApp, run_simulation
from pollinate.dp import AdaptiveClipping, DifferentialPrivacy, clip_update
from pollinate.dp.clip import CLIPPING_NORM_KEY
from pollinate.secagg import SecAggConfig
from pollinate.strategy import Sampling

INITIAL = Arrays({"w": np.zeros(8, np.float32)})
EQUAL = SecAggConfig(max_weight=None)


class Clipping(Client):
    """Moves the model by a large, client-specific step, then clips it as DP asks."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:
        moved = Arrays({"w": arrays["w"] + (self.node + 1) * np.linspace(-1, 1, 8)})
        clipped, metrics = clip_update(arrays, moved, float(config[CLIPPING_NORM_KEY]))
        return clipped, 10 * (self.node + 1), metrics

    def evaluate(self, arrays: Arrays, config: dict) -> tuple[float, int, dict]:
        return 0.0, 1, {}


def dp(**kwargs: object) -> DifferentialPrivacy:
    options = {"noise_multiplier": 0.5, "clipping_norm": 0.5, "side": "client", "noise_seed": 7}
    return DifferentialPrivacy(
        FedAvg(sampling=Sampling(fraction_evaluate=0.0)), **{**options, **kwargs}
    )  # type: ignore[arg-type]


def test_dp_with_secure_aggregation_releases_what_dp_alone_releases() -> None:
    results = []
    for secure in (None, EQUAL):
        app = ServerApp(dp(), num_rounds=2, initial_arrays=INITIAL, secure_aggregation=secure)
        results.append(run_simulation(app, lambda ctx: Clipping(ctx.node_id), num_clients=8))
    plain, secure_result = results
    # the same clipped updates, the same seeded noise: equal up to SecAgg's rounding
    np.testing.assert_allclose(secure_result.arrays["w"], plain.arrays["w"], atol=1e-5)
    assert not np.allclose(plain.arrays["w"], 0.0)
    record = secure_result.history.rounds[-1]
    assert record.replies == 8 and record.fit["dp_epsilon"] > 0


@pytest.mark.parametrize(
    ("strategy", "secure", "message"),
    [
        (lambda: dp(side="hub"), EQUAL, "(?s)clips at the hub.*Hint: .*side='client'"),
        (
            lambda: dp(clipping_norm=None, adaptive=AdaptiveClipping(0.5, count_stddev=2.0)),
            EQUAL,
            "(?s)adaptive clipping.*Hint: a fixed clipping_norm",
        ),
        (lambda: dp(), SecAggConfig(), "(?s)weighs every client alike.*max_weight=None"),
    ],
)
def test_dp_settings_secure_aggregation_cannot_honour_are_refused(
    strategy, secure: SecAggConfig, message: str
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        ServerApp(strategy(), secure_aggregation=secure)
