"""Keras 3 adapter: a model's weights as ``Arrays`` and back, and a client around ``model.fit``.

``KerasClient`` federates a compiled model in a few lines::

    from pollinate.frameworks.keras import KerasClient

    def client_fn(context):
        (x, y), (x_val, y_val) = load_partition(context.partition_id)
        return KerasClient(build_model, (x, y), (x_val, y_val), epochs=2, batch_size=32)

What travels is ``model.weights``: trainable and non-trainable (BatchNormalization's moving
mean and variance), in order, with their dtypes. Names are ``"<index>/<variable name>"``
(``"0/kernel"``, ``"4/moving_mean"``), not the variable's ``path``: Keras numbers
auto-named layers per thread (``dense``, then ``dense_1`` in the next model built), so two
builds of one model disagree on paths but never on order and variable names.

**Backend.** Keras picks its backend once, when first imported, from ``KERAS_BACKEND``, else
from ``~/.keras/keras.json`` (``$KERAS_HOME``), else TensorFlow. Importing this module first
keeps that choice when it is installed; when it is not (say Keras defaults to TensorFlow and
only PyTorch is installed), it sets ``KERAS_BACKEND`` to ``torch``, else ``jax``. It never
overrides ``KERAS_BACKEND``, and does nothing if ``keras`` was imported already. So import
it before ``keras``, or set ``KERAS_BACKEND`` yourself.

**Threads.** The simulation trains clients on a thread pool. Keras keeps its global state
(name scopes, layer name counters) per thread, and separate models share no variables, so
clients that each build their own model train safely side by side: give ``KerasClient`` a
function that builds the model, or build one in ``client_fn``, never one shared model.

>>> model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
>>> get_arrays(model).names
['0/gamma', '1/beta', '2/moving_mean', '3/moving_variance']
>>> set_arrays(model, get_arrays(model))
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path


def _choose_backend() -> None:
    """Set ``KERAS_BACKEND`` only if Keras's own choice is not installed (see above)."""
    if "KERAS_BACKEND" in os.environ or "keras" in sys.modules:
        return
    if _installed(_configured_backend() or "tensorflow"):
        return
    for backend in ("torch", "jax"):
        if _installed(backend):
            os.environ["KERAS_BACKEND"] = backend
            return


def _configured_backend() -> str | None:
    """The backend ``keras.json`` names, if there is one: a choice the user may have made."""
    home = Path(os.environ.get("KERAS_HOME") or Path("~/.keras").expanduser())
    try:
        backend = json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError, AttributeError):
        return None
    return backend if isinstance(backend, str) else None


def _installed(backend: str) -> bool:
    """Whether ``backend`` can be imported; backends other than these three are Keras's call."""
    if backend not in ("tensorflow", "torch", "jax"):
        return True
    return importlib.util.find_spec(backend) is not None


_choose_backend()

import keras  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402

from pollinate.checks import integer  # noqa: E402
from pollinate.client.client import Client  # noqa: E402
from pollinate.frameworks.shapes import mismatch  # noqa: E402
from pollinate.records import ARRAY_DTYPES, Arrays, Config, Metrics  # noqa: E402

__all__ = ["KerasClient", "get_arrays", "save_native", "set_arrays"]

Data = tuple[np.ndarray, np.ndarray]
"""``(inputs, targets)`` as numpy arrays of the same length."""


def get_arrays(model: keras.Model) -> Arrays:
    """``model.weights`` as Arrays: numpy copies, trainable and non-trainable, dtypes kept.

    Raises ValueError for a model with no weights yet (not built) and TypeError for a dtype
    that cannot travel (bfloat16).
    """
    if not model.weights:
        raise ValueError(
            f"get_arrays: {model.name!r} has no weights yet: it is not built.\nHint: start a "
            "Sequential with keras.Input(shape), or call model.build(input_shape) first."
        )
    return Arrays({_name(i, v): _to_numpy(v) for i, v in enumerate(model.weights)})


def set_arrays(model: keras.Model, arrays: Mapping[str, np.ndarray]) -> None:
    """Assign ``arrays`` to ``model.weights`` in place, each cast to its variable's dtype.

    Names and shapes are checked first: arrays from another model raise ValueError naming
    each missing, unexpected and mis-shaped entry, and leave the model unchanged.
    """
    variables = {_name(i, v): v for i, v in enumerate(model.weights)}
    shapes = {name: tuple(v.shape) for name, v in variables.items()}
    problem = mismatch(shapes, arrays, {name: f", {v.path!r}" for name, v in variables.items()})
    if problem:
        raise ValueError(
            f"set_arrays: the arrays do not fit model {model.name!r} ({problem}): they come "
            "from another model.\nHint: build the model the server's initial arrays came "
            "from (same layers, same order), and run the same app version on every node."
        )
    for name, variable in variables.items():
        variable.assign(arrays[name])


def save_native(arrays: Mapping[str, np.ndarray], path: str | Path, model: keras.Model) -> Path:
    """Assign ``arrays`` (a run's ``model.npz``: ``pollinate.load_arrays``) to ``model``,
    checked as ``set_arrays`` checks them, and save them with ``model.save_weights``: the
    ``.weights.h5`` file ``model.load_weights(path)`` reads."""
    if not str(path).endswith(".weights.h5"):
        raise ValueError(
            f"save_native: Keras names weights files *.weights.h5, got {str(path)!r}.\n"
            "Hint: save_native(arrays, 'model.weights.h5', model)"
        )
    set_arrays(model, arrays)
    model.save_weights(str(path))
    return Path(path)


class KerasClient(Client):
    """A client for a compiled Keras model: ``fit`` loads the global arrays, runs
    ``model.fit`` on ``train`` and returns the new arrays with the last epoch's metrics
    (``train_loss``, ``train_accuracy``, ...); ``evaluate`` runs ``model.evaluate`` on ``val``.

    ``model`` is a compiled model or, better in simulation, a function that builds one (see
    *Threads* above). Each epoch's order is drawn from a NumPy RNG seeded by ``seed`` and the
    fit config's ``round`` (if the server sends one) rather than Keras's shuffling, which
    draws from the backend's process-wide RNG: a seeded simulation then repeats exactly.
    """

    def __init__(
        self,
        model: keras.Model | Callable[[], keras.Model],
        train: Data,
        val: Data | None = None,
        *,
        epochs: int = 1,
        batch_size: int = 32,
        seed: int = 0,
    ) -> None:
        built = model if isinstance(model, keras.Model) else model()
        if not isinstance(built, keras.Model) or not built.compiled:
            raise TypeError(
                f"KerasClient takes a compiled keras.Model or a function returning one, got "
                f"{built!r}.\nHint: call model.compile(optimizer=..., loss=..., "
                "metrics=['accuracy']) before handing the model over."
            )
        for what, value in (("epochs", epochs), ("batch_size", batch_size)):
            integer(
                f"KerasClient: {what}",
                value,
                minimum=1,
                hint=f"KerasClient(model, train, {what}=1)",
            )
        self.model = built
        self.train = _check_data(train, "train")
        self.val = None if val is None else _check_data(val, "val")
        self.epochs = epochs
        self.batch_size = batch_size
        self.seed = seed

    def get_arrays(self, config: Config) -> Arrays:
        return get_arrays(self.model)

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        set_arrays(self.model, arrays)
        x, y = self.train
        rng = np.random.default_rng([self.seed, int(config.get("round", 0))])
        history: dict[str, list[float]] = {}
        for _ in range(self.epochs):
            order = rng.permutation(len(x))
            history = self.model.fit(
                x[order], y[order], batch_size=self.batch_size, shuffle=False, verbose=0
            ).history
        metrics: Metrics = {f"train_{key}": float(v[-1]) for key, v in history.items()}
        return get_arrays(self.model), len(x), metrics

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        if self.val is None:
            raise ValueError(
                "KerasClient has no val data, so it cannot evaluate.\nHint: pass "
                "KerasClient(model, train, val), or "
                "FedAvg(sampling=Sampling(fraction_evaluate=0))."
            )
        set_arrays(self.model, arrays)
        x, y = self.val
        results = self.model.evaluate(x, y, batch_size=self.batch_size, verbose=0, return_dict=True)
        loss = float(results.pop("loss"))
        return loss, len(x), {key: float(value) for key, value in results.items()}


# --- internals ---------------------------------------------------------------------------------


def _name(index: int, variable: keras.Variable) -> str:
    return f"{index}/{variable.name}"


def _to_numpy(variable: keras.Variable) -> np.ndarray:
    if variable.dtype not in ARRAY_DTYPES:
        raise TypeError(
            f"variable {variable.path!r} has dtype {variable.dtype}, which cannot travel.\n"
            "Hint: keep the variables in float32 (the mixed_float16 and mixed_bfloat16 dtype "
            "policies do) and compute in lower precision."
        )
    value = variable.value
    if keras.config.backend() == "torch":
        # Keras's convert_to_numpy calls np.array(tensor), which NumPy 2 warns about for
        # torch tensors. The copy keeps the array valid while the model trains on.
        return np.array(value.numpy(force=True), copy=True)
    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def _check_data(data: Data, what: str) -> Data:
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(
            f"KerasClient: {what} must be (inputs, targets), got {type(data).__name__}.\n"
            f"Hint: KerasClient(model, {what}=(x, y)) with numpy arrays."
        )
    x, y = np.asarray(data[0]), np.asarray(data[1])
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"KerasClient: {what} has {len(x)} inputs and {len(y)} targets.\nHint: pass as "
            "many targets as inputs, at least one of each."
        )
    return x, y
