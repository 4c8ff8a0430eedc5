"""What a tracker logs, whichever backend: a run's parameters and a round's numbers.

Metric names come from nodes: they are kept to the characters every backend accepts
(letters, digits, ``_ - . /`` and space), the rest replaced by ``_``.
"""

from __future__ import annotations

import math
import re

from pollinate.checks import is_number
from pollinate.loop.history import History, RoundRecord

SECTIONS = {"centralized": "centralized", "evaluate": "federated", "fit": "fit"}
"""A round record's metric sections, and the prefix their metrics are logged under."""
_UNSAFE = re.compile(r"[^\w\-. /]")


def params(history: History) -> dict[str, str]:
    """The run's parameters: what ran, then its config as ``config.KEY``."""
    ran = {
        "app": history.app,
        "app_hash": history.app_hash,
        "seed": history.seed,
        "strategy": history.strategy,
        "num_rounds": history.num_rounds,
        "clients": history.clients,
        "placement": history.placement,
        "pollinate": history.pollinate,
    }
    shown = {k: str(v) for k, v in ran.items() if v not in (None, "")}
    shown.update({f"config.{safe(k)}": str(v) for k, v in history.config.items()})
    return shown


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """The round's numbers: every finite metric as ``SECTION/NAME`` (``federated/loss``,
    ``centralized/accuracy``, ``fit/train_loss``), and its replies, failures, rejections."""
    out = {}
    for section, prefix in SECTIONS.items():
        for name, value in getattr(record, section).items():
            if is_number(value) and math.isfinite(value):
                out[f"{prefix}/{safe(name)}"] = float(value)
    if record.round > 0:
        out.update(
            {
                "round/replies": float(record.replies),
                "round/failures": float(record.failures),
                "round/rejected": float(record.rejected),
                "round/seconds": float(record.seconds),
            }
        )
    return out


def safe(name: str) -> str:
    """``name`` with only characters every backend accepts in a key."""
    return _UNSAFE.sub("_", name) or "_"
