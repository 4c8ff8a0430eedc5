"""The error tree is whole and true: every public exception derives from PollinateError and is
drawn in ``pollinate.errors``'s docstring, under the class it derives from."""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pollinate.errors
from pollinate.errors import PollinateError

SRC = Path(pollinate.errors.__file__).resolve().parent
GENERATED = ("fleet_pb2",)


def module_names() -> list[str]:
    names = []
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        if parts[-1] == "__main__" or any(g in parts[-1] for g in GENERATED):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def exception_classes() -> dict[str, type[BaseException]]:
    """Every exception class pollinate defines, by name (names are unique across modules)."""
    found: dict[str, type[BaseException]] = {}
    for name in module_names():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                assert found.setdefault(value.__name__, value) is value, value.__name__
    return found


def is_public(cls: type) -> bool:
    return not any(part.startswith("_") for part in [*cls.__module__.split("."), cls.__name__])


def drawn_tree() -> dict[str, tuple[str | None, str]]:
    """Each class drawn in the docstring: (its drawn parent, the module named before its
    description, or "errors" when none is)."""
    assert pollinate.errors.__doc__ is not None
    drawn: dict[str, tuple[str | None, str]] = {}
    stack: list[tuple[int, str]] = []
    line = re.compile(r"^(?P<indent>[ │├└─]*)(?P<name>[A-Z]\w+)(?: \(\w+\))?(?P<rest>.*)$")
    block = pollinate.errors.__doc__.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    for text in (raw.removeprefix("    ") for raw in block.splitlines()):
        match = line.match(text)
        if not match:
            continue
        depth = len(match["indent"])
        while stack and stack[-1][0] >= depth:
            stack.pop()
        where = re.match(r"\s+([a-z_.]+):", match["rest"])
        drawn[match["name"]] = (stack[-1][1] if stack else None, where[1] if where else "errors")
        stack.append((depth, match["name"]))
    return drawn


def test_the_tree_has_one_root() -> None:
    roots = [name for name, (parent, _) in drawn_tree().items() if parent is None]
    assert roots == ["PollinateError"]


def test_every_public_exception_is_drawn() -> None:
    public = {name for name, cls in exception_classes().items() if is_public(cls)}
    assert public - drawn_tree().keys() == set()


def test_every_public_exception_derives_from_pollinate_error() -> None:
    classes = exception_classes()
    strays = [
        n for n, cls in classes.items() if is_public(cls) and not issubclass(cls, PollinateError)
    ]
    assert strays == []


def test_the_drawing_is_true() -> None:
    """Each drawn class exists in the module drawn beside it and derives from its drawn
    parent (the tree cannot go stale when a class moves or changes base)."""
    classes = exception_classes()
    for name, (parent, where) in drawn_tree().items():
        cls = classes[name]
        assert cls.__module__ == f"pollinate.{where}", name
        if parent is not None:
            assert issubclass(cls, classes[parent]), f"{name} is drawn under {parent}"
