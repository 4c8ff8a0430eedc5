"""Loading an app from its directory: ``pyproject.toml``'s ``[tool.pollinate]`` table.

::

    [tool.pollinate]
    server = "mypkg.server:server_fn"    # server_fn(run_config) -> ServerApp
    client = "mypkg.client:client_fn"    # client_fn(context) -> Client
    select = "gpus>=1"                   # on a hub, only the nodes that match (optional)

    [tool.pollinate.config]              # the run config: defaults, overridable per run
    learning-rate = 0.1

    [tool.pollinate.simulation]
    clients = 20                         # virtual clients
    concurrency = 2                      # clients trained at once (default: CPU count)

A Flower app's ``[tool.flwr.app]`` is read as it is when there is no ``[tool.pollinate]``:
``components.serverapp`` / ``clientapp`` name its ``ServerApp`` / ``ClientApp`` (from
``pollinate.flower``, which are callable as ``server_fn`` / ``client_fn``), ``config`` is the
run config, and ``[tool.flwr.federations.<default>] options.num-supernodes`` the number of
virtual clients (``_from_flower``).

Every mistake (missing file, typo in a key, a function that does not exist, a config value
of the wrong type) raises ``AppError`` that names the problem and the fix.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import sys
import tomllib
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pollinate.client.client import ClientFn
from pollinate.errors import AppError
from pollinate.loop.app import ServerApp
from pollinate.placement import SelectorError, parse_selector
from pollinate.records import Config, Scalar, check_scalars
from pollinate.text import MAX_TEXT, inert, name_problem

ServerFn = Callable[[Config], ServerApp]

_APP_KEYS = ("server", "client", "config", "simulation", "select")
_SIMULATION_KEYS = ("clients", "concurrency")


@dataclass(frozen=True)
class App:
    """An app read from its directory; ``config`` already carries any overrides."""

    path: Path
    name: str
    server_fn: ServerFn
    client_fn: ClientFn
    config: Config = field(default_factory=dict)
    clients: int = 10
    concurrency: int | None = None
    select: str = ""
    """The nodes a run on a hub may use (``pollinate.placement``); empty: every node."""

    def server_app(self) -> ServerApp:
        """Call ``server_fn`` with the run config and check what it returns."""
        server_app = self.server_fn(dict(self.config))
        if not isinstance(server_app, ServerApp):
            raise AppError(
                f"server_fn of app {self.name!r} returned {type(server_app).__name__}, "
                "not a ServerApp.\nHint: return ServerApp(strategy=FedAvg(), num_rounds=...)"
            )
        return server_app


def load_app(path: str | Path, overrides: Mapping[str, str] | None = None) -> App:
    """Read the app in ``path``, apply ``key=value`` config overrides and import its code."""
    root = Path(path).resolve()
    table = _read_table(root)
    _check_keys(table, _APP_KEYS, "[tool.pollinate]", root)
    simulation = table.get("simulation", {})
    _check_keys(simulation, _SIMULATION_KEYS, "[tool.pollinate.simulation]", root)
    config = _apply_overrides(_defaults(table, root), overrides or {})
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return App(
        path=root,
        name=_app_name(root),
        server_fn=_import_ref(table, "server", root),
        client_fn=_import_ref(table, "client", root),
        config=config,
        clients=_positive_int(simulation, "clients", 10),
        concurrency=_positive_int(simulation, "concurrency", None),
        select=_selector(table, root),
    )


def app_hash(path: str | Path) -> str:
    """SHA-256 over the app's pyproject.toml and Python files: the app's code identity."""
    root = Path(path).resolve()
    digest = hashlib.sha256()
    files = sorted([root / "pyproject.toml", *root.rglob("*.py")])
    for file in files:
        if "__pycache__" in file.parts or not file.is_file():
            continue
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        digest.update(file.read_bytes() + b"\0")
    return digest.hexdigest()


def _app_name(root: Path) -> str:
    """``[project] name`` from pyproject.toml, else the directory's name."""
    project = tomllib.loads((root / "pyproject.toml").read_text()).get("project", {})
    name = project.get("name") if isinstance(project, dict) else None
    return name if isinstance(name, str) and name else root.name


def _read_table(root: Path) -> dict[str, Any]:
    pyproject = root / "pyproject.toml"
    if not root.exists():
        raise AppError(
            f"{root} does not exist.\nHint: point at the app's directory (the one with "
            "pyproject.toml), e.g. `pollinate run examples/quickstart-numpy`."
        )
    if not pyproject.is_file():
        raise AppError(
            f"{root} has no pyproject.toml, so it is not a pollinate app.\n"
            "Hint: point at the app's directory (the one with pyproject.toml), e.g. "
            "`pollinate run examples/quickstart-numpy`."
        )
    try:
        data = tomllib.loads(pyproject.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise AppError(f"{pyproject} is not valid TOML: {exc}") from None
    table = data.get("tool", {}).get("pollinate")
    flower = data.get("tool", {}).get("flwr")
    if table is None and isinstance(flower, dict) and "app" in flower:
        return _from_flower(flower, pyproject)
    if not isinstance(table, dict):
        raise AppError(
            f"{pyproject} has no [tool.pollinate] table.\nHint: add\n  [tool.pollinate]\n"
            '  server = "mypkg.server:server_fn"\n  client = "mypkg.client:client_fn"'
        )
    return table


def _from_flower(flower: dict[str, Any], pyproject: Path) -> dict[str, Any]:
    """``[tool.flwr.app]`` as the ``[tool.pollinate]`` table it stands for."""
    app = flower["app"]
    components = app.get("components") if isinstance(app, dict) else None
    if not isinstance(components, dict) or not {"serverapp", "clientapp"} <= set(components):
        raise AppError(
            f"{pyproject} has [tool.flwr.app] but no serverapp and clientapp in "
            '[tool.flwr.app.components].\nHint: serverapp = "mypkg.server_app:app" and '
            'clientapp = "mypkg.client_app:app", each imported from pollinate.flower'
        )
    table: dict[str, Any] = {
        "server": components["serverapp"],
        "client": components["clientapp"],
        "config": _flat(app.get("config", {})),
    }
    federations = flower.get("federations", {})
    default = federations.get(federations.get("default", ""), {})
    options = default.get("options", {}) if isinstance(default, dict) else {}
    if isinstance(options, dict) and "num-supernodes" in options:
        table["simulation"] = {"clients": options["num-supernodes"]}
    return table


def _flat(config: Any, prefix: str = "") -> Any:
    """Flower's nested run config flattened as Flower does: ``{"a": {"b": 1}}`` is
    ``{"a.b": 1}``."""
    if not isinstance(config, dict):
        return config
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _check_keys(table: Any, known: Iterable[str], where: str, root: Path) -> None:
    if not isinstance(table, dict):
        raise AppError(f"{where} in {root / 'pyproject.toml'} must be a table")
    for key in table:
        if key not in known:
            raise AppError(
                f"unknown key {key!r} in {where} of {root / 'pyproject.toml'}."
                f"{_did_you_mean(key, known)} Known keys: {', '.join(known)}."
            )


def _selector(table: dict[str, Any], root: Path) -> str:
    """``[tool.pollinate] select``, checked: a selector that does not parse fails here, at
    load, not at the hub."""
    text = table.get("select", "")
    if not isinstance(text, str):
        raise AppError(
            f"[tool.pollinate] select in {root / 'pyproject.toml'} must be a string, got "
            f'{text!r}.\nHint: select = "gpus>=1,region in (eu,ch)"'
        )
    try:
        return str(parse_selector(text))
    except SelectorError as exc:
        raise AppError(f"[tool.pollinate] select in {root / 'pyproject.toml'}: {exc}") from None


def _defaults(table: dict[str, Any], root: Path) -> Config:
    try:
        config = check_scalars(table.get("config", {}), "[tool.pollinate.config]")
    except (TypeError, ValueError) as exc:
        raise AppError(f"{root / 'pyproject.toml'}: {exc}") from None
    for key, value in table.get("config", {}).items():
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise AppError(
                f"{root / 'pyproject.toml'}: [tool.pollinate.config] {key} is a string of "
                f"{len(value)} characters; config values hold at most {MAX_TEXT} "
                "(pollinate.text.MAX_TEXT).\nHint: put long data in a file the app reads."
            )
    return config


def _apply_overrides(defaults: Config, overrides: Mapping[str, str]) -> Config:
    config = dict(defaults)
    for key, text in overrides.items():
        _check_override(key, text)
        if key not in defaults:
            raise AppError(
                f"--config {key}={text}: the app has no config key {key!r}."
                f"{_did_you_mean(key, defaults)} Known keys: {', '.join(defaults) or 'none'}."
            )
        config[key] = _parse_like(key, text, defaults[key])
    return config


def _check_override(key: str, text: str) -> None:
    """A user's ``--config key=value``, refused (not cut) when over the text limits."""
    problem = name_problem(key)
    if problem is not None:
        raise AppError(f"--config {inert(key, 60)}=...: the key {problem}")
    if len(text) > MAX_TEXT:
        raise AppError(
            f"--config {key}={inert(text, 60)}: the value has {len(text)} characters; config "
            f"values hold at most {MAX_TEXT} (pollinate.text.MAX_TEXT)"
        )


def _parse_like(key: str, text: str, default: Scalar) -> Scalar:
    """Parse ``text`` as a TOML value of the default's type (an int is fine for a float)."""
    try:
        value: Any = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word is a string
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if type(value) is not type(default):
        raise AppError(
            f"--config {key}={text}: expected {type(default).__name__} (like the default "
            f"{default!r}), got {type(value).__name__}."
        )
    return value


def _import_ref(table: dict[str, Any], key: str, root: Path) -> Any:
    ref = table.get(key)
    what = "server_fn(run_config) -> ServerApp" if key == "server" else "client_fn(context)"
    if not isinstance(ref, str) or ":" not in ref:
        raise AppError(
            f"[tool.pollinate] {key} = {ref!r} in {root / 'pyproject.toml'}: expected "
            f'"module:function" naming {what}.\nHint: {key} = "mypkg.{key}:{key}_fn"'
        )
    module_name, _, attr = ref.partition(":")
    module = _import_module(module_name, f"[tool.pollinate] {key} = {ref!r}", root)
    fn = getattr(module, attr, None)
    if not callable(fn):
        names = [n for n in dir(module) if not n.startswith("_")]
        raise AppError(
            f"[tool.pollinate] {key} = {ref!r}: module {module_name!r} has no function "
            f"{attr!r}.{_did_you_mean(attr, names)}"
        )
    return fn


def _import_module(name: str, where: str, root: Path) -> Any:
    """Import the app's module ``name``; each way it can fail is an ``AppError`` on one
    line: not in the app, a package the app needs not installed, a syntax error, or the
    module raising as it loads."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or name
        if name == missing or name.startswith(missing + "."):
            raise AppError(
                f"{where}: the app has no module {missing!r} (looked in {root}).\n"
                "Hint: module paths are relative to the app directory, e.g. "
                "mypkg.server for mypkg/server.py."
            ) from None
        raise AppError(
            f"{where}: module {name!r} imports {missing!r}, which is not installed.\n"
            "Hint: install the app's dependencies (its pyproject.toml [project] "
            f"dependencies), e.g. `pip install -e {root}`."
        ) from None
    except SyntaxError as exc:
        raise AppError(
            f"{exc.filename}:{exc.lineno}: syntax error in the app: {exc.msg} ({where})"
        ) from None
    except Exception as exc:  # the app's own code, run as it loads, may raise anything
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        raise AppError(
            f"{where}: importing {name!r} raised {type(exc).__name__}: {exc} "
            f"(at {frame.filename}:{frame.lineno})"
        ) from None


def _positive_int(table: dict[str, Any], key: str, default: int | None) -> Any:
    value = table.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise AppError(f"[tool.pollinate.simulation] {key} must be an int >= 1, got {value!r}")
    return value


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""
