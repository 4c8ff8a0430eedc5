"""The server side: bagging (or cyclic training), with the global booster scored on the
held-out test set after every round. The strategies merge boosters as JSON: only this
evaluation needs xgboost on the server."""

from __future__ import annotations

from pollinate import AppError, Arrays, Config, Metrics, ServerApp
from pollinate.aggregate.trees import empty_booster
from pollinate.strategy import FedXgbBagging, FedXgbCyclic, Sampling
from xgboost_tabular import task

MODES = {"bagging": FedXgbBagging, "cyclic": FedXgbCyclic}


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        return task.evaluate(arrays, x_test, y_test)

    mode = str(run_config["mode"])
    if mode not in MODES:
        raise AppError(f"--config mode={mode}: expected one of {', '.join(MODES)}")
    strategy = MODES[mode](evaluate_fn=evaluate_test_set, sampling=Sampling(fraction_evaluate=1.0))
    return ServerApp(
        strategy, num_rounds=int(run_config["num-rounds"]), initial_arrays=empty_booster()
    )
