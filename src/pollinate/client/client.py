"""The client API: what a user writes to train and evaluate on one site's data.

Two shapes are accepted:

- ``Client``: arrays arrive as ``Arrays`` (name -> numpy array), the native shape.
- ``NumPyClient``: the shape Flower users already have (``get_parameters``, ``fit`` and
  ``evaluate`` over lists of numpy arrays). Any object with those three methods works, so
  migrating from Flower is an import change.

``handle`` runs one instruction against a client and turns the outcome, including a raised
exception, into a reply Message. It never raises for the client's mistakes.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from pollinate.checks import is_number
from pollinate.errors import ClientError
from pollinate.records import Arrays, Config, Message, Metrics, check_scalars
from pollinate.text import MARK_ROOM, MAX_TEXT, inert


@dataclass(frozen=True, slots=True)
class Context:
    """Who and where a client is: given to ``client_fn`` for every client it creates.

    ``partition_id`` picks this client's share of the data in simulation; in deployment it
    comes from the node's config. ``run_config`` holds the app's config with overrides.
    """

    node_id: int
    partition_id: int
    num_partitions: int
    node_config: Config = field(default_factory=dict)
    run_config: Config = field(default_factory=dict)


class Client:
    """Base class of a native client; override ``fit`` and ``evaluate`` (and ``get_arrays``
    if the server side has no initial model).

    >>> class Echo(Client):
    ...     def fit(self, arrays, config):
    ...         return arrays, 1, {}
    """

    def get_arrays(self, config: Config) -> Arrays:
        raise ClientError(
            f"{type(self).__name__} does not implement get_arrays, and the server side gave "
            "no initial arrays.\nHint: set ServerApp(initial_arrays=...) or implement "
            "get_arrays(config) on the client."
        )

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        """Train on local data starting from ``arrays``; return new arrays, examples, metrics.

        ``arrays`` are this client's own (a copy per virtual client in simulation, the task
        the node decoded in deployment): a client may train them in place and return them,
        which spares a model-sized allocation each round (on some virtual machines a fresh
        40 MB array costs more than moving it: ``recycle.py``). Copy first what you still
        need as received (``arrays.copy()``), e.g. for ``pollinate.dp.clip_update``."""
        raise ClientError(f"{type(self).__name__} does not implement fit(arrays, config)")

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        """Evaluate ``arrays`` on local data; return loss, number of examples, metrics."""
        raise ClientError(f"{type(self).__name__} does not implement evaluate(arrays, config)")


class NumPyClient:
    """A client in the shape Flower users already have, over lists of numpy arrays."""

    def get_parameters(self, config: Config) -> list[np.ndarray]:
        raise ClientError(f"{type(self).__name__} does not implement get_parameters(config)")

    def fit(
        self, parameters: list[np.ndarray], config: Config
    ) -> tuple[list[np.ndarray], int, Metrics]:
        raise ClientError(f"{type(self).__name__} does not implement fit(parameters, config)")

    def evaluate(self, parameters: list[np.ndarray], config: Config) -> tuple[float, int, Metrics]:
        raise ClientError(f"{type(self).__name__} does not implement evaluate(parameters, config)")

    def to_client(self) -> Client:
        """Return a native Client that drives this one (Flower's ``.to_client()`` idiom)."""
        return _ListClient(self)


@runtime_checkable
class _ListShaped(Protocol):
    def get_parameters(self, config: Config) -> Any: ...
    def fit(self, parameters: Any, config: Config) -> Any: ...
    def evaluate(self, parameters: Any, config: Config) -> Any: ...


class _ListClient(Client):
    """Drives a list-shaped (Flower-style) client through the native interface."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def get_arrays(self, config: Config) -> Arrays:
        return Arrays.from_list(_as_list(self.inner.get_parameters(config), "get_parameters"))

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        out = _unpack(self.inner.fit(arrays.to_list(), config), "fit")
        new = _as_list(out[0], "fit")
        if len(new) != len(arrays):
            raise ClientError(
                f"fit returned {len(new)} arrays but received {len(arrays)}: a list-shaped "
                "client must return one array per parameter, in the same order."
            )
        return Arrays.from_list(new, arrays.names), out[1], out[2]

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        loss, n, metrics = _unpack(self.inner.evaluate(arrays.to_list(), config), "evaluate")
        return loss, n, metrics


def to_client(obj: object) -> Client:
    """Accept a native Client or any object with Flower's NumPyClient methods."""
    if isinstance(obj, Client):
        return obj
    if isinstance(obj, _ListShaped):
        return _ListClient(obj)
    raise ClientError(
        f"client_fn returned {type(obj).__name__}, which is not a client.\n"
        "Hint: return a pollinate.Client subclass, or an object with get_parameters, fit "
        "and evaluate (Flower's NumPyClient shape)."
    )


ClientFn = Callable[[Context], Any]
"""Creates the client for one node / virtual client from its Context."""


def handle(client_fn: ClientFn, context: Context, instruction: Message) -> Message:
    """Run one instruction on a fresh client; the reply carries the result or the error."""
    try:
        client = to_client(client_fn(context))
        return _run(client, instruction)
    except Exception as exc:  # a user's client may raise anything: it fails this task only
        return instruction.reply(error=_error(exc))


def _error(exc: Exception) -> str:
    """``Type: message (at file:line)`` in at most ``MAX_TEXT`` characters: a long message is
    cut (saying its length) so that the type and the place still fit."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    head, tail = f"{type(exc).__name__}: ", f" (at {where.filename}:{where.lineno})"
    room = max(MAX_TEXT - len(head) - len(tail) - MARK_ROOM, MAX_TEXT // 4)
    return inert(head + inert(_text(exc), room) + tail)


def _text(exc: Exception) -> str:
    try:
        return str(exc)
    except Exception:  # a user's exception class may fail even at this
        return "<str() of the exception failed>"


def _run(client: Client, instruction: Message) -> Message:
    config = instruction.config
    if instruction.kind == "get_arrays":
        return instruction.reply(arrays=_as_arrays(client.get_arrays(config), "get_arrays"))
    if instruction.kind == "fit":
        arrays, n, metrics = _unpack(client.fit(instruction.arrays, config), "fit")
        arrays = _cast_like(_as_arrays(arrays, "fit", instruction.arrays), instruction.arrays)
        return instruction.reply(arrays=arrays, num_examples=n, metrics=metrics)
    if instruction.kind != "evaluate":
        raise ClientError(
            f"a {instruction.kind!r} task reached the client itself; the engine (simulation "
            "or node) answers those.\nHint: upgrade pollinate on this node"
        )
    loss, n, metrics = _unpack(client.evaluate(instruction.arrays, config), "evaluate")
    if not is_number(loss):
        raise ClientError(f"evaluate returned loss {loss!r}; expected a float")
    return instruction.reply(loss=float(loss), num_examples=n, metrics=metrics)


def _unpack(result: Any, method: str) -> tuple[Any, int, Metrics]:
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise ClientError(
            f"{method} returned {type(result).__name__}; expected a tuple of 3 "
            f"({'arrays' if method == 'fit' else 'loss'}, num_examples, metrics)."
        )
    first, n, metrics = result
    if not is_number(n) or not isinstance(n, int | np.integer) or n < 0:
        raise ClientError(f"{method} returned num_examples={n!r}; expected an int >= 0")
    return first, int(n), check_scalars({} if metrics is None else metrics, f"{method} metrics")


def _as_list(value: Any, method: str) -> list[np.ndarray]:
    if isinstance(value, Arrays):
        return value.to_list()
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise ClientError(f"{method} returned {type(value).__name__}; expected a list of arrays")
    return [np.asarray(v) for v in value]


def _as_arrays(value: Any, method: str, like: Arrays | None = None) -> Arrays:
    if isinstance(value, Arrays):
        return value
    if isinstance(value, dict):
        return Arrays(value)
    items = _as_list(value, method)
    names = like.names if like is not None and len(like) == len(items) else None
    return Arrays.from_list(items, names)


def _cast_like(arrays: Arrays, like: Arrays) -> Arrays:
    """Cast float results back to the global model's float dtype (numpy math often upcasts
    float32 to float64); other mismatches are left for the hub to reject with a reason."""
    out = {}
    for name, a in arrays.items():
        ref = like[name].dtype if name in like else a.dtype
        out[name] = a.astype(ref) if a.dtype != ref and a.dtype.kind == ref.kind == "f" else a
    return Arrays(out)
