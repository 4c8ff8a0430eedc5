"""A tiny app for deployment tests: four numbers for a model, behaviour set by its run config.

Every fit of partition ``p`` adds ``p + 1`` to the model and weighs ``p + 1`` examples, so
the aggregate is known in advance. The config can make every fit take ``fit-seconds``, make
one partition slow from a given round on (``slow-partition``, ``slow-round``,
``slow-seconds``), leave a file per fit in ``marker-dir`` (``fit-p{partition}-r{round}``, a
line per fit, written before any sleeping: a test knows the fit has started, and how often
it ran), hold every fit of round ``r`` until a file ``r{r}`` appears in ``gate-dir`` (a test
paces the rounds), set the strategy's ``round_timeout`` (``round-timeout``, 0: the default,
derived from the round), bound the update norm (``max-norm``, 0: none; partition ``p``'s
update has norm ``2 (p + 1)``), turn on SecAgg+ (``secure-aggregation``) and name the
strategy (``strategy``; an unknown name makes ``server_fn`` raise).
"""

from __future__ import annotations

import json
from pathlib import Path

from pollinate.records import Scalar

DEFAULTS: dict[str, Scalar] = {
    "num-rounds": 2,
    "strategy": "FedAvg",
    "slow-partition": -1,
    "slow-round": 1,
    "slow-seconds": 0.0,
    "fit-seconds": 0.0,
    "marker-dir": "",
    "gate-dir": "",
    "round-timeout": 0.0,
    "max-norm": 0.0,
    "secure-aggregation": False,
}

PYPROJECT = """\
[project]
name = "tiny-app"
version = "0.1.0"

[tool.pollinate]
server = "tiny_app.server:server_fn"
client = "tiny_app.client:client_fn"

[tool.pollinate.config]
{config}

[tool.pollinate.simulation]
clients = 3
"""

SERVER = """\
import numpy as np

import pollinate
from pollinate import Arrays, ServerApp, Validation
from pollinate.secagg import SecAggConfig


def server_fn(run_config):
    name = run_config["strategy"]
    strategy_class = getattr(pollinate, name, None)
    if not isinstance(strategy_class, type) or not issubclass(strategy_class, pollinate.Strategy):
        raise ValueError(f"unknown strategy {name!r}")
    strategy = strategy_class(
        on_fit_config_fn=lambda rnd: {"round": rnd},
        evaluate_fn=lambda rnd, arrays: (float(arrays["w"].sum()), {}),
    )
    return ServerApp(
        strategy,
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=Arrays({"w": np.zeros(4)}),
        round_timeout=float(run_config["round-timeout"]) or None,
        validation=Validation(max_norm=float(run_config["max-norm"]) or None),
        secure_aggregation=SecAggConfig() if run_config["secure-aggregation"] else None,
    )
"""

CLIENT = """\
import time
from pathlib import Path

from pollinate import Arrays, Client


class TinyClient(Client):
    def __init__(self, partition, run_config):
        self.partition, self.run_config = partition, run_config

    def fit(self, arrays, config):
        rnd = int(config["round"])
        markers = self.run_config["marker-dir"]
        if markers:
            with (Path(markers) / f"fit-p{self.partition}-r{rnd}").open("a") as marker:
                marker.write("fit\\n")
        gate = self.run_config["gate-dir"]
        waited = 0.0
        while gate and not (Path(gate) / f"r{rnd}").exists() and waited < 300:
            time.sleep(0.05)
            waited += 0.05
        time.sleep(self.run_config["fit-seconds"])
        slow = self.partition == self.run_config["slow-partition"]
        if slow and rnd >= self.run_config["slow-round"]:
            time.sleep(self.run_config["slow-seconds"])
        step = self.partition + 1
        return Arrays({"w": arrays["w"] + step}), step, {"partition": float(self.partition)}

    def evaluate(self, arrays, config):
        return float(arrays["w"].sum()), 1, {}


def client_fn(context):
    return TinyClient(context.partition_id, context.run_config)
"""


def write_tiny_app(directory: Path, **config: Scalar) -> Path:
    """Write the tiny app into ``directory``; ``config`` overrides its defaults, so
    ``write_tiny_app(d, **{"num-rounds": 5})`` makes five rounds the app's own number."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"the tiny app has no config keys {sorted(unknown)}")
    values = {**DEFAULTS, **config}
    package = directory / "tiny_app"
    package.mkdir(parents=True)
    table = "\n".join(f"{key} = {_toml(value)}" for key, value in values.items())
    (directory / "pyproject.toml").write_text(PYPROJECT.format(config=table))
    (package / "__init__.py").write_text('"""A tiny app for deployment tests."""\n')
    (package / "server.py").write_text(SERVER)
    (package / "client.py").write_text(CLIENT)
    return directory


def _toml(value: Scalar) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a TOML basic string, for the paths and names used here
    return repr(value)
