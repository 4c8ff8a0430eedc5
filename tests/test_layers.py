"""The layering stays true by itself: each module imports only from layers below it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "pollinate"

# DESIGN.md's layers; modules beside the stack (datasets) sit low and import nothing above.
LAYERS = {
    "errors": 0,
    "text": 0,
    "checks": 0,
    "npz": 0,
    "scratch": 0,
    "recycle": 0,
    "dirlock": 1,
    "artifacts": 2,
    "records": 1,
    "placement": 1,
    "datasets": 1,
    "wire": 2,
    "client": 3,
    "frameworks": 3,
    "secagg": 3,
    "aggregate": 4,
    "strategy": 4,
    "loop": 5,
    "app": 6,
    "simulation": 6,
    "hub": 6,
    "security": 2,
    "transport": 7,
    "node": 7,
    "dp": 7,
    "tracking": 7,
    "plot": 7,
    "cli": 8,
    "dashboard": 8,
    "flower": 8,
    "__init__": 9,
    "__main__": 9,
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def module_name(path: Path) -> str:
    """``src/pollinate/loop/run.py`` is ``pollinate.loop.run``; a package is its ``__init__``."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in SRC.rglob("*.py")}


def import_statements(source: str) -> set[tuple[str, str | None]]:
    """``(module, name)`` for every ``from module import name`` of pollinate in ``source``,
    ``(module, None)`` for every ``import module``; at any depth (imports inside functions
    count: they run too, only later)."""
    found: set[tuple[str, str | None]] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pollinate":
            assert node.level == 0, "pollinate imports itself by absolute names"
            found.update((str(node.module), alias.name) for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update((a.name, None) for a in node.names if a.name.split(".")[0] == "pollinate")
    return found


def modules_used(source: str) -> set[str]:
    """What the imports use: ``from pollinate import wire`` uses the module ``pollinate.wire``,
    ``from pollinate import FedAvg`` the package ``pollinate`` (its public face, layer 9)."""
    used = set()
    for module, name in import_statements(source):
        used.add(f"{module}.{name}" if f"{module}.{name}" in MODULES else module)
    return used


def modules_loaded(source: str) -> set[str]:
    """What the imports need loaded, for the import graph: ``from package import name`` reads
    the package's namespace, so it needs the package (``from pollinate import wire`` inside a
    module the root imports is a cycle through the root), and the module ``package.name`` if
    there is one."""
    loaded = set()
    for module, name in import_statements(source):
        loaded.add(module)
        if f"{module}.{name}" in MODULES:
            loaded.add(f"{module}.{name}")
    return loaded & MODULES.keys()


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """A cycle (``[a, b, a]``) for every back edge of a depth-first search of ``graph``: none
    if and only if the graph has no cycle."""
    cycles: list[list[str]] = []
    path: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if imported in path:
                cycles.append([*path[path.index(imported) :], imported])
            elif imported not in done:
                visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        if module not in done:
            visit(module)
    return cycles


def test_layers_import_downward_only() -> None:
    violations = []
    for module, path in MODULES.items():
        own = layer_of(module)
        for imported in modules_used(path.read_text()):
            if layer_of(imported) > own:
                violations.append(f"{module} (layer {own}) imports {imported}")
    assert violations == []


def test_no_import_cycles() -> None:
    graph = {module: modules_loaded(path.read_text()) for module, path in MODULES.items()}
    cycles = [" -> ".join(cycle) for cycle in import_cycles(graph)]
    assert cycles == [], "import cycles (move what both sides need into a module of its own)"


def test_the_cycle_search_finds_every_kind_of_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c", "d"}, "c": {"a"}, "d": set(), "e": {"e"}}
    assert import_cycles(graph) == [["a", "b", "c", "a"], ["e", "e"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set(), "d": {"b"}}) == []


def test_importing_from_the_root_reads_the_root() -> None:
    source = "from pollinate import wire\nfrom pollinate.loop import grid, Grid\n"
    assert modules_loaded(source) == {
        "pollinate",
        "pollinate.wire",
        "pollinate.loop",
        "pollinate.loop.grid",
    }
    assert modules_used(source) == {"pollinate.wire", "pollinate.loop", "pollinate.loop.grid"}


def test_every_module_has_a_layer() -> None:
    for path in SRC.iterdir():
        if path.name.startswith("_") and path.name not in ("__init__.py", "__main__.py"):
            continue
        if path.suffix == ".py" or (path.is_dir() and (path / "__init__.py").exists()):
            assert path.stem in LAYERS, f"{path.name} has no layer in tests/test_layers.py"


def test_importing_pollinate_loads_no_ml_framework() -> None:
    heavy = ("torch", "sklearn", "tensorflow", "jax", "dp_accounting")
    code = (
        "import sys, pollinate, pollinate.client; "
        f"print(sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_pickle_anywhere_in_the_package() -> None:
    for path in SRC.rglob("*.py"):
        imports = {name.split(".")[0] for name in _all_imports(path)}
        assert not imports & {"pickle", "marshal", "dill", "cloudpickle"}, path


def _all_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
