"""Importing pollinate imports no ML framework: each adapter is an optional extra."""

from __future__ import annotations

import subprocess
import sys

FRAMEWORKS = ("torch", "keras", "jax", "flax", "optax", "sklearn", "xgboost", "datasets")


def test_importing_pollinate_imports_no_framework() -> None:
    modules = ["pollinate", "pollinate.frameworks", "pollinate.cli.main", "pollinate.dp"]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + f"print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]", f"importing pollinate imported {out.strip()}"
