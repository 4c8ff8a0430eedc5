"""JAX, Flax and optax: a pytree of arrays as ``Arrays``, and a ready optax training loop.

JAX is functional: a model's weights are a pytree (nested dicts, lists, tuples, Flax's
``params`` dict or NNX ``State``) and nothing changes in place. So ``get_arrays`` reads a
pytree into ``Arrays`` (numpy copies, dtypes kept) and ``set_arrays`` returns a NEW pytree
with the old one's structure and the new values; nothing is mutated.

An array's name is its key path joined with "/": a linen ``params`` dict gives
``Dense_0/kernel``, a list gives ``layers/0/w``. The trailing ``value`` through which an NNX
``Variable`` holds its array is left out, so ``nnx.state(model, nnx.Param)`` gives
``linear1/kernel``. An NNX module is handled through its state, the pytree NNX already
splits a module into; no NNX-specific API is needed::

    state = nnx.state(model, nnx.Param)
    arrays = get_arrays(state)
    nnx.update(model, set_arrays(state, arrays))

    graphdef, params = nnx.split(model, nnx.Param)      # to train with ``train``:
    def apply(params, x):                               # module level, defined once
        return nnx.merge(graphdef, params)(x)

JAX ships no training loop, so here is one: ``train`` runs minibatch optax steps on a pure
``apply_fn(params, x) -> outputs`` and ``evaluate`` scores one. Both steps are jitted at
module level, so every client and thread of a simulation shares one compiled step per
(apply_fn, loss_fn, optimizer, batch shape); that is why these should be the same objects
for every client (module-level functions, an optimizer built once per setting). Batches are
padded to ``batch_size`` and masked, so clients with different amounts of data do not
compile again. ``JaxClient`` wires both into a ``Client``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import numpy.typing as npt
import optax

from pollinate.checks import integer
from pollinate.client import Client
from pollinate.records import Arrays, Config, Metrics

PyTree = TypeVar("PyTree")
ApplyFn = Callable[[Any, jax.Array], jax.Array]
"""``apply_fn(params, x) -> outputs``; for linen, a module-level
``def apply(params, x): return MODEL.apply({"params": params}, x)``."""
LossFn = Callable[[jax.Array, jax.Array], jax.Array]
"""``loss_fn(outputs, y) -> one loss per example``, like optax's losses."""

default_loss: LossFn = optax.softmax_cross_entropy_with_integer_labels
"""Softmax cross-entropy of logits against integer class labels."""


def get_arrays(tree: Any) -> Arrays:
    """The pytree's arrays, named by key path (``Dense_0/kernel``), as numpy copies.

    >>> get_arrays({"Dense_0": {"kernel": jnp.ones((2, 3)), "bias": jnp.zeros(3)}})
    Arrays(Dense_0/bias: float32[3], Dense_0/kernel: float32[2, 3])
    """
    named, _ = _flatten(tree)
    return Arrays({name: np.array(leaf, copy=True) for name, leaf in named.items()})


def set_arrays(tree: PyTree, arrays: Arrays) -> PyTree:
    """A new pytree with the structure of ``tree`` and the values of ``arrays``.

    Names, shapes and dtypes must match ``get_arrays(tree)``; leaves that were JAX arrays
    come back as JAX arrays on the same devices, other leaves (numpy arrays, Python
    numbers) as numpy arrays.

    >>> params = {"w": jnp.zeros(2)}
    >>> set_arrays(params, Arrays({"w": np.ones(2, np.float32)}))["w"].tolist()
    [1.0, 1.0]
    """
    if not isinstance(arrays, Arrays):
        raise TypeError(
            f"set_arrays takes Arrays, got {type(arrays).__name__}.\n"
            "Hint: set_arrays(params, Arrays({'Dense_0/kernel': w, ...}))"
        )
    named, treedef = _flatten(tree)
    _check_match(named, arrays)
    leaves = [_like(leaf, arrays[name]) for name, leaf in named.items()]
    return jax.tree_util.tree_unflatten(treedef, leaves)


def save_native(arrays: Arrays, path: str | Path, tree: PyTree) -> Path:
    """Write ``arrays`` (a run's ``model.npz``: ``pollinate.load_arrays``), in the structure
    of ``tree`` and checked as ``set_arrays`` checks them, as Flax's msgpack
    (``flax.serialization.to_bytes``): the file ``from_bytes(tree, data)`` reads.

    >>> import tempfile, flax.serialization
    >>> params = {"Dense_0": {"kernel": jnp.ones((2, 3))}}
    >>> path = save_native(get_arrays(params), tempfile.mkdtemp() + "/model.msgpack", params)
    >>> flax.serialization.from_bytes(params, path.read_bytes())["Dense_0"]["kernel"].shape
    (2, 3)
    """
    try:
        import flax.serialization  # the jax extra's; imported when saving, not to train
    except ImportError:
        raise ImportError(
            "save_native writes Flax's msgpack and needs flax.\nHint: pip install 'pollinate[jax]'"
        ) from None
    target = Path(path)
    target.write_bytes(flax.serialization.to_bytes(set_arrays(tree, arrays)))
    return target


def train(
    params: PyTree,
    apply_fn: ApplyFn,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    seed: int,
    loss_fn: LossFn = default_loss,
) -> tuple[PyTree, Metrics]:
    """Minibatch training with optax; returns the new params and ``{"train_loss": ...}``.

    The optimizer starts from a fresh state, as a federated client does each round; the
    data is shuffled with ``seed`` every epoch. ``train_loss`` is the mean over the last
    epoch. ``apply_fn``, ``loss_fn`` and ``optimizer`` key the compiled step: pass the same
    objects on every call (not a new lambda or ``optax.adam(...)`` each time) to compile once.

    >>> tx = optax.sgd(0.1)
    >>> params, metrics = train({"w": jnp.zeros((2, 2))}, lambda p, x: x @ p["w"],
    ...     np.eye(2), np.array([0, 1]), optimizer=tx, epochs=2, batch_size=2, seed=0)
    >>> metrics["train_loss"] < 0.69
    True
    """
    x, y = _check_data(x, y, batch_size)
    integer("epochs", epochs, minimum=1, hint="epochs=1")
    opt_state = _init_state(params, optimizer)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        sums = []
        for xb, yb, mask in _batches(x, y, batch_size, rng.permutation(len(x))):
            params, opt_state, loss_sum = _train_step(
                params, opt_state, xb, yb, mask, apply_fn, loss_fn, optimizer
            )
            sums.append(loss_sum)
    return params, {"train_loss": sum(float(s) for s in sums) / len(x)}


def evaluate(
    params: Any,
    apply_fn: ApplyFn,
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    loss_fn: LossFn = default_loss,
    batch_size: int = 256,
) -> tuple[float, int, Metrics]:
    """Mean loss, number of examples and metrics, scored in padded batches like ``train``.

    The metrics hold ``accuracy`` when ``y`` holds integer class labels and the outputs one
    score per class (the argmax is the prediction); otherwise they are empty.

    >>> evaluate({"w": jnp.eye(2)}, lambda p, x: x @ p["w"], np.eye(2), np.array([0, 1]))[1:]
    (2, {'accuracy': 1.0})
    """
    x, y = _check_data(x, y, batch_size)
    sums = [
        _eval_step(params, xb, yb, mask, apply_fn, loss_fn)
        for xb, yb, mask in _batches(x, y, batch_size, np.arange(len(x)))
    ]
    loss = sum(float(loss_sum) for loss_sum, _ in sums) / len(x)
    if sums[0][1] is None:
        return loss, len(x), {}
    return loss, len(x), {"accuracy": sum(int(c) for _, c in sums) / len(x)}


class JaxClient(Client):
    """A client for a JAX model: ``fit`` runs ``train``, ``evaluate`` runs ``evaluate``.

    ``params`` is a template (any pytree with the model's structure, shapes and dtypes);
    the global arrays are put into it with ``set_arrays``. Each round shuffles with
    ``seed + config["round"]`` when the server sends a round, so rounds differ.

    >>> def client_fn(context):
    ...     return JaxClient(params, apply, (x_tr, y_tr), (x_val, y_val),
    ...                      optimizer=TX, epochs=1, batch_size=32, seed=context.partition_id)
    """

    def __init__(
        self,
        params: Any,
        apply_fn: ApplyFn,
        train_data: tuple[npt.ArrayLike, npt.ArrayLike],
        val_data: tuple[npt.ArrayLike, npt.ArrayLike],
        *,
        optimizer: optax.GradientTransformation,
        epochs: int,
        batch_size: int,
        seed: int = 0,
        loss_fn: LossFn = default_loss,
    ) -> None:
        self.params, self.apply_fn, self.loss_fn = params, apply_fn, loss_fn
        self.x_train, self.y_train = (np.asarray(a) for a in train_data)
        self.x_val, self.y_val = (np.asarray(a) for a in val_data)
        self.optimizer, self.epochs, self.batch_size = optimizer, epochs, batch_size
        self.seed = seed

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        params, metrics = train(
            set_arrays(self.params, arrays),
            self.apply_fn,
            self.x_train,
            self.y_train,
            optimizer=self.optimizer,
            epochs=self.epochs,
            batch_size=self.batch_size,
            seed=self.seed + int(config.get("round", 0)),
            loss_fn=self.loss_fn,
        )
        return get_arrays(params), len(self.x_train), metrics

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        params = set_arrays(self.params, arrays)
        return evaluate(params, self.apply_fn, self.x_val, self.y_val, loss_fn=self.loss_fn)


@partial(jax.jit, static_argnames="optimizer")
def _init_state(params: Any, optimizer: optax.GradientTransformation) -> Any:
    """The optimizer's fresh state: one compiled call, not one eager op per leaf."""
    return optimizer.init(params)


@partial(jax.jit, static_argnames=("apply_fn", "loss_fn", "optimizer"))
def _train_step(
    params: Any,
    opt_state: Any,
    x: jax.Array,
    y: jax.Array,
    mask: jax.Array,
    apply_fn: ApplyFn,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
) -> tuple[Any, Any, jax.Array]:
    """One optax step on the batch's real (unmasked) examples; returns their loss sum."""

    def mean_loss(p: Any) -> jax.Array:
        return jnp.sum(loss_fn(apply_fn(p, x), y) * mask) / jnp.sum(mask)

    loss, grads = jax.value_and_grad(mean_loss)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss * jnp.sum(mask)


@partial(jax.jit, static_argnames=("apply_fn", "loss_fn"))
def _eval_step(
    params: Any, x: jax.Array, y: jax.Array, mask: jax.Array, apply_fn: ApplyFn, loss_fn: LossFn
) -> tuple[jax.Array, jax.Array | None]:
    """The batch's loss sum, and its number of correct argmax predictions if classifying."""
    outputs = apply_fn(params, x)
    loss_sum = jnp.sum(loss_fn(outputs, y) * mask)
    # Shapes and dtypes are static under jit, so this test costs nothing at run time.
    if outputs.ndim != y.ndim + 1 or not jnp.issubdtype(y.dtype, jnp.integer):
        return loss_sum, None
    return loss_sum, jnp.sum((jnp.argmax(outputs, axis=-1) == y) * mask)


def _batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, order: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Batches in ``order``, the last padded to ``batch_size`` (mask 0) to keep one shape."""
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        mask = np.zeros(batch_size, np.float32)
        mask[: len(idx)] = 1.0
        idx = np.pad(idx, (0, batch_size - len(idx)), constant_values=idx[0])
        yield x[idx], y[idx], mask


def _check_data(x: npt.ArrayLike, y: npt.ArrayLike, batch_size: int) -> tuple[np.ndarray, ...]:
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
        raise ValueError(
            f"x and y must hold the same number (> 0) of examples, got x of shape {x.shape} "
            f"and y of shape {y.shape}.\nHint: one row of x per label in y."
        )
    integer("batch_size", batch_size, minimum=1, hint="batch_size=32")
    return x, y


def _flatten(tree: Any) -> tuple[dict[str, Any], Any]:
    """The leaves by name, in pytree order, and the treedef to rebuild the tree."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    named: dict[str, Any] = {}
    for path, leaf in leaves:
        name = _name(path)
        if name in named:
            raise ValueError(
                f"two arrays of the pytree are both named {name!r}; names join the key path "
                "with '/', so a key holding '/' or a key 1 beside a key '1' clash.\n"
                "Hint: rename the keys so that each path reads differently."
            )
        named[name] = leaf
    return named, treedef


def _name(path: tuple[Any, ...]) -> str:
    parts = [_key(entry) for entry in path]
    last = path[-1] if path else None
    if len(parts) > 1 and isinstance(last, jax.tree_util.GetAttrKey) and last.name == "value":
        parts.pop()  # a box such as an NNX Variable: name the array by where the box sits
    return "/".join(parts) if parts else "0"


def _key(entry: Any) -> str:
    if isinstance(entry, jax.tree_util.DictKey):
        return str(entry.key)
    if isinstance(entry, jax.tree_util.SequenceKey):
        return str(entry.idx)
    if isinstance(entry, jax.tree_util.GetAttrKey):
        return entry.name
    if isinstance(entry, jax.tree_util.FlattenedIndexKey):
        return str(entry.key)
    return str(entry)


def _check_match(named: dict[str, Any], arrays: Arrays) -> None:
    missing = [n for n in named if n not in arrays]
    extra = [n for n in arrays if n not in named]
    if missing or extra:
        raise ValueError(
            f"the arrays do not fit the pytree: missing {missing[:5]}, unexpected "
            f"{extra[:5]}.\nHint: the arrays must come from get_arrays of a pytree with the "
            "same structure (the same model, built the same way)."
        )
    for name, leaf in named.items():
        want, got = _spec(leaf), (arrays[name].shape, arrays[name].dtype)
        if want != got:
            raise ValueError(
                f"array {name!r} has shape {got[0]} and dtype {got[1]}, but the pytree "
                f"holds shape {want[0]} and dtype {want[1]}.\nHint: the arrays come from a "
                "different model version or were cast; build both from the same model."
            )


def _spec(leaf: Any) -> tuple[tuple[int, ...], np.dtype[Any]]:
    if isinstance(leaf, jax.Array | np.ndarray | np.generic):
        return tuple(leaf.shape), np.dtype(leaf.dtype)
    array = np.asarray(leaf)
    return array.shape, array.dtype


def _like(leaf: Any, value: np.ndarray) -> Any:
    """``value`` in the kind of container ``leaf`` was: a JAX array placed like it, or numpy."""
    # Our own copy: on CPU, JAX may keep using an aligned numpy buffer instead of copying it
    # (even with may_alias=False, in jax 0.10), and the caller may change theirs later.
    copy = np.array(value, copy=True)
    if not isinstance(leaf, jax.Array):
        return copy
    return jax.device_put(copy, leaf.sharding if leaf.committed else None)
