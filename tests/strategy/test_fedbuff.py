"""FedBuff's math and policy: staleness weights and one buffered step, on hand-computed cases.

The asynchronous loop that drives it is tested in tests/loop/test_buffered.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pollinate.aggregate.staleness import BufferedStep, staleness_weight
from pollinate.records import Arrays
from pollinate.strategy import Rounds, Sampling, Strategy
from pollinate.strategy.fedbuff import FedBuff


def one(value: float | list[float], dtype: type = np.float32) -> Arrays:
    return Arrays({"w": np.asarray(value, dtype)})


# --- staleness weights -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("staleness", "weight"),
    [(0, 1.0), (1, 1 / math.sqrt(2)), (3, 0.5), (8, 1 / 3), (99, 0.1)],
)
def test_the_staleness_weight_is_one_over_the_root_of_one_plus_tau(
    staleness: int, weight: float
) -> None:
    assert staleness_weight(staleness) == pytest.approx(weight, rel=1e-15)


def test_the_exponent_generalises_the_weight_and_zero_turns_it_off() -> None:
    assert staleness_weight(3, exponent=1.0) == 0.25
    assert staleness_weight(7, exponent=1 / 3) == pytest.approx(0.5)
    assert staleness_weight(50, exponent=0.0) == 1.0
    assert FedBuff(staleness_exponent=1.0).staleness_weight(4) == 0.2


def test_fresher_updates_never_weigh_less() -> None:
    weights = [staleness_weight(tau) for tau in range(100)]
    assert weights == sorted(weights, reverse=True)


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_a_staleness_that_is_not_a_count_of_steps_is_refused(bad: object) -> None:
    with pytest.raises((TypeError, ValueError)):
        staleness_weight(bad)  # type: ignore[arg-type]


# --- one buffered step --------------------------------------------------------------------------


def test_one_step_on_hand_computed_updates_is_the_formula() -> None:
    # w_t = 10; three updates, from versions 0, 1 and 3 steps old, with 1, 2 and 1 examples:
    #   node a: trained from 10 to 14        delta +4, tau 0, s = 1
    #   node b: trained from  8 to  6        delta -2, tau 1, s = 1/sqrt(2)
    #   node c: trained from  4 to 12        delta +8, tau 3, s = 1/2
    # sum n s delta = 1*1*4 + 2*(1/sqrt 2)*(-2) + 1*(1/2)*8 = 8 - 2 sqrt 2;  sum n = 4
    # w_{t+1} = 10 + eta * (8 - 2 sqrt 2) / 4, with eta = 0.5
    step = BufferedStep(one(10.0, np.float64), server_learning_rate=0.5)
    step.add(one(14.0, np.float64), one(10.0, np.float64), 1, staleness_weight(0))
    step.add(one(6.0, np.float64), one(8.0, np.float64), 2, staleness_weight(1))
    step.add(one(12.0, np.float64), one(4.0, np.float64), 1, staleness_weight(3))
    expected = 10 + 0.5 * (8 - 2 * math.sqrt(2)) / 4
    assert step.finish()["w"].item() == pytest.approx(expected, rel=1e-15)
    assert (step.count, step.examples) == (3, 4.0)


def test_with_equal_examples_it_is_the_papers_step() -> None:
    # Nguyen et al.: w + eta * (1/K) sum_i s(tau_i) Delta_i
    current = one([1.0, -1.0], np.float64)
    updates = [
        ([2.0, 0.0], [1.0, -1.0], 0),
        ([5.0, 5.0], [3.0, 1.0], 2),
        ([0.0, 0.0], [1.0, 1.0], 5),
    ]
    step = BufferedStep(current, server_learning_rate=2.0)
    for new, base, tau in updates:
        step.add(one(new, np.float64), one(base, np.float64), 7, staleness_weight(tau))
    paper = np.asarray(current["w"]) + 2.0 * sum(
        staleness_weight(tau) * (np.asarray(new) - np.asarray(base)) for new, base, tau in updates
    ) / len(updates)
    np.testing.assert_allclose(step.finish()["w"], paper, rtol=1e-15)


def test_fresh_updates_with_server_lr_one_give_fedavg_exactly() -> None:
    current = one([0.0, 4.0])
    clients = [([1.0, 2.0], 10), ([4.0, 8.0], 30)]
    step = BufferedStep(current)
    for arrays, n in clients:
        step.add(one(arrays), current, n, 1.0)
    fedavg = (10 * np.array([1.0, 2.0]) + 30 * np.array([4.0, 8.0])) / 40
    np.testing.assert_array_equal(step.finish()["w"], fedavg.astype(np.float32))


def test_the_order_updates_arrive_in_does_not_change_the_step() -> None:
    rng = np.random.default_rng(0)
    current = Arrays({"w": rng.normal(size=1000).astype(np.float32)})
    updates = [
        (Arrays({"w": rng.normal(size=1000).astype(np.float32)}), int(rng.integers(1, 50)), tau)
        for tau in range(6)
    ]
    results = []
    for order in ([0, 1, 2, 3, 4, 5], [5, 3, 1, 0, 4, 2]):
        step = BufferedStep(current, 0.7)
        for i in order:
            arrays, n, tau = updates[i]
            step.add(arrays, current, n, staleness_weight(tau))
        results.append(step.finish()["w"])
    np.testing.assert_array_equal(results[0], results[1])


def test_dtypes_and_shapes_are_kept_and_integers_rounded() -> None:
    current = Arrays(
        {
            "f16": np.zeros((2, 3), np.float16),
            "count": np.array([10, 20], np.int64),
            "scalar": np.array(1.0, np.float32),
        }
    )
    update = Arrays(
        {
            "f16": np.ones((2, 3), np.float16),
            "count": np.array([13, 20], np.int64),
            "scalar": np.array(3.0, np.float32),
        }
    )
    step = BufferedStep(current, server_learning_rate=0.5)
    step.add(update, current, 1, 1.0)
    out = step.finish()
    assert {k: (v.dtype, v.shape) for k, v in out.items()} == {
        k: (v.dtype, v.shape) for k, v in current.items()
    }
    assert out["count"].tolist() == [12, 20]  # 10 + 0.5 * 3 = 11.5, rounded to even
    assert out["scalar"].item() == 2.0


def test_a_model_larger_than_one_block_is_folded_whole() -> None:
    size = (1 << 19) * 2 + 17  # two full blocks and a tail
    current = Arrays({"w": np.zeros(size, np.float32)})
    update = Arrays({"w": np.arange(size, dtype=np.float32)})
    step = BufferedStep(current)
    step.add(update, current, 3, 0.5)
    np.testing.assert_array_equal(step.finish()["w"], np.arange(size, dtype=np.float32) * 0.5)


def test_an_empty_step_and_bad_inputs_are_refused() -> None:
    step = BufferedStep(one(0.0))
    with pytest.raises(ValueError, match="no update"):
        step.finish()
    with pytest.raises(ValueError, match="shape"):
        step.add(one([1.0, 2.0]), one(0.0), 1, 1.0)
    with pytest.raises(ValueError, match="num_examples"):
        step.add(one(1.0), one(0.0), 0, 1.0)
    with pytest.raises(ValueError, match="weight"):
        step.add(one(1.0), one(0.0), 1, float("nan"))
    with pytest.raises(ValueError, match="server_learning_rate"):
        BufferedStep(one(0.0), server_learning_rate=0.0)


# --- the strategy -------------------------------------------------------------------------------


def test_concurrency_defaults_to_every_available_node_or_fraction_fit() -> None:
    assert FedBuff().training_slots(20) == 20
    assert FedBuff(concurrency=5).training_slots(20) == 5
    assert FedBuff(concurrency=50).training_slots(20) == 20
    assert FedBuff(sampling=Sampling(fraction_fit=0.14)).training_slots(50) == 7
    assert FedBuff(sampling=Sampling(fraction_fit=0.01, min_fit_clients=3)).training_slots(50) == 3


def test_choose_draws_from_the_idle_nodes_without_replacement() -> None:
    strategy = FedBuff()
    rng = np.random.default_rng(0)
    chosen = strategy.choose([9, 3, 5, 7], 2, rng)
    assert len(chosen) == 2 and set(chosen) <= {3, 5, 7, 9} and chosen == sorted(chosen)
    assert strategy.choose([1, 2], 5, rng) == [1, 2]
    assert strategy.choose([], 3, rng) == [] and strategy.choose([1], 0, rng) == []


def test_fedbuff_inherits_no_synchronous_method_it_would_never_use() -> None:
    strategy = FedBuff()
    for name in ("sample_fit", "sample_evaluate", "start_fit", "server_update"):
        assert not hasattr(strategy, name), name
    assert strategy.rounds is Rounds.BUFFERED and Strategy.rounds is Rounds.SYNCHRONOUS


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"buffer_size": 0}, ValueError),
        ({"buffer_size": 2.5}, TypeError),
        ({"concurrency": 0}, ValueError),
        ({"server_learning_rate": 0.0}, ValueError),
        ({"server_learning_rate": float("inf")}, ValueError),
        ({"staleness_exponent": -0.5}, ValueError),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        FedBuff(**kwargs)  # type: ignore[arg-type]


def test_the_step_buffer_uses_the_server_learning_rate() -> None:
    step = FedBuff(server_learning_rate=0.25).start_step(one(0.0))
    step.add(one(4.0), one(0.0), 1, 1.0)
    assert step.finish()["w"].item() == 1.0
