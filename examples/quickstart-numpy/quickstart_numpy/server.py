"""The server side: FedAvg (or the strategy the run config names), with the global model
evaluated on the held-out test set."""

from __future__ import annotations

from typing import Any

from pollinate import AppError, Arrays, Config, Metrics, ServerApp, Strategy, Validation
from pollinate.secagg import SecAggConfig
from pollinate.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Sampling,
    strategy_class,
)
from quickstart_numpy import task


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        loss, accuracy = task.evaluate(arrays, x_test, y_test)
        return loss, {"accuracy": accuracy}

    def fit_config(round: int) -> Config:
        keys = ("local-epochs", "batch-size", "learning-rate")
        return {"round": round, **{k: run_config[k] for k in keys}}

    strategy = make_strategy(
        run_config,
        evaluate_fn=evaluate_test_set,
        on_fit_config_fn=fit_config,
        sampling=Sampling(fraction_fit=float(run_config["fraction-fit"]), fraction_evaluate=0.5),
    )
    noise = float(run_config.get("dp-noise-multiplier", 0.0))
    if noise > 0:
        strategy = with_dp(strategy, noise, run_config)
    validation = Validation(
        anomaly_threshold=float(run_config["anomaly-threshold"]) or None,
        max_norm=float(run_config["max-norm"]) or None,
    )
    try:
        secure = SecAggConfig.from_run_config(run_config)
    except ValueError as exc:
        raise AppError(f"--config: {exc}") from None
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=task.initial_arrays(),
        validation=validation,
        secure_aggregation=secure,
    )


def make_strategy(run_config: Config, **common: Any) -> Strategy:
    """The strategy ``--config strategy=NAME`` names, among those this demo sets up, with
    the settings it needs from the run config (``proximal-mu`` for FedProx,
    ``server-learning-rate`` for the FedOpt family)."""
    settings: dict[type[Strategy], dict[str, Any]] = {
        FedAvg: {},
        FedAvgM: {},
        FedMedian: {},
        FedTrimmedAvg: {},
        FedProx: {"proximal_mu": float(run_config["proximal-mu"])},
        FedAdagrad: {"eta": float(run_config["server-learning-rate"])},
        FedAdam: {"eta": float(run_config["server-learning-rate"])},
        FedYogi: {"eta": float(run_config["server-learning-rate"])},
    }
    name = str(run_config["strategy"])
    try:
        strategy_type = strategy_class(name, among=settings)
        return strategy_type(**settings[strategy_type], **common)
    except ValueError as exc:
        raise AppError(
            f"--config strategy={name}: {exc}\nHint: benchmarks/robustness.py and "
            "benchmarks/async.py set up Krum, MultiKrum, Bulyan, QFedAvg and FedBuff"
        ) from None


def with_dp(strategy: Strategy, noise_multiplier: float, run_config: Config) -> Strategy:
    """Hub-side DP-FedAvg around the strategy (needs the ``dp`` extra: dp-accounting)."""
    from pollinate.dp import DifferentialPrivacy

    budget = float(run_config.get("dp-epsilon-budget", 0.0))
    try:
        return DifferentialPrivacy(
            strategy,
            noise_multiplier=noise_multiplier,
            clipping_norm=float(run_config.get("dp-clipping-norm", 1.0)),
            delta=float(run_config.get("dp-delta", 1e-5)),
            epsilon_budget=budget or None,
        )
    except ValueError as exc:
        raise AppError(f"--config dp-*: {exc}") from None
