"""Flower apps under pollinate, with only their ``flwr`` imports changed.

One thin layer over pollinate's own client, strategies and loop; it re-implements nothing
of Flower. Every name a Flower app imports from ``flwr.client``, ``flwr.common``,
``flwr.server``, ``flwr.server.strategy``, ``flwr.app``, ``flwr.clientapp``,
``flwr.serverapp`` or ``flwr.serverapp.strategy`` is imported from here instead::

    from pollinate.flower import ClientApp, NumPyClient, Context        # was flwr.client...
    from pollinate.flower import ServerApp, ServerAppComponents, ServerConfig, FedAvg

- ``records.py``: ``ArrayRecord`` (an ``Arrays``), ``MetricRecord``, ``ConfigRecord``,
  ``RecordDict``, ``Message``, ``ndarrays_to_parameters``.
- ``client.py``: ``ClientApp``, both generations, callable as pollinate's ``client_fn``.
- ``strategy.py``: ``FedAvg``, ``FedProx``, ``FedAdam``, ``FedYogi``, ``FedAdagrad`` with
  Flower's arguments and formulas, mapped in one place; ``start`` and its ``Result``.
- ``server.py``: ``ServerApp``, both generations, callable as pollinate's ``server_fn``.
- ``classic.py``: Flower's classic ``start_server`` (a private hub; its ``History``) and
  ``start_numpy_client`` / ``start_client`` (a node serving the given client).

A ``pyproject.toml`` with ``[tool.flwr.app]`` is read by ``pollinate run`` as it is
(``pollinate.app``). docs/migrating-from-flower.md says what differs and why.
"""

from pollinate.client.client import Context, NumPyClient
from pollinate.flower.classic import History, start_client, start_numpy_client, start_server
from pollinate.flower.client import ClientApp
from pollinate.flower.records import (
    ArrayRecord,
    ConfigRecord,
    Message,
    MetricRecord,
    NDArrays,
    Parameters,
    RecordDict,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from pollinate.flower.server import ServerApp, ServerAppComponents, ServerConfig
from pollinate.flower.strategy import (
    FLOWER_VALIDATION,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedProx,
    FedYogi,
    Result,
)
from pollinate.loop.grid import Grid
from pollinate.records import Metrics, Scalar

__all__ = [
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
]
