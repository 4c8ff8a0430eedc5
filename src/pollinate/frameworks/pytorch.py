"""PyTorch adapter: an ``nn.Module``'s state as ``Arrays`` and back, and a ready training loop.

Federating a module needs three changes to a PyTorch script: read its weights with
``get_arrays``, load the global model with ``set_arrays``, and train with ``train`` (or your
own loop). ``TorchClient`` does all three::

    from pollinate.frameworks.pytorch import TorchClient

    def client_fn(context):
        train_loader, val_loader = load_partition(context.partition_id)
        return TorchClient(Net, train_loader, val_loader, epochs=2, lr=0.05)

What travels is the module's whole ``state_dict()``: parameters and buffers (BatchNorm's
running mean and variance and its int64 ``num_batches_tracked``), named by their state-dict
keys, in order, with their dtypes. The hub averages integer buffers like the rest and rounds
them to the nearest integer, so a BatchNorm model federates with FedAvg unchanged.

>>> import torch
>>> net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
>>> arrays = get_arrays(net)
>>> arrays["1.num_batches_tracked"].dtype
dtype('int64')
>>> set_arrays(net, arrays)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pollinate.checks import integer
from pollinate.client.client import Client
from pollinate.client.fedprox import proximal_mu, proximal_term
from pollinate.frameworks.shapes import mismatch
from pollinate.records import Arrays, Config, Metrics

__all__ = ["TorchClient", "evaluate", "get_arrays", "save_native", "set_arrays", "train"]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps (outputs, targets) to the batch's mean loss, like ``nn.CrossEntropyLoss()``."""

OptimizerFn = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
"""Makes an optimizer for a module's parameters, e.g. ``lambda p: torch.optim.Adam(p, 1e-3)``."""

# The tensor dtypes numpy holds, all of which travel (records.ARRAY_DTYPES).
_NUMPY_DTYPES = frozenset(
    {
        *(torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64),
        *(torch.int8, torch.int16, torch.int32, torch.int64),
        *(torch.float16, torch.float32, torch.float64, torch.complex64, torch.complex128),
    }
)


def get_arrays(module: nn.Module) -> Arrays:
    """The module's ``state_dict()`` as Arrays: parameters and buffers, dtypes kept.

    Each array is a CPU copy, so it stays valid while the module trains on, on any device.
    Raises TypeError for a dtype numpy cannot hold (bfloat16, float8).
    """
    return Arrays({name: _to_numpy(name, value) for name, value in module.state_dict().items()})


def set_arrays(module: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Load ``arrays`` into ``module`` in place, on the module's own device and dtypes.

    Names and shapes are checked first: arrays from another model version raise ValueError
    naming each missing, unexpected and mis-shaped entry, and leave the module unchanged.
    """
    state = module.state_dict()
    problem = mismatch({name: tuple(t.shape) for name, t in state.items()}, arrays)
    if problem:
        raise ValueError(
            f"set_arrays: the arrays do not fit this {type(module).__name__} ({problem}): "
            "they come from another model version.\nHint: build the module the server's "
            "initial arrays came from (same class and settings), and run the same app "
            "version on every node."
        )
    module.load_state_dict({name: _to_tensor(arrays[name]) for name in state})


def save_native(arrays: Mapping[str, np.ndarray], path: str | Path, module: nn.Module) -> Path:
    """Load ``arrays`` (a run's ``model.npz``: ``pollinate.load_arrays``) into ``module``,
    checked as ``set_arrays`` checks them, and save its ``state_dict()`` with ``torch.save``:
    the ``.pt`` file ``module.load_state_dict(torch.load(path, weights_only=True))`` reads.

    >>> import tempfile
    >>> net = torch.nn.Linear(2, 1)
    >>> path = save_native(get_arrays(net), tempfile.mkdtemp() + "/model.pt", net)
    >>> list(torch.load(path, weights_only=True))
    ['weight', 'bias']
    """
    set_arrays(module, arrays)
    torch.save(module.state_dict(), path)
    return Path(path)


def train(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float = 0.01,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "cpu",
    proximal_mu: float = 0.0,
) -> Metrics:
    """Train ``module`` in place for ``epochs`` passes over ``(inputs, targets)`` batches.

    The optimizer defaults to plain SGD at ``lr`` (``lr`` is ignored when you pass one),
    the loss to cross-entropy. With ``proximal_mu > 0`` the loss gains FedProx's
    ``(mu / 2) ||w - w_t||^2``, where ``w_t`` are the weights the module holds now (the global
    model, after ``set_arrays``). Returns the last epoch's ``train_loss`` and, for
    classification, ``train_accuracy``.
    """
    return _train(
        module, loader, epochs, optimizer, lr, loss_fn, torch.device(device), proximal_mu
    )[0]


def evaluate(
    module: nn.Module,
    loader: Iterable[Any],
    *,
    loss_fn: LossFn | None = None,
    device: str | torch.device = "cpu",
) -> tuple[float, int, Metrics]:
    """Mean loss, number of examples and (for classification) ``accuracy`` on ``loader``,
    with the module in eval mode: the shape ``Client.evaluate`` returns."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    module.to(device).eval()
    tally = _Tally()
    with torch.no_grad():
        for batch in loader:
            x, y = _batch(batch, device)
            out = module(x)
            tally.add(loss_fn(out, y), out, y)
    if tally.examples == 0:
        raise ValueError("evaluate: the loader gave no examples.\nHint: pass a non-empty loader.")
    accuracy = tally.accuracy()
    return tally.loss(), tally.examples, {} if accuracy is None else {"accuracy": accuracy}


class TorchClient(Client):
    """A client for an ``nn.Module``: ``fit`` loads the global arrays, trains and returns the
    module's arrays with its number of training examples; ``evaluate`` scores them on
    ``val_loader``; ``get_arrays`` gives the module's initial weights.

    ``model`` is a module or a function that makes one. The settings are fixed per client
    (read them from ``context.run_config`` in ``client_fn``); FedProx's ``proximal_mu``
    comes from each round's fit config.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        train_loader: Iterable[Any],
        val_loader: Iterable[Any] | None = None,
        *,
        epochs: int = 1,
        lr: float = 0.01,
        optimizer_fn: OptimizerFn | None = None,
        loss_fn: LossFn | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.module = _as_module(model)
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.epochs = epochs
        self.lr = lr
        self.optimizer_fn = optimizer_fn
        self.loss_fn = loss_fn
        self.device = torch.device(device)

    def get_arrays(self, config: Config) -> Arrays:
        return get_arrays(self.module)

    def fit(self, arrays: Arrays, config: Config) -> tuple[Arrays, int, Metrics]:
        set_arrays(self.module, arrays)
        optimizer = self.optimizer_fn(self.module.parameters()) if self.optimizer_fn else None
        metrics, examples = _train(
            self.module,
            self.train_loader,
            self.epochs,
            optimizer,
            self.lr,
            self.loss_fn,
            self.device,
            proximal_mu(config),
        )
        return get_arrays(self.module), examples, metrics

    def evaluate(self, arrays: Arrays, config: Config) -> tuple[float, int, Metrics]:
        if self.val_loader is None:
            raise ValueError(
                "TorchClient has no val_loader, so it cannot evaluate.\nHint: pass "
                "TorchClient(model, train_loader, val_loader), or "
                "FedAvg(sampling=Sampling(fraction_evaluate=0))."
            )
        set_arrays(self.module, arrays)
        return evaluate(self.module, self.val_loader, loss_fn=self.loss_fn, device=self.device)


# --- internals ---------------------------------------------------------------------------------


@dataclass
class _Tally:
    """Running sums over batches: loss weighted by batch size, and correct predictions."""

    loss_sum: float = 0.0
    examples: int = 0
    correct: int = 0
    classified: int = 0  # examples that were classification (logits against class ids)

    def add(self, loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> None:
        n = len(y)
        self.loss_sum += float(loss.detach()) * n
        self.examples += n
        if out.ndim == 2 and y.ndim == 1 and not y.is_floating_point():
            self.correct += int((out.argmax(dim=1) == y).sum())
            self.classified += n

    def loss(self) -> float:
        return self.loss_sum / self.examples

    def accuracy(self) -> float | None:
        """None unless every batch was classification."""
        return self.correct / self.examples if self.classified == self.examples else None


def _train(
    module: nn.Module,
    loader: Iterable[Any],
    epochs: int,
    optimizer: torch.optim.Optimizer | None,
    lr: float,
    loss_fn: LossFn | None,
    device: torch.device,
    mu: float,
) -> tuple[Metrics, int]:
    """``train``, also returning the number of examples in the last epoch."""
    integer("epochs", epochs, minimum=1, hint="train(model, loader, epochs=1)")
    module.to(device).train()
    optimizer = optimizer or torch.optim.SGD(module.parameters(), lr=lr)
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    # FedProx's anchor: the weights training starts from, the round's global model
    anchor = [p.detach().clone() for p in module.parameters()] if mu > 0 else []
    tally = _Tally()
    for _ in range(epochs):
        tally = _Tally()
        for batch in loader:
            x, y = _batch(batch, device)
            optimizer.zero_grad()
            out = module(x)
            loss = loss_fn(out, y)
            objective = loss + proximal_term(module.parameters(), anchor, mu) if anchor else loss
            objective.backward()
            optimizer.step()
            tally.add(loss, out, y)
    if tally.examples == 0:
        raise ValueError("train: the loader gave no examples.\nHint: pass a non-empty loader.")
    metrics: Metrics = {"train_loss": tally.loss()}
    accuracy = tally.accuracy()
    if accuracy is not None:
        metrics["train_accuracy"] = accuracy
    return metrics, tally.examples


def _as_module(model: nn.Module | Callable[[], nn.Module]) -> nn.Module:
    module = model() if callable(model) and not isinstance(model, nn.Module) else model
    if not isinstance(module, nn.Module):
        made = "" if module is model else f" {model!r} made"
        raise TypeError(
            f"TorchClient takes an nn.Module or a function returning one;{made} {module!r} "
            "is not one.\nHint: TorchClient(Net(), train_loader) or TorchClient(Net, ...)"
        )
    return module


def _batch(batch: Any, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, list | tuple) or len(batch) != 2:
        raise TypeError(
            f"a batch must be (inputs, targets), got {type(batch).__name__}.\nHint: use a "
            "DataLoader over TensorDataset(x, y), or map dict batches to (x, y) first."
        )
    x, y = batch
    return x.to(device), y.to(device)


def _to_numpy(name: str, value: Any) -> np.ndarray:
    if not isinstance(value, torch.Tensor):
        raise TypeError(
            f"state_dict entry {name!r} is a {type(value).__name__}, not a tensor, so it "
            "cannot travel.\nHint: keep only tensors in the module's state (parameters and "
            "buffers)."
        )
    if value.dtype not in _NUMPY_DTYPES:
        raise TypeError(
            f"state_dict entry {name!r} has dtype {value.dtype}, which numpy cannot hold.\n"
            "Hint: federate the module in float32 (module.float()) and cast inside training "
            "(torch.autocast) if you need lower precision."
        )
    # copy=True: on CPU, .numpy() alone would share memory with the live tensor
    return value.detach().to("cpu", copy=True).numpy(force=True)


def _to_tensor(array: np.ndarray) -> torch.Tensor:
    array = np.asarray(array)
    # from_numpy shares memory, which torch will not do with a read-only array (a decoded
    # message's view): copy those. load_state_dict copies into the module either way.
    return torch.from_numpy(array) if array.flags.writeable else torch.tensor(array)
