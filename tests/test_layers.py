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
    "records": 1,
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
    "cli": 8,
    "__init__": 9,
    "__main__": 9,
}


def layer_of(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else "__init__"]


def pollinate_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pollinate"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pollinate"))
    return found


def test_layers_import_downward_only() -> None:
    violations = []
    for path in SRC.rglob("*.py"):
        relative = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(relative.parts)
        if module.endswith(".__init__") and module != "pollinate.__init__":
            module = module.removesuffix(".__init__")
        own = layer_of(module if module != "pollinate.__init__" else "pollinate")
        for imported in pollinate_imports(path):
            if imported != "pollinate" and layer_of(imported) > own:
                violations.append(f"{module} (layer {own}) imports {imported}")
    assert violations == []


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
