"""What a run needs to resume after its last completed round, and its bytes on disk.

A run is a function of its seed, its app and what happened in the rounds so far, so a
checkpoint holds only what cannot be recomputed: the global arrays, the strategy's state
(FedAvgM's momentum, FedAdam's moments) and the history. The sampler needs nothing: round
``r`` samples with an RNG seeded by ``(seed, r)``, so a resumed round draws what the
uninterrupted one would have.

On disk a checkpoint is one wire message (``pollinate.wire``: checked on the way in, no
pickle) whose arrays are the model's under ``model/`` and the strategy's under ``strategy/``;
the history is kept beside it by whoever stores the checkpoint (the hub keeps it in its log).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pollinate.wire as wire  # the package, not `from pollinate import`: no cycle via the root
from pollinate.errors import WireError
from pollinate.loop.history import History
from pollinate.records import Arrays, Message, MessageKind

_MODEL, _STRATEGY = "model/", "strategy/"


@dataclass(frozen=True)
class Checkpoint:
    """The state of a run at the end of ``round`` (0: the initial arrays are settled)."""

    round: int
    arrays: Arrays
    strategy_state: Arrays = field(default_factory=Arrays)
    history: History = field(default_factory=History)

    def __repr__(self) -> str:
        return (
            f"Checkpoint(round={self.round}, arrays={len(self.arrays)} arrays, "
            f"strategy_state={len(self.strategy_state)} arrays)"
        )


def iter_encode(checkpoint: Checkpoint, chunk_size: int = 4 << 20) -> Iterator[bytes | memoryview]:
    """The checkpoint's arrays as wire chunks (the history is not part of them)."""
    arrays = {f"{_MODEL}{k}": v for k, v in checkpoint.arrays.items()}
    arrays.update({f"{_STRATEGY}{k}": v for k, v in checkpoint.strategy_state.items()})
    kind = MessageKind.GET_ARRAYS
    message = Message(kind, round=checkpoint.round, is_reply=True, arrays=Arrays(arrays))
    return wire.iter_encode(message, chunk_size)


def decode(data: bytes | memoryview, history: History | None = None) -> Checkpoint:
    """The checkpoint ``iter_encode`` wrote; WireError if the bytes are not one."""
    # the hub's own file, as large as the model and the strategy's state together (FedAdam's
    # is twice the model): bounded by its size, not by the limits for untrusted messages
    size = len(data)
    message = wire.decode(data, wire.Limits(size, size, size))
    names = list(message.arrays)
    if message.kind != "get_arrays" or any(not n.startswith((_MODEL, _STRATEGY)) for n in names):
        raise WireError("these bytes are a wire message but not a checkpoint")
    model = {n[len(_MODEL) :]: a for n, a in message.arrays.items() if n.startswith(_MODEL)}
    state = {n[len(_STRATEGY) :]: a for n, a in message.arrays.items() if n.startswith(_STRATEGY)}
    return Checkpoint(message.round, Arrays(model), Arrays(state), history or History())
