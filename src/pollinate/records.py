"""Plain data that travels between hub and nodes: Arrays, Metrics, Config, Message.

No I/O lives here; ``pollinate.wire`` turns a Message into bytes and back.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from pollinate.checks import integer
from pollinate.npz import MAX_ARRAYS, MAX_BYTES, read_npz, write_npz
from pollinate.text import cap, inert, name_problem

Scalar = bool | int | float | str | bytes
"""A value allowed in Config and Metrics."""

Config = dict[str, Scalar]
"""Settings sent to a client with an instruction (learning rate, local epochs, ...)."""

Metrics = dict[str, Scalar]
"""Numbers a client reports with a reply (accuracy, loss, ...)."""


class MessageKind(StrEnum):
    """What an instruction asks of a node; its reply has the same kind. A ``str``, so it
    travels and compares as its value (``MessageKind.FIT == "fit"``)."""

    FIT = "fit"
    EVALUATE = "evaluate"
    GET_ARRAYS = "get_arrays"
    SECAGG = "secagg"
    """A stage of secure aggregation (``pollinate.secagg``); the fit runs inside one."""


MESSAGE_KINDS: tuple[str, ...] = tuple(MessageKind)

_SCALAR_TYPES = (bool, int, float, str, bytes, np.integer, np.floating, np.bool_)

ARRAY_DTYPES: tuple[str, ...] = (
    *("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    *("float16", "float32", "float64", "complex64", "complex128"),
)
"""The dtypes an array may have: numbers with a fixed size that every node can read."""


class Arrays(Mapping[str, np.ndarray]):
    """An ordered mapping from name to numpy array: a model's weights or an update.

    >>> a = Arrays({"w": np.zeros((2, 3)), "b": np.zeros(3)})
    >>> list(a), a.nbytes
    (['w', 'b'], 72)
    >>> Arrays.from_list([np.ones(2)]).names
    ['0']
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping[str, npt.ArrayLike] | None = None) -> None:
        items = {} if data is None else data
        if not isinstance(items, Mapping):
            raise TypeError(
                f"Arrays takes a mapping of name -> array, got {type(items).__name__}.\n"
                "Hint: Arrays({'fc.weight': w}) or Arrays.from_list([w, b])"
            )
        self._data: dict[str, np.ndarray] = {}
        for name, value in items.items():
            if not isinstance(name, str):
                raise TypeError(f"Arrays names must be str, got {name!r}")
            array = np.asarray(value)
            if array.dtype.name not in ARRAY_DTYPES or array.dtype.kind not in "biufc":
                raise TypeError(
                    f"array {name!r} has dtype {array.dtype}, which cannot travel; allowed "
                    f"dtypes are {', '.join(ARRAY_DTYPES)}.\nHint: convert it first, e.g. "
                    "array.astype(np.float32)"
                )
            self._data[name] = array

    @classmethod
    def from_list(
        cls, arrays: Sequence[npt.ArrayLike], names: Sequence[str] | None = None
    ) -> Arrays:
        """Name a list of arrays, by ``names`` or by position ("0", "1", ...)."""
        keys = list(names) if names is not None else [str(i) for i in range(len(arrays))]
        if len(keys) != len(arrays):
            raise ValueError(f"got {len(arrays)} arrays but {len(keys)} names")
        return cls(dict(zip(keys, arrays, strict=True)))

    def to_list(self) -> list[np.ndarray]:
        return list(self._data.values())

    def copy(self) -> Self:
        """Arrays of their own, with the same names and values: for a client, which may
        train the arrays it is given in place (``Client.fit``).

        >>> a = Arrays({"w": np.zeros(2)})
        >>> b = a.copy()
        >>> b["w"][0] = 1.0
        >>> a["w"].tolist(), b["w"].tolist()
        ([0.0, 0.0], [1.0, 0.0])
        """
        return type(self)({name: array.copy() for name, array in self._data.items()})

    def save(self, path: str | Path) -> Path:
        """Write the arrays to ``path`` as NumPy's ``.npz`` (docs/artifacts.md), whole or
        not at all; returns the path."""
        return write_npz(self._data, path)

    @classmethod
    def load(
        cls, path: str | Path, *, max_bytes: int = MAX_BYTES, max_arrays: int = MAX_ARRAYS
    ) -> Arrays:
        """The arrays of the ``.npz`` file at ``path``, in its order. The file may come from
        anyone: ValueError if it is not an ``.npz`` of plain arrays, or holds more than
        ``max_bytes`` of arrays or more than ``max_arrays`` arrays (nothing is unpickled).

        >>> import tempfile
        >>> path = Arrays({"w": np.eye(2)}).save(tempfile.mkdtemp() + "/model.npz")
        >>> Arrays.load(path)["w"].tolist()
        [[1.0, 0.0], [0.0, 1.0]]
        """
        return cls(read_npz(path, ARRAY_DTYPES, max_bytes=max_bytes, max_arrays=max_arrays))

    @property
    def names(self) -> list[str]:
        return list(self._data)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._data.values())

    def __getitem__(self, name: str) -> np.ndarray:
        return self._data[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        parts = [f"{k}: {v.dtype}{list(v.shape)}" for k, v in self._data.items()]
        shown = ", ".join(parts[:4]) + (f", ... ({len(parts)} arrays)" if len(parts) > 4 else "")
        return f"Arrays({shown})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Arrays) or self.names != other.names:
            return False
        return all(
            a.dtype == b.dtype
            and a.shape == b.shape
            and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
            for a, b in zip(self._data.values(), other._data.values(), strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


def same_arrays(before: Mapping[str, np.ndarray], after: Mapping[str, np.ndarray]) -> bool:
    """Whether ``after`` holds ``before``'s very arrays (each shares its memory with the one
    of its name): a helper that compares arrays before and after training would see no
    change from a client that trained the arrays it was given in place (``Client.fit``
    allows it). Some shared is fine: a frozen layer returned as it came did not change.

    >>> a = Arrays({"w": np.zeros(2), "b": np.zeros(1)})
    >>> same_arrays(a, a), same_arrays(a, a.copy()), same_arrays(a, {"w": a["w"], "b": 1})
    (True, False, False)
    """
    return bool(after) and all(
        name in before and np.shares_memory(before[name], array) for name, array in after.items()
    )


def check_scalars(values: Mapping[str, Any], what: str) -> dict[str, Scalar]:
    """Return ``values`` as a plain dict of Scalars, or raise TypeError naming the bad entry.

    Names are short and plain (``pollinate.text.name_problem``), or ValueError: a name is
    never cut, so two names cannot collide. A str value longer than ``MAX_TEXT`` is cut and
    says its length (``pollinate.text.cap``), wherever the dict came from.
    """
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a dict of str -> scalar, got {type(values).__name__}")
    out: dict[str, Scalar] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not isinstance(value, _SCALAR_TYPES):
            raise TypeError(
                f"{what} entry {inert(repr(key), 80)}: {inert(repr(value), 80)} is not "
                "allowed; keys are str and values are bool, int, float, str or bytes.\n"
                "Hint: convert arrays with float(x) or send them as Arrays."
            )
        problem = name_problem(key)
        if problem is not None:
            raise ValueError(
                f"{what} name {inert(repr(key), 80)} {problem}.\nHint: name metrics and "
                "config keys with a few plain words, e.g. 'val_accuracy'."
            )
        plain = value.item() if isinstance(value, np.generic) else value
        out[key] = cap(plain) if isinstance(plain, str) else plain
    return out


@dataclass(frozen=True, slots=True)
class Message:
    """One instruction from hub to node, or one reply back.

    An instruction carries ``arrays`` (the global model) and ``config``; its reply carries the
    same ``kind`` and ``task_id``, plus ``arrays`` (fit), ``loss`` (evaluate),
    ``num_examples``, ``metrics``, or ``error`` if the client failed. ``lost`` marks a reply
    the hub made itself for a task its node will not answer (gone silent, revoked); it never
    travels on the wire, so no node can claim it.

    Its text is bounded whoever built it (``pollinate.text``): ``error`` is kept as one line
    of at most ``MAX_TEXT`` characters, str config and metric values are cut at ``MAX_TEXT``
    (both saying their original length), and a config or metric name longer than
    ``MAX_NAME`` is refused.
    """

    kind: MessageKind
    task_id: str = ""
    run_id: str = ""
    round: int = 0
    node_id: int = 0
    is_reply: bool = False
    arrays: Arrays = field(default_factory=Arrays)
    config: Config = field(default_factory=dict)
    metrics: Metrics = field(default_factory=dict)
    num_examples: int = 0
    loss: float | None = None
    error: str | None = None
    lost: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MESSAGE_KINDS:
            raise ValueError(f"Message kind {self.kind!r} is not one of {MESSAGE_KINDS}")
        object.__setattr__(self, "kind", MessageKind(self.kind))
        for name in ("round", "node_id", "num_examples"):
            hint = f"Message(kind, {name}=1): round, node id and example count are counts"
            object.__setattr__(
                self, name, integer(f"Message.{name}", getattr(self, name), minimum=0, hint=hint)
            )
        # Catch mistakes where they are made, not later when the message is encoded.
        if not isinstance(self.arrays, Arrays):
            object.__setattr__(self, "arrays", Arrays(self.arrays))
        object.__setattr__(self, "config", check_scalars(self.config, "Message.config"))
        object.__setattr__(self, "metrics", check_scalars(self.metrics, "Message.metrics"))
        if self.error is not None:
            if not isinstance(self.error, str):
                raise TypeError(f"Message.error must be a str or None, got {self.error!r}")
            # a client's words: kept as one line of at most MAX_TEXT characters (text.py)
            object.__setattr__(self, "error", inert(self.error))

    def reply(self, **fields: Any) -> Message:
        """A reply to this instruction, with the same kind, task, run, round and node."""
        return Message(
            kind=self.kind,
            task_id=self.task_id,
            run_id=self.run_id,
            round=self.round,
            node_id=self.node_id,
            is_reply=True,
            **fields,
        )
