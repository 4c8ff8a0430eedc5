"""docs/operations.md runs as written: its shell blocks, in order, in one bash, against a real
hub and real nodes on 127.0.0.1 (a free port stands in for 9092)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.deployment.conftest import free_ports

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "operations.md"
TIMEOUT = 600


def test_the_operations_page_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"^```sh\n(.*?)^```", PAGE.read_text(), flags=re.S | re.M)
    (port,) = free_ports(1)
    script = "set -euo pipefail\n" + "\n".join(blocks).replace("9092", str(port))
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the venv running the tests
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLLINATE_")}
    env |= {"COLUMNS": "200", "NO_COLOR": "1", "XDG_CONFIG_HOME": str(tmp_path / "config")}
    process = subprocess.Popen(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # the hub and nodes it starts are killed with it
    )
    try:
        output, _ = process.communicate(timeout=TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):  # what it left running (no job control)
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, output[-6000:]
    assert "admin at 127.0.0.1" in output and "admin in all projects" in output
    assert re.search(r"alice at 127\.0\.0\.1:\d+: member in cardiology", output), output
    assert "node 4 revoked" in output and "user vera revoked" in output
    assert re.search(r"admin\W+revoke user\W+\W*vera\W+ok", output), output[-4000:]
