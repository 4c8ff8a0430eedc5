"""run_simulation(out=DIR): the history as it goes and the final model, the same files
`pollinate run --out DIR` leaves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pollinate import Arrays, Client, FedAvg, Sampling, ServerApp, load_arrays, run_simulation
from pollinate.loop.history import History


class Nudge(Client):
    def fit(self, arrays: Arrays, config: dict) -> tuple[Arrays, int, dict]:  # type: ignore[override]
        return Arrays({"w": arrays["w"] + 1}), 1, {"train_loss": 0.5}


def test_out_holds_the_history_and_the_final_model(tmp_path: Path) -> None:
    app = ServerApp(
        FedAvg(sampling=Sampling(fraction_evaluate=0)),
        num_rounds=3,
        initial_arrays=Arrays({"w": np.zeros(2, np.float32)}),
    )
    result = run_simulation(
        app, lambda context: Nudge(), 4, seed=5, run_config={"lr": 0.1}, out=tmp_path / "run"
    )
    history = History.load(tmp_path / "run")
    assert [r.round for r in history.rounds] == [0, 1, 2, 3]
    assert history.rounds == result.history.rounds
    assert (history.strategy, history.clients, history.seed, history.num_rounds) == (
        "FedAvg",
        4,
        5,
        3,
    )
    assert history.config == {"lr": 0.1}
    assert load_arrays(tmp_path / "run" / "model.npz") == result.arrays
    assert result.arrays["w"].tolist() == [3.0, 3.0]
