"""Runs at the hub: an uploaded app is unpacked safely, checked, and run by its own code."""

from __future__ import annotations

import io
import sys
import tempfile
import threading
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pollinate.app import app_hash
from pollinate.errors import AppError
from pollinate.hub import archives as apps_module
from pollinate.hub import runs as runs_module
from pollinate.hub.archives import pack_app
from pollinate.hub.fleet import Fleet
from pollinate.hub.journal import Journal
from pollinate.hub.runs import Runs
from pollinate.hub.state import HubState
from pollinate.loop.events import Event
from tests.deployment.apps import write_tiny_app

TIMEOUT = 30.0
PYPROJECT = b'[tool.pollinate]\nserver = "m:s"\nclient = "m:c"\n'


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Apps loaded here import ``tiny_app``: leave no trace of it for other tests."""
    modules, path = set(sys.modules), list(sys.path)
    yield
    for name in set(sys.modules) - modules:
        del sys.modules[name]
    sys.path[:] = path


@pytest.fixture
def runs(tmp_path: Path) -> Iterator[Runs]:
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    yield runs
    runs.join(TIMEOUT)
    state.close()


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _hash_of_zip(archive: bytes) -> str:
    """The app hash of what ``archive`` unpacks to (for an archive that hashes right but
    holds no loadable app)."""
    with tempfile.TemporaryDirectory() as directory:
        return app_hash(apps_module.unpack(archive, Path(directory)))


def submit(runs: Runs, app: Path, rounds: int = 0, **overrides: str) -> str:
    return runs.submit(pack_app(app), app_hash(app), overrides, rounds, seed=0)


def ended(runs: Runs, run_id: str) -> Any:
    runs.join(TIMEOUT)
    row = runs.state.run(run_id)
    assert row is not None and row.status != "running", "the run did not end"
    return row


# --- submitting -------------------------------------------------------------------------------


def test_an_archive_that_is_not_the_declared_app_is_refused(runs: Runs, tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    with pytest.raises(AppError, match=f"hashes to {app_hash(app)[:12]}, not 000000000000"):
        runs.submit(pack_app(app), "0" * 64, {}, 0, 0)
    assert runs.state.runs() == []


def test_an_oversized_archive_is_refused(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps_module, "MAX_ARCHIVE_BYTES", 100)
    with pytest.raises(AppError, match="the limit is 100"):
        submit(runs, write_tiny_app(tmp_path / "app"))


def test_an_unknown_override_is_refused_with_a_suggestion(runs: Runs, tmp_path: Path) -> None:
    with pytest.raises(AppError, match="Did you mean 'num-rounds'"):
        submit(runs, write_tiny_app(tmp_path / "app"), **{"num-round": "3"})


def stored(runs: Runs) -> list[str]:
    """Every file the hub keeps of submitted apps: archives and unpacked apps."""
    root = runs.state.data_dir
    found = [*(root / "blobs").rglob("*"), *(root / "apps").rglob("*")]
    return sorted(str(p.relative_to(root)) for p in found if p.is_file())


@pytest.mark.parametrize(
    ("archive", "declared", "overrides", "reason"),
    [
        (lambda app: pack_app(app), lambda app: "0" * 64, {}, "hashes to"),
        (lambda app: b"PK\x03\x04 not a zip", lambda app: "0" * 64, {}, "not a valid zip"),
        (
            lambda app: zip_of({"pyproject.toml": PYPROJECT, "../evil.py": b""}),
            lambda app: "0" * 64,
            {},
            "unsafe path",
        ),
        (lambda app: pack_app(app), app_hash, {"num-round": "3"}, "Did you mean"),
        (
            lambda app: zip_of({"pyproject.toml": PYPROJECT}),
            lambda app: _hash_of_zip(zip_of({"pyproject.toml": PYPROJECT})),
            {},
            "the app has no module 'm'",
        ),
    ],
    ids=["not the declared app", "not a zip", "unsafe path", "unknown override", "cannot load"],
)
def test_a_refused_submission_leaves_nothing_on_disk(
    runs: Runs,
    tmp_path: Path,
    archive: Callable[[Path], bytes],
    declared: Callable[[Path], str],
    overrides: dict[str, str],
    reason: str,
) -> None:
    app = write_tiny_app(tmp_path / "app")
    with pytest.raises(AppError, match=reason):
        runs.submit(archive(app), declared(app), overrides, 0, 0)
    assert stored(runs) == []
    assert runs.state.runs() == []


def test_a_refused_submission_keeps_the_app_a_run_uses_and_the_run_still_resumes(
    tmp_path: Path,
) -> None:
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    app = write_tiny_app(tmp_path / "app")
    run_id = submit(runs, app)
    ended(runs, run_id)
    kept = stored(runs)
    assert kept  # its archive and its unpacked app

    with pytest.raises(AppError, match="Did you mean"):  # the same bytes, refused
        submit(runs, app, **{"num-round": "3"})
    assert stored(runs) == kept

    state.update_run(run_id, status="running")  # as if the hub died before it noted the end
    state.close()
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    runs.resume_all()
    assert ended(runs, run_id).status == "finished"
    state.close()


def test_a_refused_submission_keeps_the_archive_another_submission_of_it_is_recording(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = write_tiny_app(tmp_path / "app")
    loading, refused = threading.Event(), threading.Event()
    start_process = runs_module.start_process

    def load_slowly_unless_refused(app_dir: Path, overrides: dict[str, str], *args: Any) -> Any:
        if overrides:  # the submission with overrides is refused at once
            return start_process(app_dir, overrides, *args)
        loading.set()
        assert refused.wait(TIMEOUT), "the other submission was never refused"
        return start_process(app_dir, overrides, *args)

    monkeypatch.setattr(runs_module, "start_process", load_slowly_unless_refused)
    first: list[str] = []
    thread = threading.Thread(target=lambda: first.append(submit(runs, app)))
    thread.start()
    assert loading.wait(TIMEOUT)
    with pytest.raises(AppError, match="Did you mean"):
        submit(runs, app, **{"num-round": "3"})
    refused.set()
    thread.join(TIMEOUT)

    assert len(first) == 1  # recorded, with its archive still there to resume from
    row = runs.state.run(first[0])
    assert row is not None and runs.state.blob_path(row.archive).is_file()
    assert (runs.state.data_dir / "apps" / row.archive / "app" / "pyproject.toml").is_file()


def test_a_run_is_recorded_and_logged_to_its_end(runs: Runs, tmp_path: Path) -> None:
    run_id = submit(runs, write_tiny_app(tmp_path / "app"), rounds=0)
    row = ended(runs, run_id)
    assert (row.status, row.app, row.rounds, row.detail) == ("finished", "tiny-app", 0, "")
    log = runs.state.log_after(run_id, 0)
    assert [entry.kind for entry in log] == ["status", "round", "status"]
    assert log[-1].text == f"run {run_id} finished"


def test_a_server_fn_that_raises_fails_the_run_with_the_reason(runs: Runs, tmp_path: Path) -> None:
    run_id = submit(runs, write_tiny_app(tmp_path / "app"), strategy="FedNope")
    row = ended(runs, run_id)
    assert (row.status, row.detail) == ("failed", "ValueError: unknown strategy 'FedNope'")
    assert runs.state.log_after(run_id, 0)[-1].text == f"run {run_id} failed: {row.detail}"


def test_a_run_that_ended_has_its_last_line_in_the_log_before_its_status_changes(
    runs: Runs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a follower stops once it sees the status change: the line must already be there
    last_line_then: list[str] = []
    update_run = runs.state.update_run

    def spying_update_run(run_id: str, **fields: Any) -> None:
        if fields.get("status") not in (None, "running"):
            last_line_then.append(runs.state.log_after(run_id, 0)[-1].text)
        update_run(run_id, **fields)

    monkeypatch.setattr(runs.state, "update_run", spying_update_run)
    run_id = submit(runs, write_tiny_app(tmp_path / "app"))
    ended(runs, run_id)
    assert last_line_then == [f"run {run_id} finished"]


def test_each_version_of_an_app_runs_its_own_code(runs: Runs, tmp_path: Path) -> None:
    # two versions share module names; Python's module cache must not hand version 2 the
    # code of version 1
    first = write_tiny_app(tmp_path / "v1")
    second = write_tiny_app(tmp_path / "v2")
    server = second / "tiny_app" / "server.py"
    server.write_text(
        server.read_text().replace(
            "def server_fn(run_config):\n",
            "def server_fn(run_config):\n    raise ValueError('this is version 2')\n",
        )
    )
    assert ended(runs, submit(runs, first)).status == "finished"
    assert ended(runs, submit(runs, second)).detail == "ValueError: this is version 2"
    assert ended(runs, submit(runs, first)).status == "finished"


def test_stop_says_why_a_run_cannot_be_stopped(runs: Runs, tmp_path: Path) -> None:
    assert runs.stop("nope") == "no run 'nope'; `pollinate ls` lists the runs"
    run_id = submit(runs, write_tiny_app(tmp_path / "app"))
    ended(runs, run_id)
    assert runs.stop(run_id) == f"run {run_id} is finished, not running"


def test_a_run_that_was_running_when_the_hub_stopped_resumes_after_its_last_round(
    tmp_path: Path,
) -> None:
    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    run_id = submit(runs, write_tiny_app(tmp_path / "app"))
    ended(runs, run_id)
    state.update_run(run_id, status="running")  # as if the hub died before it noted the end
    state.close()

    state = HubState(tmp_path / "hub")
    runs = Runs(state, Fleet(), Journal(state))
    runs.resume_all()
    row = ended(runs, run_id)
    assert row.status == "finished"
    log = [(e.kind, e.text) for e in state.log_after(run_id, 0)]
    assert ("resume", f"hub restarted (restart 1): run {run_id} resumes after round 0") in log
    assert len([text for kind, text in log if kind == "round"]) == 1  # nothing ran twice
    state.close()


# --- events -----------------------------------------------------------------------------------


def test_subscribers_see_every_runs_events_tagged_with_its_id(runs: Runs, tmp_path: Path) -> None:
    seen: list[tuple[str, Event]] = []
    unsubscribe = runs.events.subscribe(lambda run_id, event: seen.append((run_id, event)))
    first = submit(runs, write_tiny_app(tmp_path / "app"), rounds=0)
    ended(runs, first)
    assert [(run_id, type(e).__name__) for run_id, e in seen] == [(first, "RoundFinished")]
    unsubscribe()
    ended(runs, submit(runs, write_tiny_app(tmp_path / "app2"), rounds=0))
    assert len(seen) == 1  # unsubscribed: the second run's events went to nobody


def test_a_subscriber_that_raises_is_cut_off_and_the_run_goes_on(
    runs: Runs, tmp_path: Path
) -> None:
    calls: list[str] = []

    def broken(run_id: str, event: Event) -> None:
        calls.append(run_id)
        raise RuntimeError("a dashboard bug")

    runs.events.subscribe(broken)
    run_id = submit(runs, write_tiny_app(tmp_path / "app"), rounds=0)
    assert ended(runs, run_id).status == "finished"
    ended(runs, submit(runs, write_tiny_app(tmp_path / "app2"), rounds=0))
    assert calls == [run_id]


def test_a_hub_on_a_relative_data_dir_runs_its_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the run process works in a scratch dir of its own: paths it gets must not be relative
    monkeypatch.chdir(tmp_path)
    state = HubState(Path("relative-hub"))
    runs = Runs(state, Fleet(), Journal(state))
    try:
        run_id = submit(runs, write_tiny_app(Path("app")), rounds=0)
        assert ended(runs, run_id).status == "finished"
    finally:
        runs.join(TIMEOUT)
        state.close()
