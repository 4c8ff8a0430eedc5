"""Flower's record types, as thin views over pollinate's ``Arrays``, ``Config`` and ``Metrics``.

Flower's Message API passes a ``RecordDict`` of named records: an ``ArrayRecord`` (the
model), a ``MetricRecord`` (numbers a client reports) and a ``ConfigRecord`` (what the
server asks for). Here each is the pollinate value it stands for: an ``ArrayRecord`` is an
``Arrays`` (ordered name -> numpy array) with Flower's conversions, the other two are dicts
of scalars. What a Flower app builds from them travels as pollinate's own records.

>>> import numpy as np
>>> record = ArrayRecord([np.zeros(2), np.ones(1)])
>>> record.names, [a.tolist() for a in record.to_numpy_ndarrays()]
(['0', '1'], [[0.0, 0.0], [1.0]])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pollinate.records import Arrays, Config, Metrics, Scalar

NDArrays = list[np.ndarray]
Parameters = Arrays
"""Flower 1.x's ``Parameters``: here a strategy's initial model is simply ``Arrays``."""


class ArrayRecord(Arrays):
    """Flower's ``ArrayRecord``: the model as ``Arrays``.

    ``ArrayRecord(list_of_ndarrays)`` names them "0", "1", ... (as Flower does);
    ``ArrayRecord(state_dict)`` takes a PyTorch ``state_dict`` (or any mapping of name to
    array) and keeps its names, so ``to_torch_state_dict()`` gives it back.
    """

    __slots__ = ()

    def __init__(self, arrays: Sequence[Any] | Mapping[str, Any] | None = None) -> None:
        if arrays is None or isinstance(arrays, Mapping):
            super().__init__({k: _numpy(v) for k, v in (arrays or {}).items()})
            return
        if isinstance(arrays, str | bytes) or not isinstance(arrays, Sequence):
            raise TypeError(
                f"ArrayRecord takes a list of numpy arrays or a state_dict, got "
                f"{type(arrays).__name__}.\nHint: ArrayRecord([w, b]) or "
                "ArrayRecord(model.state_dict())"
            )
        super().__init__({str(i): _numpy(v) for i, v in enumerate(arrays)})

    @classmethod
    def from_numpy_ndarrays(cls, ndarrays: Sequence[Any]) -> ArrayRecord:
        return cls(list(ndarrays))

    @classmethod
    def from_torch_state_dict(cls, state_dict: Mapping[str, Any]) -> ArrayRecord:
        return cls(state_dict)

    def to_numpy_ndarrays(self) -> NDArrays:
        return self.to_list()

    def to_torch_state_dict(self) -> Any:
        """An ``OrderedDict`` of ``torch.Tensor`` by name, for ``model.load_state_dict``."""
        from collections import OrderedDict

        import torch

        return OrderedDict((k, torch.from_numpy(np.array(v))) for k, v in self.items())


class MetricRecord(dict[str, Scalar]):
    """Flower's ``MetricRecord``: numbers a client reports (a dict of scalars)."""


class ConfigRecord(dict[str, Scalar]):
    """Flower's ``ConfigRecord``: values the server sends (a dict of scalars)."""


class RecordDict(dict[str, Any]):
    """Flower's ``RecordDict``: named records, e.g. ``{"arrays": ..., "metrics": ...}``."""

    @property
    def array_records(self) -> dict[str, Arrays]:
        return {k: v for k, v in self.items() if isinstance(v, Arrays)}

    @property
    def metric_records(self) -> dict[str, MetricRecord]:
        return {k: v for k, v in self.items() if isinstance(v, MetricRecord)}

    @property
    def config_records(self) -> dict[str, ConfigRecord]:
        return {k: v for k, v in self.items() if isinstance(v, ConfigRecord)}


@dataclass(frozen=True)
class Metadata:
    """What a Flower ``Message`` says about itself: its type ("train", "evaluate") and the
    server round it belongs to (Flower's ``group_id``)."""

    message_type: str
    group_id: str = ""


@dataclass
class Message:
    """Flower's ``Message``: ``content`` (a ``RecordDict``) and its ``metadata``.

    A reply is ``Message(content=..., reply_to=msg)``, as in Flower.
    """

    content: RecordDict = field(default_factory=RecordDict)
    reply_to: Message | None = None
    metadata: Metadata = field(default_factory=lambda: Metadata(""))

    def __post_init__(self) -> None:
        if not isinstance(self.content, Mapping):
            raise TypeError(
                f"Message content must be a RecordDict, got {type(self.content).__name__}\n"
                'Hint: Message(content=RecordDict({"arrays": ..., "metrics": ...}), reply_to=msg)'
            )
        if not isinstance(self.content, RecordDict):
            self.content = RecordDict(self.content)
        if self.reply_to is not None:
            self.metadata = self.reply_to.metadata

    def has_content(self) -> bool:
        return bool(self.content)


def ndarrays_to_parameters(ndarrays: Sequence[Any]) -> Parameters:
    """Flower 1.x's ``ndarrays_to_parameters``: a list of arrays as a strategy's model."""
    return Arrays.from_list([_numpy(a) for a in ndarrays])


def parameters_to_ndarrays(parameters: Parameters) -> NDArrays:
    return parameters.to_list()


def metric_values(metrics: Mapping[str, Any]) -> Metrics:
    """A client's metric record as pollinate Metrics: numpy scalars as Python numbers."""
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in metrics.items()}


def config_values(config: Mapping[str, Any]) -> Config:
    return metric_values(config)


def _numpy(value: Any) -> np.ndarray:
    """A numpy array from a numpy array, a torch tensor (detached, on the CPU) or a list."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)
