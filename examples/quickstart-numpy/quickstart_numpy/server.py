"""The server side: FedAvg (or the strategy the run config names), with the global model
evaluated on the held-out test set."""

from __future__ import annotations

from pollinate import AppError, Arrays, Config, Metrics, ServerApp, Strategy, Validation
from pollinate.secagg import SecAggConfig
from pollinate.strategy import strategy_class
from quickstart_numpy import task


def server_fn(run_config: Config) -> ServerApp:
    _, _, x_test, y_test = task.load_data(int(run_config["data-seed"]))

    def evaluate_test_set(round: int, arrays: Arrays) -> tuple[float, Metrics]:
        loss, accuracy = task.evaluate(arrays, x_test, y_test)
        return loss, {"accuracy": accuracy}

    def fit_config(round: int) -> Config:
        keys = ("local-epochs", "batch-size", "learning-rate")
        return {"round": round, **{k: run_config[k] for k in keys}}

    try:
        strategy_type = strategy_class(str(run_config["strategy"]))
    except ValueError as exc:
        raise AppError(f"--config strategy: {exc}") from None
    if strategy_type.__name__ not in ("FedAvg", "FedAvgM"):
        raise AppError(
            f"--config strategy={run_config['strategy']}: this demo runs FedAvg or FedAvgM; "
            "FedProx and the FedOpt family need settings it does not set (mu, eta)."
        )
    strategy = strategy_type(
        fraction_fit=float(run_config["fraction-fit"]),
        fraction_evaluate=0.5,
        evaluate_fn=evaluate_test_set,
        on_fit_config_fn=fit_config,
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


def with_dp(strategy: Strategy, noise_multiplier: float, run_config: Config) -> Strategy:
    """Hub-side DP-FedAvg around the strategy (needs the ``dp`` extra: dp-accounting)."""
    from pollinate.privacy import DifferentialPrivacy

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
