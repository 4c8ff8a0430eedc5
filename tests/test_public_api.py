"""The public face is small and pinned: changing it is a decision, not an accident."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

import pollinate

SRC = Path(pollinate.__file__).parent

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
    "Sampling",
    "ServerApp",
    "SimulationGrid",
    "Stragglers",
    "Strategy",
    "Validation",
    "WireError",
    "__version__",
    "load_arrays",
    "run_simulation",
    "save_arrays",
    "weighted_average",
]


SUBPACKAGES = {
    "flower": [
        "FLOWER_VALIDATION",
        "ArrayRecord",
        "ClientApp",
        "ConfigRecord",
        "Context",
        "FedAdagrad",
        "FedAdam",
        "FedAvg",
        "FedProx",
        "FedYogi",
        "Grid",
        "History",
        "Message",
        "MetricRecord",
        "Metrics",
        "NDArrays",
        "NumPyClient",
        "Parameters",
        "RecordDict",
        "Result",
        "Scalar",
        "ServerApp",
        "ServerAppComponents",
        "ServerConfig",
        "ndarrays_to_parameters",
        "parameters_to_ndarrays",
        "start_client",
        "start_numpy_client",
        "start_server",
    ],
    "client": [
        "Client",
        "ClientFn",
        "Context",
        "NumPyClient",
        "handle",
        "proximal_gradient",
        "proximal_mu",
        "proximal_term",
        "to_client",
    ],
    "loop": [
        "Event",
        "Failure",
        "FailureKind",
        "Grid",
        "History",
        "ReplyBounded",
        "ReplyReceived",
        "RoundDeadline",
        "RoundFinished",
        "RoundRecord",
        "RunResult",
        "ServerApp",
        "Stage",
        "StageStarted",
        "TaskFailed",
        "UpdateRejected",
        "Validation",
        "run",
    ],
    "dp": [
        "AdaptiveClipping",
        "CLIPPING_NORM_KEY",
        "DifferentialPrivacy",
        "NORM_BELOW_KEY",
        "clip_update",
        "epsilon",
        "noise_for_epsilon",
        "update_norm",
    ],
    "secagg": [
        "AggregateSum",
        "EncryptedShare",
        "KeyAdvert",
        "MaskedInput",
        "SecAggClient",
        "SecAggConfig",
        "SecAggError",
        "SecAggServer",
        "ShareReveal",
        "UnmaskRequest",
    ],
    "security": [
        "CertificateAuthority",
        "Grant",
        "JoinToken",
        "NodeCredentials",
        "SecurityError",
        "TokenKind",
        "TokenStore",
        "UserCredentials",
        "ca_matches_pin",
        "certificate_expiry",
        "certificate_fingerprint",
        "make_key_and_csr",
        "node_id_from_certificate",
        "parse_token",
        "should_renew",
        "verify_peer_certificate",
    ],
    "simulation": [
        "Adversaries",
        "RayEngine",
        "RayGrid",
        "SimulationGrid",
        "Stragglers",
        "flip_labels",
        "run_simulation",
    ],
    "strategy": [
        "BaseStrategy",
        "Bulyan",
        "FedAdagrad",
        "FedAdam",
        "FedAvg",
        "FedAvgM",
        "FedBuff",
        "FedMedian",
        "FedOpt",
        "FedProx",
        "FedTrimmedAvg",
        "FedXgbBagging",
        "FedXgbCyclic",
        "FedYogi",
        "FitAggregator",
        "FitResult",
        "Krum",
        "MultiKrum",
        "QFedAvg",
        "Rounds",
        "STRATEGIES",
        "Sampling",
        "Strategy",
        "StrategyOptions",
        "UnusableUpdate",
        "strategy_class",
    ],
    "aggregate": [
        "PartialSum",
        "QFedAvgStep",
        "WeightedMean",
        "adagrad_moment",
        "adam_moment",
        "adaptive_step",
        "bulyan",
        "coordinate_median",
        "first_moment",
        "krum_scores",
        "median_distances",
        "momentum_step",
        "multi_krum",
        "trimmed_mean",
        "weighted_average",
        "yogi_moment",
    ],
    "datasets": [
        "by_group",
        "dirichlet",
        "iid",
        "label_counts",
        "partition_summary",
        "shards",
        "split_dataset",
    ],
    "frameworks": [],
    "node": [
        "NodeAgent",
    ],
    "transport": [
        "CHUNK_BYTES",
        "CONTROL_SERVICE",
        "FLEET_SERVER_OPTIONS",
        "FLEET_SERVICE",
        "NODE_CHANNEL_OPTIONS",
        "NODE_ID_HEADER",
        "chunk_data",
        "data_chunk",
        "rounds_from_wire",
        "rounds_to_wire",
    ],
    "hub": [
        "Action",
        "AuditRow",
        "Caller",
        "Fleet",
        "Forbidden",
        "Hub",
        "HubCredentials",
        "HubGrid",
        "HubState",
        "Journal",
        "LogRow",
        "NodeCaller",
        "NodeRow",
        "PollEnded",
        "RateLimiter",
        "Refused",
        "Role",
        "RunRow",
        "RunStatus",
        "RunStopped",
        "RunEvents",
        "Runs",
        "TooManyAttempts",
        "TryLater",
        "UserRow",
        "authorize",
        "pack_app",
    ],
    "cli": [
        "app",
        "main",
    ],
    "dashboard": [
        "DashboardServer",
        "HubSource",
        "LocalRun",
        "NodeState",
        "Session",
        "Sessions",
        "Source",
        "serve_dashboard",
        "serve_source",
    ],
    "tracking": ["TRACKERS", "Tracker", "tracker_for"],
    "wire": [
        "DEFAULT_LIMITS",
        "DTYPES",
        "MAGIC",
        "Decoder",
        "Limits",
        "decode",
        "encode",
        "encode_parts",
        "iter_encode",
    ],
}
"""Each subpackage's public names (its ``__all__``), pinned like the root's."""


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


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_subpackage_api_is_pinned(name: str) -> None:
    package = importlib.import_module(f"pollinate.{name}")
    assert sorted(package.__all__) == sorted(SUBPACKAGES[name])


@pytest.mark.parametrize("name", sorted(SUBPACKAGES))
def test_every_subpackage_public_name_exists(name: str) -> None:
    package = importlib.import_module(f"pollinate.{name}")
    missing = [n for n in package.__all__ if not hasattr(package, n)]
    assert missing == [], f"pollinate.{name}.__all__ names what it does not define"


def test_every_subpackage_is_pinned() -> None:
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    assert packages == set(SUBPACKAGES), "pin the public names of every subpackage here"
