"""The hub's data dir fills up or turns read-only: no new work, nothing recorded lost.

Fault: the file system under the hub's data dir refuses writes while a run is in progress:
full (a tmpfs filled to its last page), read-only under the running hub (ext4 switched to
read-only by the kernel, as ``errors=remount-ro`` does when its disk fails), or read-only when
a hub starts on it (a tmpfs remounted read-only). Expectation: a new submission is refused with
a clear error and no traceback; ``pollinate ls`` shows the run paused with the reason; every
round recorded before the fault stays recorded; once writes succeed again the run goes on by
itself and ends with every round exactly once and the model the app's math predicts.

``mount -o remount,ro`` cannot make a file system read-only under a running hub: the kernel
refuses it ("mount point is busy") while a process holds a file there open for writing, and
the hub always holds its database so. The kernel's own emergency switch (ext4's
``errors=remount-ro``, triggered through sysfs) does it under open files, as a failing disk
does; that file system then stays read-only until it is unmounted, checked and mounted again.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pollinate.loop import checkpoint
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import BackgroundRun, Deployment, Process, wait_for

ROUNDS = 8
# every round moves each entry of the model by the weighted mean (1*1 + 2*2 + 3*3) / 6 of the
# three partitions' steps; the centralized loss is the sum of the four entries
STEP = 14 / 6
APP_CONFIG = {"num-rounds": ROUNDS, "fit-seconds": 0.3}
FAULT_AFTER_ROUND = 2
CLEAR_ERROR = "the hub cannot write to its data dir"
HINT = "the hub goes on by itself once writes succeed, and nothing it recorded before is lost"
PAUSE_TIMEOUT = 20.0
"""Seconds for the hub to show the pause (the round in progress needs its replies first)."""
GO_ON_TIMEOUT = 40.0
"""Seconds for the run to record a round once writes succeed (nodes back off up to 30 s)."""


# --- file systems ---------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


def _unmount(path: Path) -> None:
    """Unmount ``path``, lazily if something still holds it (teardown only)."""
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _skip_unless_mounted(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        reason = "not root" if os.geteuid() != 0 else "refused here"
        pytest.skip(f"cannot mount {what} ({reason}): {done.stderr.strip()}")


@pytest.fixture
def tmpfs(deployment: Deployment) -> Iterator[Path]:
    """The hub's data dir on an 8 MiB tmpfs, mounted before the hub starts and unmounted once
    every process of the deployment is gone."""
    data_dir = deployment.directory / "hub-data"
    data_dir.mkdir()
    _skip_unless_mounted(_mount("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(data_dir)), "a tmpfs")
    try:
        yield data_dir
    finally:
        deployment.close()
        _unmount(data_dir)


class Ext4:
    """The hub's data dir on ext4 in a loop-mounted image: the kernel can turn it read-only
    under open files (``errors=remount-ro``), and ``e2fsck`` repairs it."""

    def __init__(self, image: Path, data_dir: Path) -> None:
        self.image, self.data_dir = image, data_dir

    def mount(self) -> subprocess.CompletedProcess[str]:
        return _mount("-o", "loop,errors=remount-ro", str(self.image), str(self.data_dir))

    def turn_read_only(self) -> None:
        """What ext4 does when its disk fails: every write from now on gets EROFS."""
        source = subprocess.run(
            ["findmnt", "-n", "-o", "SOURCE", str(self.data_dir)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        Path(f"/sys/fs/ext4/{Path(source).name}/trigger_fs_error").write_text("test fault\n")

    def repair(self) -> None:
        """Unmount, check and mount again, as an administrator does. Not lazily: a file system
        still held would be mounted again as it is, read-only."""
        deadline = time.monotonic() + 10
        while True:
            done = subprocess.run(
                ["umount", str(self.data_dir)], capture_output=True, text=True, check=False
            )
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                users = subprocess.run(
                    ["fuser", "-vm", str(self.data_dir)], capture_output=True, text=True
                )
                raise AssertionError(f"cannot unmount: {done.stderr}{users.stderr}")
            time.sleep(0.2)
        fsck = subprocess.run(
            ["e2fsck", "-fy", str(self.image)], capture_output=True, text=True, check=False
        )
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        mounted = self.mount()
        assert mounted.returncode == 0, mounted.stderr
        probe = self.data_dir / "probe"
        probe.write_text("writable\n")  # the repaired file system takes writes
        probe.unlink()


@pytest.fixture
def ext4(deployment: Deployment, tmp_path: Path) -> Iterator[Ext4]:
    """The hub's data dir on a 32 MiB ext4 image, unmounted once every process is gone."""
    if shutil.which("mkfs.ext4") is None or not Path("/sys/fs/ext4").is_dir():
        pytest.skip("no ext4 here (mkfs.ext4 or /sys/fs/ext4 missing)")
    image = tmp_path / "hub-data.ext4"
    with image.open("wb") as file:
        file.truncate(32 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    data_dir = deployment.directory / "hub-data"
    data_dir.mkdir()
    disk = Ext4(image, data_dir)
    _skip_unless_mounted(disk.mount(), "an ext4 image on a loop device")
    try:
        yield disk
    finally:
        deployment.close()
        _unmount(data_dir)


def fill(directory: Path) -> Path:
    """Write zeros to a file in ``directory`` until its file system has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        for size in (1 << 20, 4096, 1):
            zeros = bytes(size)
            while True:
                try:
                    os.write(fd, zeros)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)
    return filler


# --- the hub's records, read as they are on disk --------------------------------------------


def _read(deployment: Deployment, query: str, *params: object) -> list[tuple[object, ...]]:
    path = deployment.directory / "hub-data" / "hub.db"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute(query, params).fetchall()
    finally:
        db.close()


def progress(deployment: Deployment, run_id: str) -> tuple[str, int]:
    """(status, last recorded round) of a run, read from the hub's database."""
    rows = _read(deployment, "SELECT status, round FROM runs WHERE run_id = ?", run_id)
    return (str(rows[0][0]), int(str(rows[0][1]))) if rows else ("", -1)


def recorded_rounds(deployment: Deployment, run_id: str) -> list[dict[str, object]]:
    """The round lines of the run's log, in the order the hub recorded them."""
    rows = _read(
        deployment, "SELECT text FROM log WHERE run_id = ? AND kind = 'round' ORDER BY seq", run_id
    )
    return [json.loads(str(row[0])) for row in rows]


def final_model(deployment: Deployment, run_id: str) -> np.ndarray:
    """The run's final global model, from the checkpoint the hub keeps after the run."""
    path = deployment.directory / "hub-data" / "runs" / run_id / f"checkpoint-{ROUNDS:06d}.pln"
    return np.asarray(checkpoint.decode(path.read_bytes()).arrays["w"])


# --- the steps the tests share --------------------------------------------------------------


def start_run(deployment: Deployment, tmp_path: Path) -> tuple[Path, BackgroundRun, str]:
    """Hub, three nodes and an 8-round run of the tiny app; returns once round 2 is recorded."""
    app = write_tiny_app(tmp_path / "app", **APP_CONFIG)
    deployment.start_hub()
    deployment.start_nodes([app] * 3)
    run = deployment.start_run(app)
    run.wait_for_output("submitted")
    found = re.search(r"run (\w+) submitted", run.process.stdout)
    assert found, run.process.stdout
    run_id = found.group(1)
    wait_for(
        lambda: progress(deployment, run_id)[1] >= FAULT_AFTER_ROUND,
        f"round {FAULT_AFTER_ROUND} recorded",
    )
    return app, run, run_id


def check_refused(deployment: Deployment, app: Path, tmp_path: Path) -> float:
    """New work is refused with the clear error, its hint and no traceback: the same app again
    (its archive is stored already, so storing it writes nothing) and another app. Returns
    the seconds a refusal took."""
    other = tmp_path / "other-app"
    if not other.exists():
        write_tiny_app(other, **{"num-rounds": 1})
    started = time.monotonic()
    for submitted in (app, other):
        result = deployment.run(submitted, "--rounds", "1", timeout=30)
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        assert "submitted" not in result.stdout, output
        assert CLEAR_ERROR in " ".join(output.split()), output
        assert HINT in " ".join(output.split()), output
        assert "Traceback" not in output, output
    return (time.monotonic() - started) / 2


def paused_detail(deployment: Deployment, run_id: str) -> str:
    """The text of ``pollinate ls`` once it shows the run paused (bounded wait)."""

    def paused() -> str:
        listed = deployment.cli("ls", "--hub", deployment.control, "--json")
        assert listed.returncode == 0, listed.stdout + listed.stderr
        details = [r["detail"] for r in json.loads(listed.stdout) if r["run_id"] == run_id]
        return details[0] if details and details[0].startswith("paused:") else ""

    return str(wait_for(paused, "`pollinate ls` to show the run paused", PAUSE_TIMEOUT))


def wait_for_round_after(deployment: Deployment, run_id: str, last: int) -> float:
    """Seconds until the run records a round after round ``last``."""
    started = time.monotonic()
    wait_for(
        lambda: progress(deployment, run_id)[1] > last,
        f"the run to record a round after round {last}",
        GO_ON_TIMEOUT,
    )
    return time.monotonic() - started


def check_finished(deployment: Deployment, run: BackgroundRun, run_id: str) -> None:
    """The run ends by itself with every round once and the model the app's math predicts."""
    result = run.finish(timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [r["round"] for r in result.history] == list(range(ROUNDS + 1))
    rounds = recorded_rounds(deployment, run_id)  # the log itself, not a deduplicated history
    assert sorted(int(str(r["round"])) for r in rounds) == list(range(ROUNDS + 1))
    assert progress(deployment, run_id) == ("finished", ROUNDS)
    losses = [float(r["centralized"]["loss"]) for r in rounds]  # type: ignore[index]
    assert np.allclose(np.diff(losses), 4 * STEP), losses
    model = final_model(deployment, run_id)
    assert np.allclose(model, np.full(4, ROUNDS * STEP)), model


def check_restart_logged(deployment: Deployment, run_id: str, after_round: int) -> None:
    log = deployment.cli("log", run_id, "--hub", deployment.control)
    expected = f"hub restarted (restart 1): run {run_id} resumes after round {after_round}"
    assert expected in log.stdout, log.stdout + log.stderr


def _hub(deployment: Deployment) -> Process:
    """The live hub process."""
    [hub] = [p for p in deployment.processes if p.name.startswith("hub") and p.alive()]
    return hub


# --- the tests ------------------------------------------------------------------------------


def test_a_full_disk_pauses_the_run_refuses_new_work_and_the_run_goes_on_once_freed(
    deployment: Deployment, tmpfs: Path, tmp_path: Path
) -> None:
    """Fault: the hub's data dir (a tmpfs) is filled to its last byte after round 2 of an
    8-round run is recorded, and freed again once the checks below are done. Just before,
    SQLite's WAL is checkpointed, as the hub's own auto-checkpoint does every ~4 MB: SQLite
    then commits into WAL pages the disk already has, so a full disk does not stop it, while
    every new file (reply, checkpoint) fails.

    Expectation: submissions are refused (exit status != 0, the clear error and its hint, no
    traceback); ``pollinate ls`` shows the run paused with the reason; the rounds recorded
    before the fault stay in the run's log; once the filler is deleted the run goes on by
    itself and finishes with every round 0..8 once and each entry of the model at 8 * 14/6.

    Measured: how long the hub took to show the pause, a refusal, and the run to record its
    next round after the disk was freed.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    db = sqlite3.connect(tmpfs / "hub.db", timeout=10)
    try:
        busy, _, _ = db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    finally:
        db.close()
    assert busy == 0
    filler = fill(tmpfs)
    filled = time.monotonic()
    before = recorded_rounds(deployment, run_id)
    assert len(before) >= FAULT_AFTER_ROUND + 1

    detail = paused_detail(deployment, run_id)
    paused_after = time.monotonic() - filled
    assert CLEAR_ERROR in detail and "No space left on device" in detail, detail
    refusal = check_refused(deployment, app, tmp_path)
    status, last = progress(deployment, run_id)
    assert (status, last) == ("running", len(before) - 1)
    assert recorded_rounds(deployment, run_id) == before

    filler.unlink()
    went_on = wait_for_round_after(deployment, run_id, last)
    check_finished(deployment, run, run_id)
    assert recorded_rounds(deployment, run_id)[: len(before)] == before
    print(
        f"measured: disk full after round {last}; `pollinate ls` showed the run paused "
        f"{paused_after:.1f} s later; a submission was refused in {refusal:.1f} s; the run "
        f"recorded its next round {went_on:.1f} s after the disk was freed and finished with "
        f"rounds 0..{ROUNDS} once and the predicted model"
    )


def test_a_data_dir_turned_read_only_pauses_the_run_and_a_restarted_hub_resumes_it(
    deployment: Deployment, ext4: Ext4, tmp_path: Path
) -> None:
    """Fault: after round 2 of an 8-round run is recorded, the kernel turns the hub's data
    dir (ext4, ``errors=remount-ro``) read-only under the running hub; the hub is SIGKILLed
    while it is; the file system is repaired (unmount, e2fsck, mount) and a new hub started.

    Expectation: while read-only, submissions are refused with the clear error and
    ``pollinate ls`` shows the run paused with the reason; nothing recorded before is lost
    (the repaired database has those rounds); the restarted hub resumes the run from its last
    recorded round ("hub restarted" in ``pollinate log``), although the app it had unpacked
    may have lost its contents (unpacked files are not synced; the archive is), and the run
    finishes with every round once and each entry of the model at 8 * 14/6.

    Measured: how long the hub took to show the pause, what the repair left of the unpacked
    app, and how long the restarted hub took to record the next round.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    before = recorded_rounds(deployment, run_id)
    ext4.turn_read_only()
    faulted = time.monotonic()

    detail = paused_detail(deployment, run_id)
    paused_after = time.monotonic() - faulted
    assert CLEAR_ERROR in detail and "Read-only file system" in detail, detail
    refusal = check_refused(deployment, app, tmp_path)

    _hub(deployment).kill()
    ext4.repair()
    assert recorded_rounds(deployment, run_id)[: len(before)] == before
    status, last = progress(deployment, run_id)
    assert status == "running" and last >= len(before) - 1
    unpacked = [p.stat().st_size for p in ext4.data_dir.glob("apps/*/app/pyproject.toml")]
    deployment.restart_hub()
    went_on = wait_for_round_after(deployment, run_id, last)
    check_finished(deployment, run, run_id)
    check_restart_logged(deployment, run_id, last)
    print(
        f"measured: read-only after round {last}; `pollinate ls` showed the run paused "
        f"{paused_after:.1f} s later; a submission was refused in {refusal:.1f} s; after the "
        f"repair the unpacked app's pyproject.toml had {unpacked} bytes; the restarted hub "
        f"resumed after round {last} and recorded the next {went_on:.1f} s after it started; "
        f"the run finished with every round once and the predicted model"
    )


def test_a_hub_started_on_a_read_only_data_dir_resumes_its_run_once_the_dir_is_writable(
    deployment: Deployment, tmpfs: Path, tmp_path: Path
) -> None:
    """Fault: after round 2 of an 8-round run is recorded, the hub is SIGKILLed, its data dir
    (a tmpfs) remounted read-only and a new hub started on it (SQLite then opens the database
    read-only); later the data dir is remounted read-write under that hub.

    Expectation: the hub starts and serves; submissions are refused with the clear error;
    ``pollinate ls`` shows the run paused with the reason; once the data dir is writable the
    run resumes by itself, without another restart, from its last recorded round ("hub
    restarted" in ``pollinate log``), and finishes with every round once and each entry of
    the model at 8 * 14/6.

    Measured: how long the run took to record its next round after the remount.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    _hub(deployment).kill()
    remounted = _mount("-o", "remount,ro", str(tmpfs))
    assert remounted.returncode == 0, remounted.stderr
    status, last = progress(deployment, run_id)
    assert status == "running"
    deployment.restart_hub()

    detail = paused_detail(deployment, run_id)
    assert CLEAR_ERROR in detail and "readonly database" in detail, detail
    refusal = check_refused(deployment, app, tmp_path)
    remounted = _mount("-o", "remount,rw", str(tmpfs))
    assert remounted.returncode == 0, remounted.stderr
    went_on = wait_for_round_after(deployment, run_id, last)
    check_finished(deployment, run, run_id)
    check_restart_logged(deployment, run_id, last)
    print(
        f"measured: hub started on a read-only data dir after round {last}; a submission "
        f"was refused in {refusal:.1f} s; the run recorded its next round {went_on:.1f} s "
        f"after the remount read-write and finished with every round once and the predicted "
        f"model"
    )
