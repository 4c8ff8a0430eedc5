"""What the CLI says when an app or a command is wrong: one plain line (markup shown as
text), exit 2, no traceback; and the basics: ``--version``, ``-h``, bare ``pollinate``."""

from __future__ import annotations

from pathlib import Path

from pollinate import __version__
from tests.cli.test_exits import tiny_app
from tests.cli_runner import pollinate


def refused(*args: str | Path) -> str:
    """The command's stderr, which must be one user error with exit 2 and no traceback."""
    done = pollinate(*args, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr + done.stdout
    return " ".join(done.stderr.split())


def test_the_table_to_add_survives_in_the_error_that_says_to_add_it(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    message = refused("run", tmp_path)
    assert "has no [tool.pollinate] table" in message
    assert "Hint: add [tool.pollinate] server = " in message


def test_a_missing_path_is_said_to_be_missing(tmp_path: Path) -> None:
    assert f"{tmp_path / 'does-not-exist'} does not exist" in refused(
        "run", tmp_path / "does-not-exist"
    )


def test_a_directory_without_pyproject_is_not_an_app(tmp_path: Path) -> None:
    assert "has no pyproject.toml, so it is not a pollinate app" in refused("run", tmp_path)


def test_a_package_not_installed_is_told_apart_from_a_module_not_in_the_app(
    tmp_path: Path,
) -> None:
    app = tiny_app(tmp_path)
    server = app / "tiny" / "server.py"
    server.write_text("import surely_not_installed_pkg\n" + server.read_text())
    message = refused("run", app)
    assert "module 'tiny.server' imports 'surely_not_installed_pkg', which is not installed" in (
        message
    )
    assert "relative to the app directory" not in message
    server.unlink()
    message = refused("run", app)
    assert "the app has no module 'tiny.server'" in message
    assert "relative to the app directory" in message


def test_a_syntax_error_in_the_app_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    app = tiny_app(tmp_path)
    client = app / "tiny" / "client.py"
    client.write_text(client.read_text() + "\ndef broken(:\n    pass\n")
    line = client.read_text().splitlines().index("def broken(:") + 1
    done = pollinate("run", app, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    [shown] = done.stderr.strip().splitlines()
    assert shown.startswith(f"error: {client}:{line}: syntax error in the app: ")


def test_an_app_module_raising_as_it_loads_is_one_error(tmp_path: Path) -> None:
    app = tiny_app(tmp_path)
    client = app / "tiny" / "client.py"
    client.write_text('raise RuntimeError("no GPU [here]")\n' + client.read_text())
    message = refused("run", app)
    assert "importing 'tiny.client' raised RuntimeError: no GPU [here]" in message
    assert f"(at {client}:1)" in message


def test_version_help_and_bare_pollinate() -> None:
    version = pollinate("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"pollinate {__version__}"
    for args in (["-h"], ["--help"], []):
        done = pollinate(*args)
        assert done.returncode == 0, (args, done.stderr)
        assert "Usage:" in done.stdout and "run" in done.stdout and "node" in done.stdout
    run_help = pollinate("run", "-h")
    assert run_help.returncode == 0 and "--max-failed-rounds" in run_help.stdout
    assert "Exit status: 0" in " ".join(run_help.stdout.split())
