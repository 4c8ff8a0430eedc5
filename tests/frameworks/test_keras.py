"""The Keras adapter: weights as Arrays and back, KerasClient, a short federated run, and the
backend it picks when the user picked none."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pollinate import (
    Arrays,
    Context,
    FedAvg,
    ServerApp,
    Validation,
    load_arrays,
    run_simulation,
    save_arrays,
)
from pollinate.datasets import iid
from pollinate.frameworks import keras as pk
from pollinate.frameworks.keras import KerasClient, get_arrays, set_arrays

keras = pk.keras  # Keras itself, on the backend the adapter chose before importing it

# Keras's own metric logging calls np.array(torch_tensor), which NumPy 2 flags; not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def mlp(seed: int = 0, dtype: str = "float32") -> keras.Model:
    """Dense -> BatchNormalization -> Dense, compiled for integer labels."""
    init = keras.initializers.GlorotUniform
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, kernel_initializer=init(seed), dtype=dtype),
            keras.layers.BatchNormalization(dtype=dtype),
            keras.layers.Activation("relu"),
            keras.layers.Dense(10, "softmax", kernel_initializer=init(seed + 1), dtype=dtype),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def test_round_trip_is_exact_including_batchnorm_statistics() -> None:
    x, y = digits()
    trained = mlp(seed=0)
    trained.fit(x[:200], y[:200], epochs=1, verbose=0)  # moves the BatchNorm statistics
    arrays = get_arrays(trained)
    assert not np.allclose(arrays["4/moving_mean"], 0.0)
    fresh = mlp(seed=7)
    set_arrays(fresh, arrays)
    assert get_arrays(fresh) == arrays
    np.testing.assert_array_equal(
        fresh.predict(x[:50], verbose=0), trained.predict(x[:50], verbose=0)
    )


def test_arrays_hold_every_weight_named_by_position_and_variable() -> None:
    arrays = get_arrays(mlp())
    assert arrays.names == [
        *("0/kernel", "1/bias"),
        *("2/gamma", "3/beta", "4/moving_mean", "5/moving_variance"),
        *("6/kernel", "7/bias"),
    ]
    assert arrays["0/kernel"].shape == (64, 16) and arrays["5/moving_variance"].shape == (16,)


def test_names_are_stable_across_builds_and_threads() -> None:
    # Keras numbers auto-named layers: the second build's paths differ, the names must not
    first, second = mlp(), mlp()
    assert [v.path for v in first.weights] != [v.path for v in second.weights]
    built: list[list[str]] = []
    worker = threading.Thread(target=lambda: built.append(get_arrays(mlp()).names))
    worker.start()
    worker.join()
    assert get_arrays(first).names == get_arrays(second).names == built[0]


def test_dtypes_are_kept_and_arrays_are_copies() -> None:
    model = mlp(dtype="float64")
    arrays = get_arrays(model)
    assert {a.dtype for a in arrays.values()} == {np.dtype(np.float64)}
    before = arrays["0/kernel"].copy()
    model.weights[0].assign(np.zeros((64, 16)))
    np.testing.assert_array_equal(arrays["0/kernel"], before)
    assert get_arrays(model)["0/kernel"].dtype == np.float64


def test_a_dtype_numpy_cannot_hold_is_refused_with_a_hint() -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="bfloat16")])
    with pytest.raises(TypeError, match=r"dtype bfloat16, which cannot travel.*\nHint: keep"):
        get_arrays(model)


def test_set_arrays_accepts_read_only_arrays() -> None:
    # arrays decoded from a wire message are read-only views
    arrays = get_arrays(mlp(seed=1))
    for array in arrays.values():
        array.setflags(write=False)
    model = mlp(seed=2)
    set_arrays(model, arrays)
    assert get_arrays(model) == arrays


def test_set_arrays_names_every_mismatch_and_changes_nothing() -> None:
    model = mlp(seed=0)
    before = get_arrays(model)
    wrong = dict(get_arrays(mlp(seed=1)))
    del wrong["4/moving_mean"]
    wrong["8/extra"] = np.zeros(3, np.float32)
    wrong["7/bias"] = np.zeros(11, np.float32)
    with pytest.raises(ValueError, match=r"Hint:") as info:
        set_arrays(model, wrong)
    message = str(info.value)
    assert "missing '4/moving_mean'" in message
    assert "unexpected '8/extra'" in message
    assert "mis-shaped '7/bias' [11] (model [10]" in message
    assert get_arrays(model) == before


def test_get_arrays_of_an_unbuilt_model_says_how_to_build_it() -> None:
    with pytest.raises(ValueError, match=r"not built.*\nHint: .*keras.Input"):
        get_arrays(keras.Sequential([keras.layers.Dense(2)]))


def test_client_refuses_an_uncompiled_model_and_bad_data() -> None:
    x, y = digits()
    uncompiled = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(TypeError, match=r"compiled.*\nHint: call model.compile"):
        KerasClient(uncompiled, (x, y))
    with pytest.raises(ValueError, match=r"train has 10 inputs and 9 targets"):
        KerasClient(mlp, (x[:10], y[:9]))
    with pytest.raises(ValueError, match=r"epochs must be an int >= 1, got 0"):
        KerasClient(mlp, (x, y), epochs=0)
    with pytest.raises(ValueError, match=r"no val data.*\nHint:"):
        KerasClient(mlp, (x, y)).evaluate(get_arrays(mlp()), {})


def test_client_fits_with_model_fit_and_evaluates_with_model_evaluate() -> None:
    x, y = digits()
    client = KerasClient(mlp, (x[:300], y[:300]), (x[300:400], y[300:400]), epochs=2)
    start = get_arrays(mlp(seed=3))
    new, examples, metrics = client.fit(start, {"round": 1})
    assert examples == 300 and new.names == start.names
    assert set(metrics) == {"train_loss", "train_accuracy"}
    assert not np.array_equal(new["0/kernel"], start["0/kernel"])
    loss, n, scores = client.evaluate(new, {})
    assert n == 100 and loss > 0 and set(scores) == {"accuracy"}
    assert scores["accuracy"] > 0.5


def test_fit_repeats_exactly_for_the_same_seed_and_round() -> None:
    x, y = digits()
    start = get_arrays(mlp(seed=3))

    def fit(seed: int, round: int) -> Arrays:
        return KerasClient(mlp, (x[:100], y[:100]), seed=seed).fit(start, {"round": round})[0]

    assert fit(0, 1) == fit(0, 1)
    assert fit(0, 1) != fit(0, 2)


def test_a_short_federated_run_learns_digits() -> None:
    x, y = digits()
    x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
    parts = iid(len(x_train), 4, seed=0)
    server_model = mlp(seed=0)

    def client_fn(context: Context) -> KerasClient:
        idx = parts[context.partition_id]
        train = (x_train[idx[:250]], y_train[idx[:250]])
        val = (x_train[idx[250:]], y_train[idx[250:]])
        return KerasClient(mlp, train, val, epochs=2, batch_size=16)

    def evaluate(round: int, arrays: Arrays) -> tuple[float, dict[str, float]]:
        set_arrays(server_model, arrays)
        result = server_model.evaluate(x_test, y_test, verbose=0, return_dict=True)
        return result["loss"], {"accuracy": result["accuracy"]}

    app = ServerApp(
        FedAvg(evaluate_fn=evaluate, on_fit_config_fn=lambda r: {"round": r}),
        num_rounds=3,
        initial_arrays=get_arrays(server_model),
        validation=Validation(anomaly_threshold=None),
    )
    result = run_simulation(app, client_fn, num_clients=4, concurrency=2)
    accuracy = result.history.metric("centralized", "accuracy")
    assert [r for r, _ in accuracy] == [0, 1, 2, 3]
    assert accuracy[-1][1] >= 0.85 > accuracy[0][1]
    assert all(r.replies == 4 and r.failures == 0 for r in result.history.rounds[1:])
    assert result.history.rounds[-1].evaluate["accuracy"] >= 0.85


# --- the backend: chosen before Keras is first imported -------------------------------------
# Keras reads its backend once, at import; these tests replay the adapter's choice as if keras
# were not imported yet. tests/examples/test_keras.py runs the whole path in a fresh process.

TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """keras not imported, KERAS_BACKEND unset, an empty KERAS_HOME (returned)."""
    monkeypatch.delitem(sys.modules, "keras")
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    return tmp_path


def chosen() -> str | None:
    pk._choose_backend()
    return os.environ.get("KERAS_BACKEND")


def test_with_no_choice_keras_default_is_kept_if_installed_else_torch(fresh: Path) -> None:
    assert chosen() == (None if TENSORFLOW else "torch")


def test_an_uninstalled_backend_in_keras_json_falls_back_to_torch(fresh: Path) -> None:
    (fresh / "keras.json").write_text(json.dumps({"backend": "tensorflow"}))
    assert chosen() == (None if TENSORFLOW else "torch")


def test_an_installed_backend_in_keras_json_is_kept(fresh: Path) -> None:
    (fresh / "keras.json").write_text(json.dumps({"backend": "jax"}))
    assert chosen() is None  # Keras reads keras.json itself


def test_keras_backend_set_by_the_user_is_never_overridden(
    fresh: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    assert chosen() == "tensorflow"


def test_nothing_is_set_once_keras_is_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    assert "keras" in sys.modules
    assert chosen() is None


def test_a_saved_model_becomes_a_weights_file_keras_loads(tmp_path: Path) -> None:
    trained = get_arrays(mlp(seed=3))
    save_arrays(trained, tmp_path / "model.npz")  # what `pollinate run --out` leaves
    path = pk.save_native(load_arrays(tmp_path / "model.npz"), tmp_path / "m.weights.h5", mlp())
    reloaded = mlp(seed=9)
    reloaded.load_weights(str(path))
    assert get_arrays(reloaded) == trained
    with pytest.raises(ValueError, match=r"Hint: save_native\(arrays, 'model.weights.h5'"):
        pk.save_native(trained, tmp_path / "model.h5", mlp())
