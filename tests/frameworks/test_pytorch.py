"""The PyTorch adapter: state dicts travel exactly, mismatches are named, training trains, and a
BatchNorm model (with its int64 buffer) federates through a real simulation."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from pollinate import (
    Arrays,
    Context,
    FedAvg,
    Message,
    ServerApp,
    load_arrays,
    run_simulation,
    save_arrays,
    wire,
)
from pollinate.frameworks.pytorch import (
    TorchClient,
    evaluate,
    get_arrays,
    save_native,
    set_arrays,
    train,
)


class Mixed(nn.Module):
    """Parameters and buffers of every kind a state dict carries."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.head = nn.Linear(8, 3).double()
        self.register_buffer("scale16", torch.randn(5).half())
        self.register_buffer("steps", torch.tensor([3, -2], dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn(self.fc(x))).double()).float()


def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three separable classes in 4-d."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.5, (n, 4)) + np.eye(3, 4)[y] * 3
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y)


def loader(n: int, seed: int = 0, batch_size: int = 8) -> DataLoader[tuple[torch.Tensor, ...]]:
    return DataLoader(TensorDataset(*blobs(n, seed)), batch_size=batch_size)


def trained_mixed(seed: int) -> Mixed:
    torch.manual_seed(seed)
    model = Mixed()
    train(model, loader(32, seed), epochs=1, lr=0.1)  # moves the BatchNorm stats and counter
    return model


# --- get_arrays / set_arrays ------------------------------------------------------------------


def test_round_trip_keeps_names_values_dtypes_and_buffers() -> None:
    source = trained_mixed(seed=0)
    arrays = get_arrays(source)
    state = source.state_dict()
    assert arrays.names == list(state)
    assert "bn.num_batches_tracked" in arrays and "bn.running_var" in arrays
    assert arrays["bn.num_batches_tracked"].dtype == np.int64
    assert int(arrays["bn.num_batches_tracked"]) == 4
    assert arrays["scale16"].dtype == np.float16 and arrays["head.weight"].dtype == np.float64
    for name, tensor in state.items():
        assert np.array_equal(arrays[name], tensor.numpy()), name

    target = trained_mixed(seed=1)
    set_arrays(target, arrays)
    for name, tensor in target.state_dict().items():
        assert tensor.dtype == state[name].dtype, name
        assert torch.equal(tensor, state[name]), name
    assert get_arrays(target) == arrays


def test_get_arrays_copies_so_training_on_does_not_change_them() -> None:
    model = trained_mixed(seed=0)
    arrays = get_arrays(model)
    before = arrays["fc.weight"].copy()
    train(model, loader(32), epochs=1, lr=0.5)
    assert np.array_equal(arrays["fc.weight"], before)


def test_set_arrays_loads_read_only_views_from_the_wire_without_warnings() -> None:
    arrays = get_arrays(trained_mixed(seed=0))
    decoded = wire.decode(wire.encode(Message("fit", arrays=arrays))).arrays
    assert not decoded["fc.weight"].flags.writeable
    target = Mixed()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        set_arrays(target, decoded)
    assert get_arrays(target) == arrays


def test_set_arrays_keeps_the_modules_own_dtype() -> None:
    model = nn.Linear(2, 2).half()
    set_arrays(model, Arrays({"weight": np.ones((2, 2)), "bias": np.zeros(2)}))  # float64 in
    assert model.weight.dtype == torch.float16
    assert model.weight.tolist() == [[1.0, 1.0], [1.0, 1.0]]


def test_bfloat16_raises_type_error_with_a_hint() -> None:
    with pytest.raises(TypeError, match=r"'weight' has dtype torch.bfloat16(.|\n)*Hint:"):
        get_arrays(nn.Linear(2, 2).to(torch.bfloat16))


def test_set_arrays_names_missing_and_unexpected_entries_and_leaves_the_module_alone() -> None:
    model = Mixed()
    before = get_arrays(model)
    arrays = dict(get_arrays(trained_mixed(seed=3)))
    del arrays["bn.running_mean"]
    arrays["bn.extra"] = np.zeros(8, np.float32)
    with pytest.raises(
        ValueError, match=r"missing 'bn.running_mean'; unexpected 'bn.extra'(.|\n)*Hint:"
    ):
        set_arrays(model, Arrays(arrays))
    assert get_arrays(model) == before


def test_set_arrays_names_mis_shaped_entries() -> None:
    narrow, wide = nn.Linear(4, 3), nn.Linear(4, 5)
    with pytest.raises(ValueError, match=r"mis-shaped 'weight' \[5, 4\] \(model \[3, 4\]\)"):
        set_arrays(narrow, get_arrays(wide))


# --- train / evaluate ------------------------------------------------------------------------


def test_train_lowers_the_loss_and_reports_training_metrics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    data = loader(96)
    loss_before, n, _ = evaluate(model, data)
    metrics = train(model, data, epochs=5, lr=0.1)
    loss_after, _, after = evaluate(model, data)
    assert n == 96
    assert loss_after < loss_before / 4
    assert after["accuracy"] >= 0.95
    assert set(metrics) == {"train_loss", "train_accuracy"}


def test_train_with_a_proximal_term_stays_nearer_the_global_model() -> None:
    def distance(mu: float) -> float:
        torch.manual_seed(0)
        model = nn.Linear(4, 3)
        start = [p.detach().clone() for p in model.parameters()]
        train(model, loader(64), epochs=3, lr=0.1, proximal_mu=mu)
        return sum(
            float((p.detach() - s).norm() ** 2)
            for p, s in zip(model.parameters(), start, strict=True)
        )

    assert distance(mu=5.0) < 0.5 * distance(mu=0.0)


def test_train_uses_a_given_optimizer_and_loss() -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x, _ = blobs(32, seed=0)
    data = DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)
    loss_before, _, metrics = evaluate(model, data, loss_fn=nn.MSELoss())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    assert set(train(model, data, epochs=20, optimizer=optimizer, loss_fn=nn.MSELoss())) == {
        "train_loss"
    }
    assert evaluate(model, data, loss_fn=nn.MSELoss())[0] < loss_before / 10
    assert metrics == {}  # regression: no accuracy


def test_train_refuses_batches_that_are_not_pairs() -> None:
    with pytest.raises(TypeError, match="must be \\(inputs, targets\\)(.|\n)*Hint:"):
        train(nn.Linear(4, 3), [{"x": torch.zeros(2, 4)}], epochs=1)


# --- TorchClient ------------------------------------------------------------------------------


def test_torch_client_fits_from_the_global_arrays_and_counts_examples() -> None:
    torch.manual_seed(0)
    client = TorchClient(Mixed, loader(40), loader(16, seed=1), epochs=2, lr=0.1)
    initial = client.get_arrays({})
    global_ = get_arrays(trained_mixed(seed=5))
    arrays, n, metrics = client.fit(global_, {})
    assert n == 40 and set(metrics) == {"train_loss", "train_accuracy"}
    assert arrays.names == initial.names
    # 2 epochs of 5 batches on top of the global model's 4
    assert int(arrays["bn.num_batches_tracked"]) == 4 + 10
    loss, n_val, val_metrics = client.evaluate(arrays, {})
    assert n_val == 16 and loss > 0 and "accuracy" in val_metrics


def test_torch_client_takes_a_module_and_refuses_anything_else() -> None:
    model = nn.Linear(4, 3)
    assert TorchClient(model, loader(8)).module is model
    with pytest.raises(TypeError, match="made 'not a module' is not one(.|\n)*Hint:"):
        TorchClient(lambda: "not a module", loader(8))  # type: ignore[arg-type, return-value]
    with pytest.raises(TypeError, match="'Net' is not one"):
        TorchClient("Net", loader(8))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no val_loader"):
        TorchClient(model, loader(8)).evaluate(get_arrays(model), {})


# --- end to end -------------------------------------------------------------------------------


class BatchNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


SIZES = (32, 32, 32, 32, 48)  # batches of 8: four clients step 4 times per epoch, one 6 times


def test_a_batchnorm_model_federates_with_fedavg_through_run_simulation() -> None:
    def client_fn(context: Context) -> TorchClient:
        n = SIZES[context.partition_id]
        return TorchClient(
            BatchNormNet, loader(n, seed=context.partition_id), loader(16, seed=99), lr=0.1
        )

    torch.manual_seed(0)
    initial = get_arrays(BatchNormNet())
    # 5 clients: the hub's anomaly screen (on by default from 5 updates) sees the int buffer
    app = ServerApp(FedAvg(), num_rounds=3, initial_arrays=initial)
    result = run_simulation(app, client_fn, num_clients=len(SIZES), seed=0)

    rounds = result.history.rounds[1:]
    assert [(r.replies, r.failures, r.rejected) for r in rounds] == [(5, 0, 0)] * 3
    final = result.arrays
    assert final.names == initial.names
    assert final["body.1.num_batches_tracked"].dtype == np.int64
    # each round the counter moves by the example-weighted mean of the clients' steps,
    # (4 * 128 + 6 * 48) / 176 = 4.55, and the hub rounds the int64 mean: 5, 10 (9.55), 15
    assert int(final["body.1.num_batches_tracked"]) == 15
    assert rounds[-1].evaluate["accuracy"] >= 0.9


def test_a_saved_model_becomes_a_state_dict_file_torch_loads(tmp_path: Path) -> None:
    torch.manual_seed(1)
    trained = get_arrays(Mixed())
    save_arrays(trained, tmp_path / "model.npz")  # what `pollinate run --out` leaves
    fresh = Mixed()
    path = save_native(load_arrays(tmp_path / "model.npz"), tmp_path / "model.pt", fresh)
    reloaded = Mixed()
    reloaded.load_state_dict(torch.load(path, weights_only=True))
    assert get_arrays(reloaded) == trained  # every dtype: float16/64 params, int64 buffers
    with pytest.raises(ValueError, match="do not fit"):
        save_native(Arrays({"w": np.zeros(2)}), tmp_path / "other.pt", Mixed())
