"""Adversaries in simulation: who attacks, what they send, and that it measurably hurts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate import Adversaries, Arrays, Client, FedAvg, ServerApp, run_simulation
from pollinate.app import App, load_app
from pollinate.client import Context
from pollinate.loop.history import WALL_TIMES
from pollinate.records import Message
from pollinate.simulation import SimulationGrid, flip_labels
from pollinate.simulation.adversary import gaussian_noise, scale_update, sign_flip
from pollinate.strategy import Sampling

DEMO = Path(__file__).resolve().parents[2] / "examples" / "quickstart-numpy"

# --- who attacks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fraction", "num_clients", "count"),
    [(0.3, 20, 6), (0.25, 10, 3), (0.0, 7, 0), (1.0, 7, 7), (0.01, 20, 0), (0.5, 1, 1)],
)
def test_the_adversarial_set_has_round_half_up_of_fraction_times_clients(
    fraction: float, num_clients: int, count: int
) -> None:
    chosen = Adversaries(fraction, "sign-flip").clients(num_clients)
    assert len(chosen) == count
    assert chosen <= set(range(num_clients))


def test_the_adversarial_set_is_stable_and_depends_only_on_the_seed() -> None:
    adversaries = Adversaries(0.3, "scale", seed=7)
    assert adversaries.clients(100) == Adversaries(0.3, "scale", seed=7).clients(100)
    assert adversaries.clients(100) != Adversaries(0.3, "scale", seed=8).clients(100)
    # for one seed, more attackers means the same ones plus others: sweeps stay comparable
    assert Adversaries(0.1, "scale", seed=7).clients(100) < adversaries.clients(100)


def test_attackers_persist_across_rounds_and_their_context_names_the_attack() -> None:
    attacked: dict[int, set[int]] = {1: set(), 2: set(), 3: set()}

    class Record(Client):
        def __init__(self, context: Context) -> None:
            self.context = context

        def fit(self, arrays, config):
            if self.context.node_config.get("attack") == "gaussian-noise":
                attacked[int(config["round"])].add(self.context.node_id)
            return arrays, 1, {}

    grid = SimulationGrid(Record, 30, adversaries=Adversaries(0.2, "gaussian-noise", seed=3))
    try:
        for rnd in attacked:
            list(grid.dispatch([_fit(n, rnd, config={"round": rnd}) for n in range(30)], None))
    finally:
        grid.close()
    assert len(grid.attackers) == 6
    assert attacked == {1: grid.attackers, 2: grid.attackers, 3: grid.attackers}


# --- what they send ------------------------------------------------------------------------

GLOBAL = Arrays({"w": np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), "b": np.float32(0.5)})
HONEST = Arrays({"w": np.array([[2.0, 2.0], [1.0, 5.0]], np.float32), "b": np.float32(1.5)})


def test_sign_flip_sends_the_reversed_update() -> None:
    # update - global = [[1, 0], [-2, 1]] and 1.0
    assert sign_flip(GLOBAL, HONEST)["w"].tolist() == [[0.0, 2.0], [5.0, 3.0]]
    assert sign_flip(GLOBAL, HONEST)["b"] == -0.5
    assert sign_flip(GLOBAL, HONEST, scale=3.0)["w"].tolist() == [[-2.0, 2.0], [9.0, 1.0]]


def test_scale_sends_the_boosted_update() -> None:
    assert scale_update(GLOBAL, HONEST)["w"].tolist() == [[11.0, 2.0], [-17.0, 14.0]]
    assert scale_update(GLOBAL, HONEST, factor=2.0)["b"] == 2.5


def test_gaussian_noise_sends_the_global_model_plus_noise_of_the_given_std() -> None:
    noisy = gaussian_noise(GLOBAL, HONEST, np.random.default_rng(5), std=0.5)
    expected = np.random.default_rng(5)
    w_noise = expected.normal(0.0, 0.5, (2, 2))
    b_noise = expected.normal(0.0, 0.5, ())
    assert np.allclose(noisy["w"], GLOBAL["w"] + w_noise)
    assert np.isclose(noisy["b"], 0.5 + b_noise)
    big = Arrays({"w": np.zeros(100_000, np.float32)})
    sample = gaussian_noise(big, big, np.random.default_rng(0), std=2.0)["w"]
    assert abs(sample.mean()) < 0.05 and abs(sample.std() - 2.0) < 0.05


@pytest.mark.parametrize("attack", ["sign-flip", "scale", "gaussian-noise"])
def test_attacks_keep_dtype_and_shape_so_they_reach_aggregation(attack: str) -> None:
    shapes = {"f16": ((3, 2), np.float16), "f32": ((4,), np.float32), "f64": ((), np.float64)}
    global_arrays = Arrays({n: np.ones(s, d) for n, (s, d) in shapes.items()})
    honest = Arrays({n: np.full(s, 1.5, d) for n, (s, d) in shapes.items()})
    poisoned = Adversaries(1.0, attack).poison(global_arrays, honest, np.random.default_rng(0))
    for name, (shape, dtype) in shapes.items():
        assert (poisoned[name].shape, poisoned[name].dtype) == (shape, dtype)
        assert not np.array_equal(poisoned[name], honest[name])


@pytest.mark.parametrize("attack", ["sign-flip", "scale", "gaussian-noise", "label-flip"])
def test_integer_arrays_and_misfits_go_through_as_the_client_sent_them(attack: str) -> None:
    global_arrays = Arrays(
        {"steps": np.array([3], np.int64), "mask": np.array([True]), "w": np.zeros(2)}
    )
    honest = Arrays({"steps": np.array([4], np.int64), "mask": np.array([False]), "w": np.zeros(5)})
    poisoned = Adversaries(1.0, attack).poison(global_arrays, honest, np.random.default_rng(0))
    assert poisoned == honest  # w's shape is wrong: the reply checks reject it, not the attack


def test_label_flip_leaves_the_reply_alone() -> None:
    same = Adversaries(1.0, "label-flip").poison(GLOBAL, HONEST, np.random.default_rng(0))
    assert same == HONEST


def test_flip_labels_mirrors_each_class_and_keeps_the_dtype() -> None:
    flipped = flip_labels(np.array([0, 1, 2, 9, 4], np.uint8), num_classes=10)
    assert flipped.tolist() == [9, 8, 7, 0, 5] and flipped.dtype == np.uint8
    assert flip_labels([0, 1, 2], num_classes=3).tolist() == [2, 1, 0]


@pytest.mark.parametrize(
    ("labels", "num_classes", "error", "message"),
    [
        ([0, 10], 10, ValueError, r"labels must lie in \[0, 9\], found 0..10"),
        ([-1, 2], 10, ValueError, "found -1..2"),
        ([0.0, 1.0], 10, TypeError, "labels must be integer class ids"),
        ([0, 1], 1, ValueError, "num_classes must be an int >= 2, got 1"),
    ],
)
def test_flip_labels_refuses_what_it_cannot_flip(
    labels: list[float], num_classes: int, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        flip_labels(labels, num_classes)


# --- configuration -------------------------------------------------------------------------


def test_each_attack_gets_its_own_default_parameter() -> None:
    assert Adversaries(0.2, "sign-flip").scale == 1.0
    assert Adversaries(0.2, "scale").scale == 10.0
    assert Adversaries(0.2, "gaussian-noise").noise_std == 1.0
    label = Adversaries(0.2, "label-flip")
    assert (label.scale, label.noise_std) == (None, None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fraction": 1.5}, r"must be a finite number in \[0, 1\], got 1.5"),
        ({"fraction": float("nan")}, r"in \[0, 1\], got nan"),
        ({"fraction": True}, r"in \[0, 1\], got True"),
        ({"attack": "sign_flip"}, "unknown attack 'sign_flip' \\(did you mean 'sign-flip'\\?\\)"),
        ({"attack": "poison"}, "the attacks are sign-flip, scale, gaussian-noise, label-flip"),
        ({"scale": 0.0}, "scale must be a finite number > 0, got 0.0"),
        ({"scale": float("inf")}, "scale must be a finite number > 0, got inf"),
        ({"attack": "gaussian-noise", "scale": 2.0}, "scale 2.0 has no effect on attack"),
        ({"noise_std": 1.0}, "noise_std 1.0 has no effect on attack 'sign-flip'"),
        ({"attack": "gaussian-noise", "noise_std": -1.0}, "noise_std must be a finite number"),
        ({"seed": -1}, "seed must be an int >= 0, got -1"),
    ],
)
def test_bad_settings_are_refused_with_a_hint(kwargs: dict, message: str) -> None:
    settings = {"fraction": 0.2, "attack": "sign-flip", **kwargs}
    with pytest.raises((TypeError, ValueError), match=message) as caught:
        Adversaries(**settings)
    assert "\nHint: Adversaries(" in str(caught.value)


# --- in a run ------------------------------------------------------------------------------


class Toward(Client):
    """Moves every weight to its partition id + 1."""

    def __init__(self, context: Context) -> None:
        self.target = context.partition_id + 1.0

    def fit(self, arrays, config):
        return Arrays({"w": np.full_like(arrays["w"], self.target)}), 1, {}

    def evaluate(self, arrays, config):
        return float(np.abs(arrays["w"]).mean()), 1, {}


def _app(rounds: int) -> ServerApp:
    initial = Arrays({"w": np.zeros(4, np.float32)})
    return ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0)), num_rounds=rounds, initial_arrays=initial
    )


def test_poisoned_replies_reach_aggregation() -> None:
    adversaries = Adversaries(0.5, "sign-flip", seed=1)
    result = run_simulation(_app(1), Toward, num_clients=4, adversaries=adversaries)
    # honest clients send id + 1, attackers its reverse, -(id + 1); FedAvg takes the mean
    attackers = adversaries.clients(4)
    sent = [-(i + 1.0) if i in attackers else i + 1.0 for i in range(4)]
    assert result.history.rounds[1].failures == 0
    assert np.allclose(result.arrays["w"], np.mean(sent))


def test_an_attacker_that_trains_in_place_is_poisoned_against_what_it_received() -> None:
    class TowardInPlace(Toward):
        def fit(self, arrays, config):
            arrays["w"][...] = self.target
            return arrays, 1, {}

    adversaries = Adversaries(0.5, "sign-flip", seed=1)
    result = run_simulation(_app(1), TowardInPlace, num_clients=4, adversaries=adversaries)
    attackers = adversaries.clients(4)
    sent = [-(i + 1.0) if i in attackers else i + 1.0 for i in range(4)]
    assert np.allclose(result.arrays["w"], np.mean(sent))


def test_an_attacker_that_fails_stays_a_failure() -> None:
    class Fails(Toward):
        def fit(self, arrays, config):
            raise RuntimeError("out of memory")

    adversaries = Adversaries(1.0, "scale")
    result = run_simulation(_app(1), Fails, num_clients=3, adversaries=adversaries)
    assert result.history.rounds[1].failures == 3
    assert "out of memory" in result.history.rounds[1].failed[0].reason


def test_a_seeded_simulation_with_adversaries_repeats_exactly() -> None:
    def run(seed: int) -> tuple[list[dict], Arrays]:
        result = run_simulation(
            _app(3),
            Toward,
            num_clients=12,
            seed=4,
            concurrency=4,
            adversaries=Adversaries(0.4, "gaussian-noise", noise_std=0.5, seed=seed),
        )
        history = [{**r.to_dict(), **dict.fromkeys(WALL_TIMES, 0)} for r in result.history.rounds]
        return history, result.arrays

    assert run(1) == run(1)
    assert run(1)[1] != run(2)[1]


# --- on the quickstart demo ----------------------------------------------------------------


def _demo() -> App:
    return load_app(DEMO)


def _demo_accuracy(adversaries: Adversaries | None, rounds: int = 5) -> float:
    """Test accuracy of plain FedAvg on the demo (20 clients, Dirichlet 0.5 label skew)."""
    app = _demo()
    server_app = app.server_app()
    server_app.num_rounds = rounds
    _screen_nothing(server_app)
    result = run_simulation(
        server_app, app.client_fn, 20, run_config=app.config, adversaries=adversaries
    )
    assert result.history.rounds[-1].failures == 0
    return float(result.history.rounds[-1].centralized["accuracy"])


def _screen_nothing(server_app: ServerApp) -> None:
    """Plain FedAvg: turn off the default update screening (``Validation``, developed
    alongside; written so this file works with or without it), since the point here is
    what an attack does to an undefended mean."""
    validation = getattr(server_app, "validation", None)
    if validation is not None:
        server_app.validation = type(validation)(
            anomaly_threshold=None, norm_multiple=None, examples_multiple=None
        )


@pytest.fixture(scope="module")
def honest_accuracy() -> float:
    return _demo_accuracy(None)


# Measured after 5 rounds (20 clients, seed 0): 0.902 without attackers.
@pytest.mark.parametrize(
    ("attack", "measured"),
    [("sign-flip", 0.469), ("scale", 0.142), ("gaussian-noise", 0.596), ("label-flip", 0.547)],
)
def test_thirty_percent_attackers_measurably_hurt_plain_fedavg(
    honest_accuracy: float, attack: str, measured: float
) -> None:
    attacked = _demo_accuracy(Adversaries(0.3, attack))
    assert honest_accuracy >= 0.85
    # the smallest measured gap is 0.31 (gaussian-noise); half of it is the bar
    assert honest_accuracy - attacked >= 0.15, (attack, honest_accuracy, attacked, measured)


def test_label_flippers_train_on_flipped_labels_through_the_app() -> None:
    app = _demo()
    made: dict[int, tuple[Context, Any]] = {}

    def client_fn(context: Context) -> Any:
        made[context.node_id] = (context, app.client_fn(context))
        return made[context.node_id][1]

    adversaries = Adversaries(0.3, "label-flip")
    config = {"round": 1, "local-epochs": 1, "batch-size": 16, "learning-rate": 0.5}
    grid = SimulationGrid(client_fn, 20, run_config=app.config, adversaries=adversaries)
    try:
        fits = [_fit(node, 1, _demo_global(), config) for node in range(20)]
        assert all(reply.error is None for reply in grid.dispatch(fits, None))
    finally:
        grid.close()
    assert len(made) == 20 and len(adversaries.clients(20)) == 6
    for node, (context, client) in made.items():
        honest = app.client_fn(Context(node, node, 20, run_config=app.config))
        attacking = node in adversaries.clients(20)
        assert context.node_config.get("attack") == ("label-flip" if attacking else None)
        expected = flip_labels(honest.y_train, 10) if attacking else honest.y_train
        assert np.array_equal(client.y_train, expected)
        assert np.array_equal(client.y_val, honest.y_val)  # it evaluates honestly


def _demo_global() -> Arrays:
    from quickstart_numpy import task  # importable once load_app put the demo on sys.path

    return task.initial_arrays()


def _fit(node: int, rnd: int, arrays: Arrays | None = None, config: dict | None = None) -> Message:
    return Message(
        "fit",
        task_id=f"{rnd}-{node}",
        round=rnd,
        node_id=node,
        arrays=arrays if arrays is not None else Arrays({"w": np.zeros(2, np.float32)}),
        config=config or {},
    )
