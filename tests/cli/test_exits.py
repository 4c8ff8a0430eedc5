"""Honest exits: a run that applied no round fails (exit 1) and says why; each round's line
shows its first failure reasons; a run stops after ``--max-failed-rounds`` rounds without a
usable update; ``--out`` is checked before any work, written as rounds end, and kept on
Ctrl-C; the run ends with one summary. All through the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from pollinate.loop.history import History
from tests.cli_runner import EXAMPLES, ROOT, pollinate

DEMO = EXAMPLES / "quickstart-numpy"

PYPROJECT = """\
[project]
name = "tiny"

[tool.pollinate]
server = "tiny.server:server_fn"
client = "tiny.client:client_fn"

[tool.pollinate.config]
num-rounds = 4
fit-seconds = 0.0

[tool.pollinate.simulation]
clients = 3
"""

SERVER = """\
import numpy as np
from pollinate import Arrays, FedAvg, ServerApp


def server_fn(run_config):
    return ServerApp(
        FedAvg(),
        num_rounds=int(run_config["num-rounds"]),
        initial_arrays=Arrays({"w": np.zeros(2)}),
    )
"""

GOOD_CLIENT = """\
import time

from pollinate import Arrays, Client


class Step(Client):
    def __init__(self, seconds):
        self.seconds = seconds

    def fit(self, arrays, config):
        time.sleep(self.seconds)
        return Arrays({"w": arrays["w"] + 1}), 1, {}

    def evaluate(self, arrays, config):
        return float(arrays["w"][0]), 1, {"accuracy": float(arrays["w"][0]) / 10}


def client_fn(context):
    return Step(float(context.run_config["fit-seconds"]))
"""


def tiny_app(root: Path, client: str = GOOD_CLIENT) -> Path:
    app = root / "tiny-app"
    (app / "tiny").mkdir(parents=True)
    (app / "pyproject.toml").write_text(PYPROJECT)
    (app / "tiny" / "__init__.py").write_text("")
    (app / "tiny" / "server.py").write_text(SERVER)
    (app / "tiny" / "client.py").write_text(client)
    return app


def lines(text: str) -> list[str]:
    return text.splitlines()


def test_every_client_failing_exits_1_quickly_and_says_why(tmp_path: Path) -> None:
    done = pollinate(
        "run", DEMO, "--clients", "2000", "--rounds", "5", "--out", tmp_path, timeout=120
    )
    assert done.returncode == 1, done.stderr
    # each round's line is followed by its distinct reasons, counted, without -v
    assert "2000 x fit: client failed: ValueError: num_partitions=2000" in done.stdout
    assert "no fit task gave a usable update in 3 rounds in a row" in done.stderr
    assert "Traceback" not in done.stderr
    assert [r.round for r in History.load(tmp_path).rounds] == [0, 1, 2, 3]  # stopped early


def test_a_fit_raising_on_every_client_exits_1_with_the_reason(tmp_path: Path) -> None:
    client = GOOD_CLIENT.replace(
        "time.sleep(self.seconds)", 'raise RuntimeError("disk full on this site")'
    )
    done = pollinate("run", tiny_app(tmp_path, client), "--rounds", "2")
    assert done.returncode == 1, done.stderr
    assert "3 x fit: client failed: RuntimeError: disk full on this site" in done.stdout
    assert "no round of 2 was applied" in done.stderr
    assert "disk full on this site" in done.stderr


def test_client_fn_raising_exits_1_with_the_reason(tmp_path: Path) -> None:
    client = GOOD_CLIENT.replace(
        "    return Step(", '    raise KeyError("partition-id")\n    return Step('
    )
    done = pollinate("run", tiny_app(tmp_path, client), "--max-failed-rounds", "2")
    assert done.returncode == 1, done.stderr
    assert "x fit: client failed: KeyError: 'partition-id'" in done.stdout
    assert "in 2 rounds in a row (rounds 1 to 2)" in done.stderr
    assert "round   3" not in done.stdout


def test_max_failed_rounds_0_never_stops_the_run(tmp_path: Path) -> None:
    client = GOOD_CLIENT.replace("time.sleep(self.seconds)", "raise RuntimeError('no')")
    done = pollinate("run", tiny_app(tmp_path, client), "--max-failed-rounds", "0")
    assert done.returncode == 1 and "no round of 4 was applied" in done.stderr
    assert "round   4" in done.stdout


def test_a_good_run_prints_each_round_once_and_one_summary(tmp_path: Path) -> None:
    done = pollinate("run", tiny_app(tmp_path), "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    out = lines(done.stdout)
    assert [line.split()[1] for line in out if line.startswith("round")] == list("01234")
    assert "best round: 4 (federated accuracy 0.4000)" in out
    assert "final (round 4): federated loss 4.0000 accuracy 0.4000" in out
    assert any(line.startswith("4 rounds in ") and line.endswith("s") for line in out)
    assert f"history written to {tmp_path / 'out' / 'history.jsonl'}" in out
    assert f"model written to {tmp_path / 'out' / 'model.npz'}" in out


def test_piped_output_is_whole_lines_at_80_columns(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pollinate", "run", str(DEMO), "--rounds", "2", "--config",
         "dp-noise-multiplier=1.0"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    rounds = [line for line in lines(done.stdout) if line.startswith("round")]
    assert len(rounds) == 3
    for line in rounds:  # each round whole on its line: metrics, epsilon, then its seconds
        assert line.endswith("s") and "centralized loss" in line, line
    assert "epsilon" in rounds[-1] and "…" not in done.stdout
    starts = ("quickstart-numpy: ", "round ", "best round: ", "final (round 2): ", "2 rounds in ")
    assert all(line.startswith(starts) for line in lines(done.stdout)), done.stdout


def test_out_naming_a_file_is_refused_before_the_run(tmp_path: Path) -> None:
    taken = tmp_path / "history.jsonl"
    taken.write_text("mine")
    done = pollinate("run", DEMO, "--out", taken)
    assert done.returncode == 2
    assert "is a file; --out names a directory" in done.stderr
    assert "round" not in done.stdout and "Traceback" not in done.stderr
    assert taken.read_text() == "mine"


def test_ctrl_c_keeps_the_history_of_the_rounds_done(tmp_path: Path) -> None:
    app, out = tiny_app(tmp_path), tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "pollinate", "run", str(app), "--rounds", "50", "--out",
         str(out), "--config", "fit-seconds=0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        for line in process.stdout:  # the line of round 2 is printed once it is recorded
            if line.startswith("round   2"):
                break
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "interrupted after round" in stderr and "Traceback" not in stderr
    done = [r.round for r in History.load(out).rounds]
    assert done[:3] == [0, 1, 2] and done == list(range(len(done))) and len(done) < 51


def test_the_history_file_says_what_ran(tmp_path: Path) -> None:
    done = pollinate("run", tiny_app(tmp_path), "--seed", "7", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    header = json.loads((tmp_path / "out" / "history.jsonl").read_text().splitlines()[0])
    assert header["schema"] == 4 and header["app"] == "tiny" and header["seed"] == 7
    assert header["config"] == {"num-rounds": 4, "fit-seconds": 0.0}
    assert header["strategy"] == "FedAvg" and header["clients"] == 3 and header["app_hash"]
    assert header["pollinate"] and len(History.load(tmp_path / "out").rounds) == 5
