"""Record the seeded histories that ``test_golden.py`` holds every later change to.

Run it only when a change is meant to alter results (and say so in CHANGELOG.md):

    .venv/bin/python tests/golden/record.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pollinate.app import load_app
from pollinate.loop.history import WALL_TIMES
from pollinate.simulation import Adversaries, RayEngine, run_simulation

HERE = Path(__file__).resolve().parent
DEMO = HERE.parents[1] / "examples" / "quickstart-numpy"

CASES: dict[str, dict[str, Any]] = {
    "demo": {},
    "fedadam": {"config": {"strategy": "fedadam", "num-rounds": "4"}},
    "fedmedian-label-flip": {
        "config": {"strategy": "fedmedian", "num-rounds": "4"},
        "adversaries": ("label-flip", 0.2),
    },
    "fedavg-scale-attack": {
        "config": {"num-rounds": "4"},
        "adversaries": ("scale", 0.2),
    },
    "sampled-half": {"config": {"fraction-fit": "0.5", "num-rounds": "4"}, "seed": 3},
    "dp": {"config": {"dp-noise-multiplier": "0.3", "num-rounds": "4"}, "noise_seed": 7},
    "secure": {"config": {"secure-aggregation": "true", "num-rounds": "2"}, "clients": 8},
}


def history(case: dict[str, Any], engine: RayEngine | None = None) -> list[dict[str, Any]]:
    """The case's history as JSON-ready records, without wall-clock times, on ``engine``
    (in-process unless given)."""
    app = load_app(DEMO, case.get("config", {}))
    attack = case.get("adversaries")
    server_app = app.server_app()
    if "noise_seed" in case:  # DP noise is unpredictable unless seeded
        server_app.strategy.noise_seed = case["noise_seed"]  # type: ignore[attr-defined]
    result = run_simulation(
        server_app,
        app.client_fn,
        case.get("clients", app.clients),
        seed=case.get("seed", 0),
        run_config=app.config,
        adversaries=Adversaries(attack[1], attack[0]) if attack else None,
        engine=engine,
    )
    records = [r.to_dict() for r in result.history.rounds]
    for record in records:
        for name in WALL_TIMES:
            record.pop(name)
    return json.loads(json.dumps(records))


def main() -> None:
    names = sys.argv[1:] or list(CASES)
    for name in names:
        path = HERE / f"{name}.json"
        path.write_text(json.dumps(history(CASES[name]), indent=1, sort_keys=True) + "\n")
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
