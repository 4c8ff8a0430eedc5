"""``pollinate new NAME --framework F``: a new app from a template that runs as generated.

Templates live in ``cli/templates``: ``common/`` holds what every app has (``pyproject.toml``,
``README.md``, the package's ``__init__``, a FedAvg ``server.py``) and ``<framework>/`` what is
the framework's own (``task.py``, ``client.py``, and a ``server.py`` where the common one does
not fit). Placeholders are ``{{name}}``; the files end in ``.tmpl`` so that no tool mistakes
them for pollinate's own code.
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from pollinate.cli.console import console, fail


@dataclass(frozen=True)
class Framework:
    dependencies: tuple[str, ...]
    learning_rate: float


FRAMEWORKS = {
    "numpy": Framework(("pollinate", "scikit-learn>=1.4"), 0.5),
    "pytorch": Framework(("pollinate[torch]", "scikit-learn>=1.4"), 0.01),
    "keras": Framework(("pollinate[keras]", "scikit-learn>=1.4"), 0.01),
    "jax": Framework(("pollinate[jax]", "scikit-learn>=1.4"), 0.01),
    "sklearn": Framework(("pollinate[sklearn]",), 0.01),
    "xgboost": Framework(("pollinate[xgboost]", "scikit-learn>=1.4"), 0.1),
}
_NAME = re.compile(r"^[a-zA-Z][a-zA-Z0-9_-]*$")


def new(
    name: Annotated[str, typer.Argument(help="Name of the app: also its directory's name.")],
    framework: Annotated[
        str,
        typer.Option(
            "--framework", "-f", help=f"The ML framework: {', '.join(FRAMEWORKS)}.", metavar="F"
        ),
    ] = "numpy",
    directory: Annotated[
        Path | None,
        typer.Option("--dir", help="Where to create the app (default: ./NAME)."),
    ] = None,
) -> None:
    """Create a new app from a template; it runs as generated with `pollinate run NAME`."""
    if framework not in FRAMEWORKS:
        raise fail(
            f"--framework {framework!r} is not one of {', '.join(FRAMEWORKS)}.\n"
            "Hint: pollinate new my-app --framework pytorch"
        )
    package = _package_name(name)
    target = directory if directory is not None else Path(name)
    if target.exists() and any(target.iterdir()):
        raise fail(
            f"{target} exists and is not empty; pollinate new never overwrites files.\n"
            "Hint: choose another NAME, or --dir for another place"
        )
    written = write_app(target, name, package, framework)
    console.print(f"Created {name} ({framework}) in {target}: {len(written)} files.")
    console.print(f"Run it in simulation:  pollinate run {target}")


def write_app(target: Path, name: str, package: str, framework: str) -> list[Path]:
    """Render the templates of ``framework`` into ``target``; returns the files written."""
    spec = FRAMEWORKS[framework]
    values = {
        "name": name,
        "package": package,
        "framework": framework,
        "dependencies": ", ".join(f'"{d}"' for d in spec.dependencies),
        "learning_rate": repr(spec.learning_rate),
    }
    files = {**_templates("common"), **_templates(framework)}  # the framework's own win
    written = []
    for relative, text in sorted(files.items()):
        path = target / relative.replace("PACKAGE", package)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_render(text, values))
        written.append(path)
    return written


def _templates(group: str) -> dict[str, str]:
    """``{path in the app: template text}``; package files go under ``PACKAGE/``."""
    root = resources.files("pollinate.cli") / "templates" / group
    out = {}
    for item in root.iterdir():
        stem = item.name.removesuffix(".tmpl")
        top_level = stem in ("pyproject.toml", "README.md")
        out[stem if top_level else f"PACKAGE/{stem}"] = item.read_text()
    return out


def _render(text: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        text = text.replace("{{" + key + "}}", value)
    left = re.search(r"\{\{\w+\}\}", text)
    if left:  # a template bug, not the user's: say so plainly
        raise RuntimeError(f"template placeholder {left.group()} has no value")
    return text


def _package_name(name: str) -> str:
    if not _NAME.match(name):
        raise fail(
            f"{name!r} cannot name an app: use letters, digits, '-' and '_', starting with a "
            "letter.\nHint: pollinate new my-app"
        )
    package = name.replace("-", "_").lower()
    taken = {"pollinate", "test", "tests", "numpy", "torch", "keras", "jax", "flax", "optax"}
    taken |= {"sklearn", "xgboost", "datasets", "data", "task"}
    if keyword.iskeyword(package) or package in taken:
        raise fail(f"{name!r} would shadow a Python name; choose another.\nHint: my-{name}")
    return package
