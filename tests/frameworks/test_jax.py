"""The JAX adapter: pytrees <-> Arrays exactly, a training loop that learns and compiles once."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen, nnx
from sklearn.datasets import load_digits

from pollinate import Arrays, Context, FedAvg, ServerApp, load_arrays, run_simulation, save_arrays
from pollinate.datasets import iid
from pollinate.frameworks import jax as jax_adapter
from pollinate.frameworks.jax import JaxClient, evaluate, get_arrays, set_arrays, train


class MLP(linen.Module):
    @linen.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        hidden = linen.relu(linen.Dense(32)(x))
        return linen.Dense(10)(hidden)


MODEL = MLP()
TX = optax.adam(1e-2)


def apply(params: Any, x: jax.Array) -> jax.Array:
    return MODEL.apply({"params": params}, x)  # type: ignore[return-value]


def init_params(seed: int = 0) -> Any:
    return MODEL.init(jax.random.key(seed), jnp.zeros((1, 64)))["params"]


@cache
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


def test_the_adapter_imports_the_real_jax() -> None:
    assert jax_adapter.jax is jax and jax_adapter.__name__ == "pollinate.frameworks.jax"


def test_linen_params_are_named_by_key_path() -> None:
    arrays = get_arrays(init_params())
    assert arrays.names == ["Dense_0/bias", "Dense_0/kernel", "Dense_1/bias", "Dense_1/kernel"]
    assert arrays["Dense_0/kernel"].shape == (64, 32)
    assert all(type(a) is np.ndarray and a.dtype == np.float32 for a in arrays.values())


def mixed_tree(seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "encoder": {"layers": [{"w": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32)}]},
        "half": jnp.asarray(rng.normal(size=4), jnp.float16),
        "table": (rng.integers(0, 99, (2, 3), np.int64), rng.integers(0, 2, 2).astype(bool)),
        "step": jnp.int32(seed),
        "bytes": rng.integers(0, 255, 5, np.uint8),
    }


def aligned(values: list[float]) -> np.ndarray:
    """A float32 array on a 64-byte boundary, the kind JAX on CPU may use without a copy."""
    buffer = np.zeros(len(values) + 16, np.float32)
    start = (-buffer.ctypes.data % 64) // 4
    out = buffer[start : start + len(values)]
    out[:] = values
    return out


def test_round_trip_is_exact_for_nested_pytrees_of_any_dtype() -> None:
    tree = mixed_tree(0)
    arrays = get_arrays(tree)
    assert arrays.names == [
        "bytes",
        "encoder/layers/0/w",
        "half",
        "step",
        "table/0",
        "table/1",
    ]
    back = set_arrays(mixed_tree(1), arrays)
    assert jax.tree.structure(back) == jax.tree.structure(tree)
    assert get_arrays(back) == arrays
    assert isinstance(back["half"], jax.Array) and back["half"].dtype == jnp.float16
    assert type(back["table"][0]) is np.ndarray and back["table"][0].dtype == np.int64


def test_arrays_are_copies_both_ways() -> None:
    tree = {"w": np.zeros(3, np.float32), "v": jnp.zeros(3)}
    arrays = get_arrays(tree)
    arrays["w"][0] = 1.0
    assert tree["w"][0] == 0.0
    source = {"w": aligned([1.0] * 3), "v": aligned([1.0] * 3)}
    new = set_arrays(tree, Arrays(source))
    source["w"][0] = source["v"][0] = 5.0
    assert float(new["w"][0]) == 1.0 and float(new["v"][0]) == 1.0


class Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.hidden = nnx.Linear(64, 32, rngs=rngs)
        self.out = nnx.Linear(32, 10, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.out(nnx.relu(self.hidden(x)))


def test_nnx_state_round_trips_through_nnx_update() -> None:
    a, b = Net(nnx.Rngs(0)), Net(nnx.Rngs(1))
    x = jnp.ones((1, 64))
    arrays = get_arrays(nnx.state(a, nnx.Param))
    assert arrays.names == ["hidden/bias", "hidden/kernel", "out/bias", "out/kernel"]
    assert not np.allclose(a(x), b(x))
    nnx.update(b, set_arrays(nnx.state(b, nnx.Param), arrays))
    np.testing.assert_array_equal(a(x), b(x))


def test_an_nnx_module_trains_through_split_and_merge() -> None:
    model = Net(nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)

    def apply_nnx(params: Any, x: jax.Array) -> jax.Array:
        return nnx.merge(graphdef, params)(x)

    x, y = digits()
    new, _ = train(params, apply_nnx, x, y, optimizer=TX, epochs=2, batch_size=64, seed=0)
    nnx.update(model, new)
    _, _, metrics = evaluate(nnx.state(model, nnx.Param), apply_nnx, x, y)
    assert metrics["accuracy"] > 0.9


def test_optimizer_state_is_a_pytree_like_any_other() -> None:
    state = TX.init(init_params())
    arrays = get_arrays(state)
    assert {"0/count", "0/mu/Dense_0/kernel", "0/nu/Dense_1/bias"} <= set(arrays.names)
    assert get_arrays(set_arrays(state, arrays)) == arrays


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": np.zeros(2, np.float32)}, r"missing \['b'\], unexpected \[\]"),
        (
            {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32), "x": np.zeros(1)},
            r"unexpected \['x'\]",
        ),
        ({"w": np.zeros(3, np.float32), "b": np.zeros(1, np.float32)}, "'w' has shape .3,."),
        ({"w": np.zeros(2, np.float64), "b": np.zeros(1, np.float32)}, "dtype float64"),
    ],
)
def test_arrays_that_do_not_fit_the_pytree_are_refused(
    arrays: dict[str, np.ndarray], message: str
) -> None:
    tree = {"w": jnp.zeros(2), "b": jnp.zeros(1)}
    with pytest.raises(ValueError, match=message) as info:
        set_arrays(tree, Arrays(arrays))
    assert "Hint:" in str(info.value)


def test_misuse_is_explained() -> None:
    with pytest.raises(TypeError, match="takes Arrays, got dict"):
        set_arrays({"w": jnp.zeros(2)}, {"w": np.zeros(2)})
    with pytest.raises(ValueError, match="both named 'a/b'"):
        get_arrays({"a/b": jnp.zeros(1), "a": {"b": jnp.zeros(1)}})
    with pytest.raises(TypeError, match="bfloat16, which cannot travel"):
        get_arrays({"w": jnp.zeros(2, jnp.bfloat16)})
    x, y = digits()
    with pytest.raises(ValueError, match="same number"):
        train(init_params(), apply, x, y[:-1], optimizer=TX, epochs=1, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="epochs must be an int >= 1"):
        train(init_params(), apply, x, y, optimizer=TX, epochs=0, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        evaluate(init_params(), apply, x, y, batch_size=0)


def test_train_lowers_the_loss_and_keeps_the_structure() -> None:
    x, y = digits()
    params = init_params()
    loss_before, n, metrics_before = evaluate(params, apply, x, y)
    new, metrics = train(params, apply, x, y, optimizer=TX, epochs=3, batch_size=64, seed=0)
    loss_after, _, metrics_after = evaluate(new, apply, x, y)
    assert n == len(x) and loss_after < loss_before / 4
    assert metrics_after["accuracy"] > 0.9 > metrics_before["accuracy"]
    assert abs(metrics["train_loss"] - loss_after) < 0.2
    assert jax.tree.structure(new) == jax.tree.structure(params)
    assert get_arrays(params) == get_arrays(init_params())  # the input is left alone


def test_evaluate_reports_accuracy_only_for_class_labels() -> None:
    x = np.ones((5, 2), np.float32)
    loss, n, metrics = evaluate(
        {"w": jnp.ones((2, 1))},
        lambda p, x: x @ p["w"],
        x,
        np.zeros((5, 1), np.float32),
        loss_fn=lambda out, y: ((out - y) ** 2).sum(-1),
        batch_size=2,
    )
    assert (loss, n, metrics) == (4.0, 5, {})


def test_clients_on_threads_share_one_compiled_step(caplog: pytest.LogCaptureFixture) -> None:
    traced = []

    def counting_loss(outputs: jax.Array, y: jax.Array) -> jax.Array:
        traced.append(1)  # runs only while JAX traces the step, not on each call
        return optax.softmax_cross_entropy_with_integer_labels(outputs, y)

    x, y = digits()
    template = init_params()
    global_arrays = get_arrays(template)

    def client(i: int) -> float:
        # As JaxClient does; every client holds a different number of examples, and padding
        # keeps one batch shape.
        params = set_arrays(template, global_arrays)
        part = slice(100 * i, 100 * i + 40 + 7 * i)
        _, metrics = train(
            params, apply, x[part], y[part], optimizer=TX, epochs=2, batch_size=16, seed=i,
            loss_fn=counting_loss,
        )  # fmt: skip
        return float(metrics["train_loss"])

    jax.config.update("jax_log_compiles", True)  # global: a context would hold for this thread
    try:
        with ThreadPoolExecutor(4) as pool:
            losses = list(pool.map(client, range(8)))
    finally:
        jax.config.update("jax_log_compiles", False)
    compiled = [r for r in caplog.records if "Compiling jit(_train_step)" in r.getMessage()]
    assert len(traced) == 1 and len(compiled) == 1 and all(np.isfinite(losses))
    assert losses == [client(i) for i in range(8)]  # threads change nothing


def test_a_short_federated_run_learns() -> None:
    x, y = digits()
    x_test, y_test, x_train, y_train = x[:300], y[:300], x[300:], y[300:]
    parts = iid(len(x_train), 4, seed=0)
    template = init_params()

    def client_fn(context: Context) -> JaxClient:
        idx = parts[context.partition_id]
        split = int(0.8 * len(idx))
        return JaxClient(
            template,
            apply,
            (x_train[idx[:split]], y_train[idx[:split]]),
            (x_train[idx[split:]], y_train[idx[split:]]),
            optimizer=TX,
            epochs=5,
            batch_size=32,
            seed=context.partition_id,
        )

    def centralized(round: int, arrays: Arrays) -> tuple[float, dict[str, Any]]:
        loss, _, metrics = evaluate(set_arrays(template, arrays), apply, x_test, y_test)
        return loss, metrics

    app = ServerApp(
        FedAvg(evaluate_fn=centralized),
        num_rounds=3,
        initial_arrays=get_arrays(template),
    )
    result = run_simulation(app, client_fn, num_clients=4, concurrency=2)
    first, last = result.history.rounds[0], result.history.rounds[-1]
    assert last.centralized["accuracy"] > 0.85 > 0.3 > first.centralized["accuracy"]
    assert last.evaluate["accuracy"] > 0.8 and "train_loss" in last.fit


def test_a_saved_model_becomes_a_flax_msgpack_file(tmp_path: Path) -> None:
    trained = get_arrays(init_params(seed=3))
    save_arrays(trained, tmp_path / "model.npz")  # what `pollinate run --out` leaves
    template = init_params(seed=0)
    path = jax_adapter.save_native(
        load_arrays(tmp_path / "model.npz"), tmp_path / "model.msgpack", template
    )
    restored = flax.serialization.from_bytes(template, path.read_bytes())
    assert get_arrays(restored) == trained
    with pytest.raises(ValueError):
        jax_adapter.save_native(Arrays({"w": np.zeros(2)}), tmp_path / "x.msgpack", template)
