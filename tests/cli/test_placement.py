"""Placement at the command line: a bad label or selector is told at once, with the fix,
before any hub is looked for."""

from __future__ import annotations

from pathlib import Path

from tests.cli_runner import pollinate
from tests.deployment.apps import write_tiny_app

NOWHERE = "127.0.0.1:1"  # nothing listens: a command that looked for it would wait


def test_a_bad_label_or_resource_is_refused_with_the_fix(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    node = ("node", "--hub", NOWHERE, "--app", app, "--insecure")
    done = pollinate(*node, "--label", "my region=eu", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--label 'my region=eu': key 'my region' holds ' '" in done.stderr
    assert "Hint: --label region=eu" in done.stderr
    done = pollinate(*node, "--resources", "gpus", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--resources 'gpus': has no '='" in done.stderr and "--resources gpus=2" in done.stderr


def test_a_bad_selector_is_refused_before_the_hub_is_looked_for(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    done = pollinate("run", app, "--hub", NOWHERE, "--select", "gpus>=x", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "'>=' compares numbers, got 'x' at character 7" in done.stderr
    assert "Hint: write a number after '>='" in done.stderr
    assert "waiting" not in done.stderr + done.stdout


def test_a_selector_without_a_hub_is_refused(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    done = pollinate("run", app, "--select", "gpus>=1", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--select places a run on a hub's nodes" in done.stderr
    assert "Hint: pollinate run APP --hub" in done.stderr
