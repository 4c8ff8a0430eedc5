"""Update validation: the strategy sees only updates that passed every check that is on."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from pollinate import Arrays, Client, FedAvg, ServerApp, Validation, run_simulation
from pollinate.loop import screen as screen_module
from pollinate.loop import validate
from pollinate.loop.events import Event, ReplyBounded, UpdateRejected
from pollinate.loop.screen import Note, Screen, anomaly_scores, change_norm
from pollinate.loop.validate import finite_problem
from pollinate.records import Message
from pollinate.scratch import BLOCK
from pollinate.strategy import Sampling
from pollinate.strategy.base import FitResult

ZERO = Arrays({"w": np.zeros(3, np.float32), "steps": np.zeros(1, np.int64)})


def update(*values: float) -> Arrays:
    return Arrays({"w": np.array(values, np.float32), "steps": np.ones(1, np.int64)})


def reply(arrays: Arrays, examples: int = 1) -> Message:
    return Message("fit", is_reply=True, arrays=arrays, num_examples=examples)


def result(node: int, arrays: Arrays) -> FitResult:
    return FitResult(node, arrays, 1, {})


# --- the pure parts ----------------------------------------------------------------------------


def test_change_norm_is_the_l2_norm_of_the_float_arrays_change() -> None:
    assert change_norm(update(3.0, 4.0, 0.0), ZERO) == pytest.approx(5.0)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_change_norm_over_many_blocks_matches_the_float64_norm(dtype: type) -> None:
    rng = np.random.default_rng(0)
    size = 2 * BLOCK + 11
    sent, base = (rng.standard_normal(size).astype(dtype) for _ in range(2))
    exact = float(np.linalg.norm(sent.astype(np.float64) - base))
    got = change_norm(Arrays({"w": sent}), Arrays({"w": base}))
    assert got == pytest.approx(exact, rel=1e-6)


def test_change_norm_is_exact_where_float32_would_overflow() -> None:
    big = np.float32(3e38)
    sent = Arrays({"w": np.array([big, -big, 1.0], np.float32)})
    base = Arrays({"w": np.array([-big, big, 1.0], np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm = change_norm(sent, base)
    assert norm == pytest.approx(math.sqrt(2) * 2 * float(big), rel=1e-12)


def test_change_norm_of_finite_changes_whose_float32_squares_overflow_is_exact() -> None:
    sent = Arrays({"w": np.array([1e20, -1e20, 3.0], np.float32)})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm = change_norm(sent, Arrays({"w": np.zeros(3, np.float32)}))
    assert norm == pytest.approx(math.sqrt(2) * float(np.float32(1e20)), rel=1e-12)


def test_a_non_finite_value_in_a_late_block_is_found() -> None:
    values = np.zeros(3 * BLOCK, np.float32)
    values[-1] = np.inf
    assert "1 non-finite" in str(finite_problem(Arrays({"w": values})))
    assert math.isinf(change_norm(Arrays({"w": values}), Arrays({"w": np.zeros_like(values)})))


def test_anomaly_scores_are_distances_to_the_coordinate_median_in_median_distances() -> None:
    ups = [update(1, 1, 0), update(1, 2, 0), update(2, 1, 0), update(9, 9, 0)]
    # median (1.5, 1.5, 0); distances sqrt(.5) x 3 and sqrt(2 * 7.5^2); median sqrt(.5)
    assert anomaly_scores(ups) == pytest.approx([1.0, 1.0, 1.0, 15.0])


def test_anomaly_scores_do_not_depend_on_the_order_of_the_updates() -> None:
    rng = np.random.default_rng(0)
    ups = [update(*rng.normal(size=3)) for _ in range(7)]
    scores = anomaly_scores(ups)
    assert anomaly_scores(ups[::-1]) == pytest.approx(scores[::-1])


def test_when_most_updates_are_the_median_any_other_is_infinitely_far() -> None:
    ups = [update(1, 1, 1)] * 3 + [update(1, 1, 1.001)]
    assert anomaly_scores(ups) == [0.0, 0.0, 0.0, math.inf]


def test_scores_are_computed_in_blocks_as_if_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    from pollinate.aggregate import robust

    rng = np.random.default_rng(1)
    big = [Arrays({"w": rng.normal(size=1000)}) for _ in range(6)]
    whole = anomaly_scores(big)
    monkeypatch.setattr(robust, "_STACK", 6 * 7)  # blocks of 7 coordinates
    assert anomaly_scores(big) == pytest.approx(whole)


# --- Screen -------------------------------------------------------------------------------------


def test_a_misfit_or_weightless_update_is_rejected_with_the_reason() -> None:
    screen = Screen(Validation(), ZERO, expected=3)
    wrong_shape = Arrays({"w": np.zeros(4, np.float32), "steps": np.ones(1, np.int64)})
    assert "expected float32[3]" in (screen.problem(reply(wrong_shape)) or "")
    nan = update(1.0, float("nan"), 0.0)
    assert "non-finite" in (screen.problem(reply(nan)) or "")
    assert "num_examples=0" in (screen.problem(reply(update(1, 1, 1), examples=0)) or "")
    assert screen.problem(reply(update(1, 1, 1))) is None


@pytest.mark.parametrize("max_norm", [None, 1e6], ids=["norm-bound", "and-max-norm"])
def test_a_held_update_is_read_once_for_its_values_and_its_norm(
    monkeypatch: pytest.MonkeyPatch, max_norm: float | None
) -> None:
    """A finite change norm means finite values: one pass checks both, and the norm is
    kept for the bound; an update with NaN or inf is still rejected for its values."""
    norms: list[int] = []
    taken = screen_module.change_norm
    monkeypatch.setattr(screen_module, "change_norm", lambda a, c: norms.append(1) or taken(a, c))
    monkeypatch.setattr(validate, "_all_finite", _refuse_finite_check)
    screen = Screen(Validation(max_norm=max_norm), ZERO, expected=3)
    for node, arrays in enumerate([update(1, 0, 0), update(0, 2, 0), update(-90, 0, 0)]):
        assert screen.problem(reply(arrays)) is None
        screen.admit(result(node, arrays))
    _, notes, _ = screen.close()
    assert len(norms) == 3 and [node for node, _ in notes] == [2]
    monkeypatch.undo()
    for bad in (update(1.0, float("nan"), 0.0), update(float("inf"), 0.0, 0.0)):
        assert "non-finite" in (Screen(Validation(), ZERO, expected=3).problem(reply(bad)) or "")


def test_a_non_finite_complex_value_is_found_though_the_norm_leaves_complex_arrays_out() -> None:
    current = Arrays({"w": np.zeros(3, np.float32), "c": np.zeros(2, np.complex64)})
    bad = Arrays({"w": np.ones(3, np.float32), "c": np.array([np.nan + 0j, 1j], np.complex64)})
    for validation in (Validation(max_norm=10.0), Validation()):
        problem = Screen(validation, current, expected=3).problem(reply(bad)) or ""
        assert "non-finite values (NaN/inf) in 'c'" in problem


def _refuse_finite_check(array: np.ndarray) -> bool:
    raise AssertionError("an update with a finite norm was read again for its values")


def test_an_update_beyond_max_norm_is_rejected() -> None:
    screen = Screen(Validation(max_norm=4.0), ZERO, expected=3)
    assert screen.problem(reply(update(3.0, 0.0, 0.0))) is None
    problem = screen.problem(reply(update(3.0, 4.0, 0.0))) or ""
    assert problem.startswith("update norm 5 exceeds max_norm=4")


def test_an_outlier_is_pulled_in_to_the_median_distance_and_a_far_one_left_out() -> None:
    screen = Screen(Validation(anomaly_threshold=3.0), ZERO, expected=6)
    honest = [result(n, update(1 + 0.1 * n, 1, 1)) for n in range(4)]
    outlier = result(8, update(1.1, 1.3, 1.4))  # skewed data, or an attacker
    flipped = result(9, update(-1, -1, -1))  # beyond quarantine_threshold=10
    for r in [*honest, outlier, flipped]:
        assert screen.admit(r) == []  # nothing reaches the strategy before the round closes
    passed, notes, left_out = screen.close()
    assert passed[:4] == honest  # within the threshold: untouched
    assert passed[4].node_id == 8  # the outlier counts, pulled in
    # coordinate-wise median (1.1, 1, 1); distances 0.1, 0, 0.1, 0.2, 0.5 and 3.52, whose
    # median is 0.15: scores 3.3 and 23.5
    center = np.array([1.1, 1.0, 1.0])
    pulled = passed[4].arrays["w"] - center
    assert np.linalg.norm(pulled) == pytest.approx(0.15, rel=1e-4)  # the median distance
    sent = np.array([0.0, 0.3, 0.4])
    np.testing.assert_allclose(pulled / np.linalg.norm(pulled), sent / 0.5, atol=1e-4)
    assert passed[4].arrays["steps"].tolist() == [1]  # int arrays are not moved
    assert [node for node, _ in notes] == [8] and "pulled in" in notes[0][1]
    [(node, reason)] = left_out
    assert node == 9 and reason.startswith("left out of this round: anomaly score 23.")


def test_the_norm_bound_takes_a_pulled_in_update_as_pulled_not_as_it_arrived() -> None:
    screen = Screen(Validation(norm_multiple=1.0), ZERO, expected=5)
    for n in range(4):  # norms 1.732, 1.792, 1.855, 1.921
        screen.admit(result(n, update(1 + 0.1 * n, 1, 1)))
    screen.admit(result(8, update(1.1, 1.3, 1.4)))  # norm 2.205 as it arrived
    passed, notes, _ = screen.close()
    [pulled] = [reason for node, reason in notes if node == 8 and "scaled" in reason]
    # pulled in to the median distance 0.1 from (1.1, 1, 1): (1.1, 1.06, 1.08), norm 1.871
    assert pulled.startswith("update norm 1.871 scaled to 1.855"), pulled
    assert change_norm(passed[4].arrays, ZERO) == pytest.approx(1.855, rel=1e-3)


def close_round(
    validation: Validation, bound_outliers: bool
) -> tuple[list[FitResult], list[Note], list[Note]]:
    """Four honest updates, one at anomaly score 2.67 (node 8), one at 23.5 (node 9)."""
    screen = Screen(validation, ZERO, expected=6, bound_outliers=bound_outliers)
    for n in range(4):
        screen.admit(result(n, update(1 + 0.1 * n, 1, 1)))
    screen.admit(result(8, update(1.1, 1.0, 1.4)))  # 0.4 from the median (1.1, 1, 1)
    screen.admit(result(9, update(-1, -1, -1)))
    return screen.close()


def test_averaging_pulls_in_below_the_bar_at_which_robust_strategies_leave_out() -> None:
    # pull_threshold=2.3 < 2.67 < anomaly_threshold=3: a mean gets node 8 pulled in to the
    # median distance (0.15); a robust statistic gets it as sent; both lose the attacker
    passed, notes, left_out = close_round(Validation(), bound_outliers=True)
    assert passed[4].node_id == 8
    np.testing.assert_allclose(passed[4].arrays["w"], [1.1, 1.0, 1.15], atol=1e-6)
    assert notes == [(8, notes[0][1])] and "> pull_threshold=2.3: pulled in" in notes[0][1]
    assert [node for node, _ in left_out] == [9]
    passed, notes, left_out = close_round(Validation(), bound_outliers=False)
    assert [r.node_id for r in passed] == [0, 1, 2, 3, 8] and notes == []
    np.testing.assert_allclose(passed[4].arrays["w"], [1.1, 1.0, 1.4], atol=1e-6)
    assert [node for node, _ in left_out] == [9] and "anomaly_threshold=3" in left_out[0][1]


def test_without_a_pull_threshold_averaging_gets_outliers_as_sent_up_to_quarantine() -> None:
    passed, notes, left_out = close_round(Validation(pull_threshold=None), bound_outliers=True)
    np.testing.assert_allclose(passed[4].arrays["w"], [1.1, 1.0, 1.4], atol=1e-6)
    assert notes == [] and [node for node, _ in left_out] == [9]


def test_for_a_robust_strategy_every_outlier_is_left_out_and_norms_are_as_sent() -> None:
    screen = Screen(Validation(), ZERO, expected=6, bound_outliers=False)
    honest = [result(n, update(1 + 0.1 * n, 1, 1)) for n in range(4)]
    outlier = result(8, update(1.1, 1.3, 1.4))
    for r in [*honest, outlier]:
        screen.admit(r)
    passed, notes, left_out = screen.close()
    assert passed == honest and notes == []
    assert [node for node, _ in left_out] == [8]


def test_with_every_relative_bound_off_or_a_single_task_rounds_stream() -> None:
    off = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)
    single = Screen(Validation(), ZERO, expected=1)
    streaming = Screen(off, ZERO, expected=100)
    r = result(1, update(1, 1, 1))
    assert single.admit(r) == [r] and streaming.admit(r) == [r]
    assert single.close() == ([], [], []) and streaming.close() == ([], [], [])


def test_small_rounds_hold_their_updates_for_the_relative_bounds() -> None:
    screen = Screen(Validation(), ZERO, expected=2)
    honest, boosted = result(1, update(1, 0, 0)), result(2, update(-50, 0, 0))
    assert screen.admit(honest) == [] and screen.admit(boosted) == []
    passed, notes, _ = screen.close()
    assert passed[0] == honest
    # the lower median of two norms is the smaller one: the boosted change keeps 3 x that
    assert passed[1].arrays["w"].tolist() == [-3.0, 0.0, 0.0]
    assert [node for node, _ in notes] == [2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_norm": 0}, "max_norm must be a finite number > 0"),
        ({"anomaly_threshold": float("nan")}, "anomaly_threshold must be a finite number > 0"),
        ({"anomaly_threshold": True}, "anomaly_threshold must be a finite number > 0"),
        ({"min_updates": 2}, "min_updates must be an int >= 3"),
        ({"pull_threshold": True}, "pull_threshold must be a finite number > 0"),
        ({"pull_threshold": 0.5}, "pull_threshold must be >= 1"),
        ({"pull_threshold": 12.0}, "quarantine_threshold must be >= pull_threshold=12.0"),
    ],
)
def test_impossible_settings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Validation(**kwargs)  # type: ignore[arg-type]


def test_a_refused_pull_threshold_shows_the_correct_call() -> None:
    for bad in (0.5, 12.0):
        with pytest.raises(ValueError) as refused:
            Validation(pull_threshold=bad)
        assert str(refused.value).splitlines()[-1].startswith("Hint: Validation(pull_threshold=2.3")


def test_server_app_takes_only_a_validation() -> None:
    with pytest.raises(TypeError, match="must be a Validation"):
        ServerApp(FedAvg(), validation={"max_norm": 1})  # type: ignore[arg-type]


# --- in a run ------------------------------------------------------------------------------------


class Towards(Client):
    """Moves the model towards its target; the attacker moves it the other way, far."""

    def __init__(self, node: int) -> None:
        self.node = node

    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:  # type: ignore[type-arg]
        w = arrays["w"] + (1.0 + 0.01 * self.node)
        if self.node == 0:
            w = arrays["w"] - 50.0  # sign flipped and boosted
        return Arrays({"w": w}), 10, {}

    def evaluate(self, arrays: Arrays, config: dict) -> tuple[float, int, dict]:  # type: ignore[type-arg]
        return 0.0, 1, {}


def run_towards(validation: Validation) -> tuple[np.ndarray, list[Event], list]:  # type: ignore[type-arg]
    events: list[Event] = []
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=2,
        initial_arrays=Arrays({"w": np.zeros(2)}),
        validation=validation,
    )
    result = run_simulation(
        app, lambda ctx: Towards(ctx.node_id), num_clients=8, on_event=events.append
    )
    return result.arrays["w"], events, result.history.rounds


def test_a_boosted_flipped_update_is_left_out_of_its_round_and_counted_and_reported() -> None:
    w, events, rounds = run_towards(Validation())

    honest_mean = np.mean([1.0 + 0.01 * n for n in range(1, 8)])
    assert w == pytest.approx(2 * honest_mean)
    rejected = [e for e in events if isinstance(e, UpdateRejected)]
    assert [(e.round, e.node_id) for e in rejected] == [(1, 0), (2, 0)]
    for record in rounds[1:]:
        assert (record.replies, record.failures, record.rejected) == (7, 1, 1)
        assert record.failed[0].reason.startswith("left out of this round: anomaly score")


def test_an_honest_outlier_is_pulled_in_every_round_and_its_data_counts() -> None:
    class Skewed(Towards):
        def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:  # type: ignore[type-arg]
            if self.node == 0:  # its own data pulls the second weight the other way
                return Arrays({"w": arrays["w"] + np.array([1.0, -0.5])}), 10, {}
            return Arrays({"w": arrays["w"] + (1.0 + 0.1 * self.node)}), 10, {}  # score 6.7

    events: list[Event] = []
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0.0)),
        num_rounds=2,
        initial_arrays=Arrays({"w": np.zeros(2)}),
    )
    result = run_simulation(
        app, lambda ctx: Skewed(ctx.node_id), num_clients=8, on_event=events.append
    )
    assert all((r.replies, r.rejected) == (8, 0) for r in result.history.rounds[1:])
    bounded = [e for e in events if isinstance(e, ReplyBounded)]
    assert [(e.round, e.node_id) for e in bounded] == [(1, 0), (2, 0)]
    honest_only = 2 * np.mean([1.0 + 0.1 * n for n in range(1, 8)])
    assert result.arrays["w"][1] < honest_only  # its data moved the model its way


def test_without_the_bounds_the_attacker_moves_the_model() -> None:
    off = Validation(anomaly_threshold=None, norm_multiple=None, examples_multiple=None)
    w, _, rounds = run_towards(off)
    assert w[0] < 0  # one boosted, flipped update outweighs seven honest ones
    assert all(r.rejected == 0 for r in rounds)


def test_updates_shaped_unlike_the_model_are_checked_only_for_examples_and_finite_values() -> None:
    # a strategy with updates_like_model = False (trees that grow the model) gets such updates
    grown = Arrays({"model": np.arange(7, dtype=np.uint8)})
    screen = Screen(Validation(), ZERO, expected=10, like_model=False)
    assert screen.problem(reply(grown)) is None
    assert screen.admit(result(1, grown)) == []  # held for the bound on example counts
    assert screen.close() == ([result(1, grown)], [], [])  # not compared to the model
    assert "num_examples=0" in str(screen.problem(reply(grown, examples=0)))
    nan = Arrays({"leaf": np.array([np.nan], np.float32)})
    assert "non-finite" in str(screen.problem(reply(nan)))
    assert "different model" in str(Screen(Validation(), ZERO, 10).problem(reply(grown)))
