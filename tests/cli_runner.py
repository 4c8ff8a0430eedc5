"""The ``pollinate`` command as a user runs it, for tests: a real subprocess, real files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from pollinate.loop.history import History

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def pollinate(
    *args: str | Path,
    cwd: Path | None = None,
    timeout: float = 600,
    drop_env: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """``pollinate ARGS`` to completion, with a wide, colourless terminal."""
    env = {k: v for k, v in os.environ.items() if k not in drop_env}
    return subprocess.run(
        [sys.executable, "-m", "pollinate", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "COLUMNS": "120", "NO_COLOR": "1"},
        cwd=cwd,
        check=False,
    )


def run_app(
    app: str | Path, out: Path, *args: str, drop_env: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """``pollinate run APP --out OUT ARGS``, which must succeed; its history's rounds."""
    done = pollinate("run", app, "--out", out, *args, drop_env=drop_env)
    assert done.returncode == 0, done.stderr
    return history_rounds(out)


def history_rounds(out: Path) -> list[dict[str, Any]]:
    """The rounds of the history a run wrote into ``out`` (``history.jsonl``), as dicts."""
    return [record.to_dict() for record in History.load(out).rounds]
