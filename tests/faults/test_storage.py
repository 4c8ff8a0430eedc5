"""The hub's data dir fills up or turns read-only mid-run: no new work, nothing recorded lost.

Fault: the file system under the hub's data dir refuses writes while a run is in progress:
full (a tmpfs filled to the last page), or read-only (an ext4 file system that the kernel
switches to read-only, as ``errors=remount-ro`` does on an I/O error). Expectation: a new
submission is refused with a clear error and no traceback; ``pollinate ls`` shows the run
paused with the reason; every round recorded before the fault stays recorded; once writes
succeed again (the disk freed, or the file system repaired and the hub restarted) the run goes
on by itself and ends with every round exactly once and the model the app's math predicts.

``mount -o remount,ro`` cannot make the data dir read-only under a running hub: the kernel
refuses to remount a file system read-only while a process holds a file on it open for
writing ("mount point is busy"), and the hub always holds its database so. The kernel's own
emergency switch (ext4, ``errors=remount-ro``, triggered through sysfs) does it under open
files, as a failing disk does.
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

from pollinate.server import checkpoint
from tests.deployment.apps import write_tiny_app
from tests.deployment.conftest import BackgroundRun, Deployment, Process, wait_for

ROUNDS = 8
# every round moves each entry of the model by the weighted mean (1*1 + 2*2 + 3*3) / 6 of the
# three partitions' steps; the centralized loss is the sum of the four entries
STEP = 14 / 6
APP_CONFIG = {"num-rounds": ROUNDS, "fit-seconds": 0.3}
FAULT_AFTER_ROUND = 2
CLEAR_ERROR = "cannot write to its data dir"
HINT = "the hub goes on by itself once writes succeed"
PAUSE_TIMEOUT = 20.0
"""Seconds for the hub to notice the fault (the round in progress needs its replies)."""


# --- file systems ---------------------------------------------------------------------------


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, check=False)


def _unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _skip_unless_mounted(done: subprocess.CompletedProcess[str], what: str) -> None:
    if done.returncode != 0:
        reason = "not root" if os.geteuid() != 0 else "refused here"
        pytest.skip(f"cannot mount {what} ({reason}): {done.stderr.strip()}")


@pytest.fixture
def tmpfs(deployment: Deployment) -> Iterator[Path]:
    """The hub's data dir on an 8 MiB tmpfs, mounted before the hub starts and unmounted after
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
    """The hub's data dir on ext4 in a loop-mounted image, which the kernel can turn read-only
    under open files (``errors=remount-ro``) and ``e2fsck`` can repair."""

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
        """Unmount, check and mount again, as an administrator does (the kernel keeps a file
        system it switched to read-only so until it is unmounted)."""
        r = subprocess.run(["umount", str(self.data_dir)], capture_output=True, text=True)
        print("DEBUG umount", r.returncode, r.stderr, subprocess.run(["losetup", "-j", str(self.image)], capture_output=True, text=True).stdout)
        if r.returncode:
            print("DEBUG fuser", subprocess.run(["fuser", "-vm", str(self.data_dir)], capture_output=True, text=True))
            print("DEBUG lsof", subprocess.run(f"ls -l /proc/*/fd 2>/dev/null | grep hub-data; grep hub-data /proc/*/maps", shell=True, capture_output=True, text=True).stdout[:3000])
            _unmount(self.data_dir)
        fsck = subprocess.run(
            ["e2fsck", "-fy", str(self.image)], capture_output=True, text=True, check=False
        )
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        mounted = self.mount()
        assert mounted.returncode == 0, mounted.stderr


@pytest.fixture
def ext4_disk(deployment: Deployment, tmp_path: Path) -> Iterator[Ext4]:
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
    """Write zeros to a file in ``directory`` until its file system has no page left."""
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
    path = deployment.directory / "hub-data" / "runs" / run_id / f"checkpoint-{ROUNDS:06d}.pln"
    return np.asarray(checkpoint.decode(path.read_bytes()).arrays["w"])


# --- the steps both tests take --------------------------------------------------------------


def start_run(deployment: Deployment, tmp_path: Path) -> tuple[Path, BackgroundRun, str]:
    app = write_tiny_app(tmp_path / "app", **APP_CONFIG)
    deployment.start_hub()
    deployment.start_nodes([app] * 3)
    run = deployment.start_run(app)
    run.wait_for_output("submitted")
    found = re.search(r"run (\w+) submitted", run.process.stdout)
    assert found, run.process.stdout
    run_id = found.group(1)
    wait_for(lambda: progress(deployment, run_id)[1] >= FAULT_AFTER_ROUND, "round 2 recorded")
    return app, run, run_id


def check_refused(deployment: Deployment, app: Path, tmp_path: Path) -> float:
    """New work is refused, with the clear error and no traceback: the same app again (its
    archive is stored already) and another app. Returns the seconds a refusal took."""
    other = write_tiny_app(tmp_path / "other-app", **{"num-rounds": 1})
    started = time.monotonic()
    for submitted in (app, other):
        result = deployment.run(submitted, "--rounds", "1")
        output = result.stdout + result.stderr
        print("DEBUG", repr(output))
        assert result.returncode != 0, output
        assert CLEAR_ERROR in " ".join(output.split()), output
        assert HINT in " ".join(output.split()), output
        assert "Traceback" not in output, output
        assert "submitted" not in result.stdout, output
    return (time.monotonic() - started) / 2


def paused_detail(deployment: Deployment, run_id: str) -> str:
    """The run's line in ``pollinate ls`` once it says the run is paused (bounded wait)."""

    def line() -> str:
        listed = deployment.cli("ls", "--hub", deployment.control)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        text = " ".join(listed.stdout.split())
        return text if f"{run_id}" in text and "paused" in text else ""

    return str(wait_for(line, "`pollinate ls` to show the run paused", PAUSE_TIMEOUT))


def check_finished(deployment: Deployment, run: BackgroundRun, run_id: str) -> None:
    """The run ends by itself with every round once and the model the app's math predicts."""
    result = run.finish(timeout=90)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.history is not None
    assert [r["round"] for r in result.history] == list(range(ROUNDS + 1))
    rounds = recorded_rounds(deployment, run_id)
    assert sorted(int(str(r["round"])) for r in rounds) == list(range(ROUNDS + 1))
    assert progress(deployment, run_id) == ("finished", ROUNDS)
    losses = [float(r["centralized"]["loss"]) for r in rounds]  # type: ignore[index]
    assert np.allclose(np.diff(losses), 4 * STEP)
    model = final_model(deployment, run_id)
    assert np.allclose(model, np.full(4, ROUNDS * STEP)), model


def _hub(deployment: Deployment) -> Process:
    [hub] = [p for p in deployment.processes if p.name.startswith("hub") and p.alive()]
    return hub


# --- the tests ------------------------------------------------------------------------------


def test_a_full_disk_pauses_the_run_refuses_new_work_and_the_run_goes_on_once_freed(
    deployment: Deployment, tmpfs: Path, tmp_path: Path
) -> None:
    """Fault: the hub's data dir (a tmpfs) is filled to its last page after round 2 of an
    8-round run is recorded, for a few seconds, then the filler is deleted.

    Expectation: submissions are refused (exit status != 0, the clear error and its hint, no
    traceback); ``pollinate ls`` shows the run paused with the reason; the rounds recorded
    before the fault stay in the run's log; once the filler is gone the run goes on by itself
    and finishes with every round 0..8 once and each entry of the model at 8 * 14/6.

    Measured: how long the hub took to show the pause, a refusal, and the run to go on after
    the disk was freed.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    db = sqlite3.connect(tmpfs / "hub.db", timeout=10)
    try:
        print("DEBUG ckpt", db.execute("PRAGMA wal_checkpoint(RESTART)").fetchall())
    finally:
        db.close()
    filler = fill(tmpfs)
    filled = time.monotonic()
    before = recorded_rounds(deployment, run_id)
    assert len(before) >= FAULT_AFTER_ROUND + 1

    detail = paused_detail(deployment, run_id)
    paused_after = time.monotonic() - filled
    assert CLEAR_ERROR in detail and "No space left on device" in detail, detail
    refusal = check_refused(deployment, app, tmp_path)
    assert recorded_rounds(deployment, run_id) == before
    paused_round = progress(deployment, run_id)
    assert paused_round == ("running", len(before) - 1)

    filler.unlink()
    freed = time.monotonic()
    wait_for(
        lambda: progress(deployment, run_id)[1] > paused_round[1],
        "the run to record a round after the disk was freed",
        timeout=60,
    )
    went_on = time.monotonic() - freed
    check_finished(deployment, run, run_id)
    assert recorded_rounds(deployment, run_id)[: len(before)] == before
    print(
        f"measured: disk full after round {paused_round[1]}; `pollinate ls` showed the run "
        f"paused {paused_after:.1f} s later; a submission was refused in {refusal:.1f} s; "
        f"the run recorded its next round {went_on:.1f} s after the disk was freed and "
        f"finished with rounds 0..{ROUNDS} once and the predicted model"
    )


def test_a_read_only_data_dir_pauses_the_run_and_a_restarted_hub_resumes_it(
    deployment: Deployment, ext4_disk: Ext4, tmp_path: Path
) -> None:
    """Fault: after round 2 of an 8-round run is recorded, the kernel turns the hub's data
    dir (ext4, ``errors=remount-ro``) read-only under the running hub; the hub is SIGKILLed
    while it is; the file system is repaired (unmount, e2fsck, mount) and a new hub started.

    Expectation: while read-only, submissions are refused with the clear error and
    ``pollinate ls`` shows the run paused with the reason; nothing recorded before is lost
    (the database, read after the repair, still has those rounds); the restarted hub resumes
    the run from its last recorded round ("hub restarted" in ``pollinate log``), and the run
    finishes with every round once and each entry of the model at 8 * 14/6.

    Measured: how long the hub took to show the pause, and the resumed round.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    before = recorded_rounds(deployment, run_id)
    ext4_disk.turn_read_only()
    faulted = time.monotonic()

    detail = paused_detail(deployment, run_id)
    paused_after = time.monotonic() - faulted
    assert CLEAR_ERROR in detail and "Read-only file system" in detail, detail
    refusal = check_refused(deployment, app, tmp_path)

    _hub(deployment).kill()
    ext4_disk.repair()
    print("DEBUG mounts", [l for l in open("/proc/mounts") if "hub-data" in l])
    print("DEBUG files", sorted((p.name, p.stat().st_size) for p in ext4_disk.data_dir.iterdir()))
    print("DEBUG dmesg", subprocess.run(["dmesg"], capture_output=True, text=True).stdout[-1500:])
    after = recorded_rounds(deployment, run_id)
    assert after[: len(before)] == before
    resumed_round = progress(deployment, run_id)
    assert resumed_round[0] == "running"
    deployment.restart_hub()
    check_finished(deployment, run, run_id)

    log = deployment.cli("log", run_id, "--hub", deployment.control)
    expected = f"hub restarted (restart 1): run {run_id} resumes after round {resumed_round[1]}"
    assert expected in log.stdout, log.stdout + log.stderr
    print(
        f"measured: read-only after round {len(before) - 1}; `pollinate ls` showed the run "
        f"paused {paused_after:.1f} s later; a submission was refused in {refusal:.1f} s; "
        f"{len(after)} rounds on disk after the repair; the restarted hub resumed after round "
        f"{resumed_round[1]} and the run finished with every round once and the predicted model"
    )


def test_a_hub_started_on_a_read_only_data_dir_resumes_its_run_once_the_dir_is_writable(
    deployment: Deployment, tmpfs: Path, tmp_path: Path
) -> None:
    """Fault: after round 2 of an 8-round run is recorded, the hub is SIGKILLed, its data dir
    (a tmpfs) remounted read-only, and a new hub started on it; later remounted read-write
    under the running hub.

    Expectation: the hub starts and serves; submissions are refused with the clear error;
    ``pollinate ls`` shows the run paused with the reason; once the data dir is writable the
    run resumes by itself (no other restart) from its last recorded round and finishes with
    every round once and each entry of the model at 8 * 14/6.

    Measured: how long the run took to go on after the remount.
    """
    app, run, run_id = start_run(deployment, tmp_path)
    _hub(deployment).kill()
    remounted = _mount("-o", "remount,ro", str(tmpfs))
    assert remounted.returncode == 0, remounted.stderr
    recorded = progress(deployment, run_id)
    deployment.restart_hub()
    detail = paused_detail(deployment, run_id)
    print("DEBUG", detail)
    check_refused(deployment, app, tmp_path)
    remounted = _mount("-o", "remount,rw", str(tmpfs))
    assert remounted.returncode == 0, remounted.stderr
    writable = time.monotonic()
    wait_for(
        lambda: progress(deployment, run_id)[1] > recorded[1],
        "the run to record a round after the remount",
        timeout=30,
    )
    went_on = time.monotonic() - writable
    check_finished(deployment, run, run_id)
    log = deployment.cli("log", run_id, "--hub", deployment.control)
    expected = f"hub restarted (restart 1): run {run_id} resumes after round {recorded[1]}"
    assert expected in log.stdout, log.stdout + log.stderr
    print(f"measured: {went_on:.1f}")
