"""Checks of a node's reply against the global model, before it reaches a strategy.

Invariant: a strategy only ever sees arrays with the global model's names, shapes and
dtypes, holding finite values. Anything else is a failure of that node, with a reason that
says what to fix.
"""

from __future__ import annotations

import numpy as np

from pollinate.records import Arrays, Message
from pollinate.scratch import BLOCK, scratch
from pollinate.text import inert


def arrays_problem(arrays: Arrays, reference: Arrays) -> str | None:
    """Why ``arrays`` do not fit ``reference`` (names, shapes, dtypes, finite values)."""
    return shape_problem(arrays, reference) or finite_problem(arrays)


def shape_problem(arrays: Arrays, reference: Arrays) -> str | None:
    """Why ``arrays`` do not fit ``reference``'s names, shapes and dtypes."""
    if arrays.names != reference.names:
        missing = [n for n in reference.names if n not in arrays]
        extra = [n for n in arrays.names if n not in reference]
        detail = f"missing {_few(missing)}, unexpected {_few(extra)}"
        detail = detail if missing or extra else "reordered"
        return (
            f"sent arrays {detail}: the node runs a different model; check that every node "
            "has the same app version"
        )
    for name, ref in reference.items():
        a = arrays[name]
        if a.shape != ref.shape or a.dtype != ref.dtype:
            return (
                f"sent {a.dtype}{list(a.shape)} for {name!r}, expected {ref.dtype}"
                f"{list(ref.shape)}: the node runs a different model version"
            )
    return None


def _few(names: list[str], most: int = 5) -> str:
    """A node's array names as a short list: it may send 100,000 names of any length."""
    shown = [inert(repr(name), 80) for name in names[:most]]
    more = [f"... ({len(names)} names)"] if len(names) > most else []
    return "[" + ", ".join(shown + more) + "]"


def finite_problem(arrays: Arrays) -> str | None:
    """Which float array of ``arrays`` holds NaN or inf, or None when all values are finite."""
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not _all_finite(a):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            return (
                f"sent {bad} non-finite values (NaN/inf) in {name!r}: its training diverged; "
                "lower the learning rate or clip gradients"
            )
    return None


def _all_finite(array: np.ndarray) -> bool:
    """``np.isfinite(array).all()`` a block at a time into this thread's scratch block: no
    bool array the size of the update, no fresh memory per call."""
    flat, buf = array.reshape(-1), scratch(np.bool_)
    for i in range(0, flat.size, BLOCK):
        finite = buf[: min(BLOCK, flat.size - i)]
        if not np.isfinite(flat[i : i + BLOCK], out=finite).all():
            return False
    return True


def evaluate_reply_problem(reply: Message) -> str | None:
    """Why an evaluate reply without an error cannot be counted, or None if it can."""
    if reply.loss is None or not np.isfinite(reply.loss):
        return f"reported loss {reply.loss!r}; expected a finite number"
    return None
