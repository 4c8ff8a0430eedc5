"""One process per data dir: a second node (or hub) on it is refused, naming the first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.dirlock import lock_dir
from pollinate.errors import PollinateError
from tests.cli_runner import EXAMPLES, pollinate

HOLD = """
import sys, time
from pathlib import Path
from pollinate.dirlock import lock_dir
lock_dir(Path(sys.argv[1]), "node", "--data-dir")
print("locked", flush=True)
time.sleep(120)
"""


def holder(directory: Path) -> subprocess.Popen[str]:
    """A process holding ``directory``'s lock until it is killed (at most 2 minutes)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(directory)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


def test_a_second_node_on_a_data_dir_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    first = holder(tmp_path)
    try:
        done = pollinate(
            "node",
            "--hub",
            "127.0.0.1:1",
            "--app",
            EXAMPLES / "quickstart-numpy",
            "--data-dir",
            tmp_path,
        )
        assert done.returncode == 2, done.stdout + done.stderr  # the option names a busy dir
        said = " ".join(done.stderr.split())
        assert f"another node (pid {first.pid}) runs on the data dir" in said
        assert "give this node its own --data-dir" in said
    finally:
        first.kill()
        first.wait()
    # the kernel dropped the lock with its holder, however it died
    owner = lock_dir(tmp_path, "node", "--data-dir")
    try:
        with pytest.raises(PollinateError, match=rf"another node \(pid {os.getpid()}\)"):
            lock_dir(tmp_path, "node", "--data-dir")  # a second descriptor: refused too
    finally:
        os.close(owner)
