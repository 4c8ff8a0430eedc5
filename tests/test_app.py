"""Loading an app from pyproject.toml: every mistake is an AppError that says the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from pollinate import AppError, ServerApp
from pollinate.app import app_hash, load_app

GOOD = """
[tool.pollinate]
server = "{pkg}.main:server_fn"
client = "{pkg}.main:client_fn"

[tool.pollinate.config]
learning-rate = 0.1
epochs = 2
name = "x"
shuffle = true

[tool.pollinate.simulation]
clients = 7
"""

CODE = """
import numpy as np
from pollinate import Arrays, FedAvg, NumPyClient, ServerApp

def server_fn(config):
    return ServerApp(FedAvg(), num_rounds=int(config["epochs"]))

class C(NumPyClient):
    pass

def client_fn(context):
    return C()
"""


def make_app(tmp_path: Path, pkg: str, pyproject: str = GOOD, code: str = CODE) -> Path:
    root = tmp_path / pkg.replace("_", "-")
    (root / pkg).mkdir(parents=True)
    (root / pkg / "__init__.py").write_text("")
    (root / pkg / "main.py").write_text(textwrap.dedent(code))
    (root / "pyproject.toml").write_text(pyproject.format(pkg=pkg))
    return root


def test_an_app_loads_with_defaults_and_overrides(tmp_path: Path) -> None:
    app = load_app(make_app(tmp_path, "good_app"), {"learning-rate": "0.5", "epochs": "4"})
    assert app.config == {"learning-rate": 0.5, "epochs": 4, "name": "x", "shuffle": True}
    assert app.clients == 7 and app.concurrency is None
    server = app.server_app()
    assert isinstance(server, ServerApp) and server.num_rounds == 4


def test_override_types_follow_the_defaults(tmp_path: Path) -> None:
    root = make_app(tmp_path, "typed_app")
    assert load_app(root, {"learning-rate": "1"}).config["learning-rate"] == 1.0
    assert load_app(root, {"name": "hello"}).config["name"] == "hello"
    with pytest.raises(AppError, match=r"expected int \(like the default 2\), got float"):
        load_app(root, {"epochs": "2.5"})
    with pytest.raises(AppError, match="expected bool"):
        load_app(root, {"shuffle": "1"})


def test_an_unknown_override_suggests_the_right_key(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="no config key 'learning_rate'.*'learning-rate'"):
        load_app(make_app(tmp_path, "typo_app"), {"learning_rate": "0.1"})


def test_config_text_over_the_limits_is_refused_not_cut(tmp_path: Path) -> None:
    # pollinate.text: a value is at most MAX_TEXT (1,000) characters, a name MAX_NAME (256)
    root = make_app(tmp_path, "long_app")
    assert load_app(root, {"name": "v" * 1000}).config["name"] == "v" * 1000
    with pytest.raises(AppError, match="the value has 1001 characters; config values hold at"):
        load_app(root, {"name": "v" * 1001})
    with pytest.raises(AppError, match="the key is 300 characters long, over the limit of 256"):
        load_app(root, {"k" * 300: "1"})
    with pytest.raises(AppError, match=r"the key holds the control character \\x1b"):
        load_app(root, {"name\x1b[2J": "1"})
    long_default = GOOD.replace('name = "x"', f'name = "{"v" * 1001}"')
    with pytest.raises(AppError, match="name is a string of 1001 characters"):
        load_app(make_app(tmp_path, "long_default", long_default))
    long_name = GOOD.replace("epochs = 2", f"{'e' * 257} = 2")
    with pytest.raises(AppError, match="over the limit of 256"):
        load_app(make_app(tmp_path, "long_name", long_name))


def test_a_typo_in_the_table_is_named_with_a_suggestion(tmp_path: Path) -> None:
    pyproject = GOOD.replace("[tool.pollinate.simulation]", "[tool.pollinate.simulaton]")
    with pytest.raises(AppError, match="unknown key 'simulaton'.*Did you mean 'simulation'"):
        load_app(make_app(tmp_path, "table_typo", pyproject))


def test_a_missing_client_fn_names_the_module_and_function(tmp_path: Path) -> None:
    code = CODE.replace("def client_fn", "def make_client")
    with pytest.raises(AppError, match="has no function 'client_fn'"):
        load_app(make_app(tmp_path, "no_client", code=code))


def test_a_missing_module_is_explained(tmp_path: Path) -> None:
    pyproject = GOOD.replace('"{pkg}.main:client_fn"', '"{pkg}.nothere:client_fn"')
    with pytest.raises(AppError, match="the app has no module 'no_module.nothere'"):
        load_app(make_app(tmp_path, "no_module", pyproject))


def test_a_reference_without_colon_shows_the_expected_form(tmp_path: Path) -> None:
    pyproject = GOOD.replace('"{pkg}.main:server_fn"', '"{pkg}.main.server_fn"')
    with pytest.raises(AppError, match='Hint: server = "mypkg.server:server_fn"'):
        load_app(make_app(tmp_path, "no_colon", pyproject))


def test_not_an_app_directory(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="no pyproject.toml"):
        load_app(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    with pytest.raises(AppError, match=r"no \[tool.pollinate\] table"):
        load_app(tmp_path)
    (tmp_path / "pyproject.toml").write_text("[tool.pollinate\n")
    with pytest.raises(AppError, match="not valid TOML"):
        load_app(tmp_path)


def test_server_fn_must_return_a_server_app(tmp_path: Path) -> None:
    code = CODE.replace(
        'return ServerApp(FedAvg(), num_rounds=int(config["epochs"]))', "return FedAvg()"
    )
    app = load_app(make_app(tmp_path, "wrong_return", code=code))
    with pytest.raises(AppError, match="returned FedAvg, not a ServerApp"):
        app.server_app()


def test_app_hash_changes_with_the_code(tmp_path: Path) -> None:
    root = make_app(tmp_path, "hashed_app")
    before = app_hash(root)
    assert before == app_hash(root) and len(before) == 64
    (root / "hashed_app" / "main.py").write_text(CODE + "\n# changed\n")
    assert app_hash(root) != before


def test_an_apps_selector_is_read_and_checked(tmp_path: Path) -> None:
    assert load_app(make_app(tmp_path, "unplaced")).select == ""
    placed = GOOD.replace(
        "[tool.pollinate]\n", '[tool.pollinate]\nselect = "gpus >= 1, !draining"\n'
    )
    assert load_app(make_app(tmp_path, "placed", placed)).select == "gpus>=1,!draining"
    bad = GOOD.replace("[tool.pollinate]\n", '[tool.pollinate]\nselect = "gpus>=x"\n')
    with pytest.raises(
        AppError, match=r"(?s)\[tool.pollinate\] select in .*pyproject.toml: .*Hint: "
    ):
        load_app(make_app(tmp_path, "misplaced", bad))
    not_text = GOOD.replace("[tool.pollinate]\n", "[tool.pollinate]\nselect = 1\n")
    with pytest.raises(AppError, match="must be a string, got 1"):
        load_app(make_app(tmp_path, "numbered", not_text))
