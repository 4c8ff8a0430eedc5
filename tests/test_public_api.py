"""The public face is small and pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import pollinate

PUBLIC = [
    "Adversaries",
    "AppError",
    "Arrays",
    "Bulyan",
    "Client",
    "ClientError",
    "Config",
    "Context",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedBuff",
    "FedMedian",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Grid",
    "History",
    "Krum",
    "Message",
    "Metrics",
    "MultiKrum",
    "NumPyClient",
    "PollinateError",
    "QFedAvg",
    "RoundRecord",
    "RunError",
    "RunResult",
    "ServerApp",
    "SimulationGrid",
    "Stragglers",
    "Strategy",
    "Validation",
    "WireError",
    "__version__",
    "run_simulation",
    "weighted_average",
]


def test_public_api_is_pinned() -> None:
    assert sorted(pollinate.__all__) == sorted(PUBLIC)


def test_every_public_name_exists() -> None:
    for name in pollinate.__all__:
        assert hasattr(pollinate, name), name


def test_errors_share_one_base() -> None:
    for error in (
        pollinate.AppError,
        pollinate.ClientError,
        pollinate.RunError,
        pollinate.WireError,
    ):
        assert issubclass(error, pollinate.PollinateError)
    assert issubclass(pollinate.WireError, ValueError)
