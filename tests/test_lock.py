"""The committed lock satisfies pyproject.toml: `make demo` and `make test` install what it says.

pyproject.toml keeps ranges (for `pip install pollinate`); requirements/*.txt pin one version
of each with hashes (for our environments). A range changed without `make lock` fails here,
not on a fresh machine.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
PIN = re.compile(r"^([A-Za-z0-9._-]+)==(\S+) \\$", re.MULTILINE)
LOCKS = {"test.txt": "test", "demo.txt": "examples"}


def pins(lock: str) -> dict[str, Version]:
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(name): Version(version) for name, version in PIN.findall(text)}


def requirements(extra: str) -> list[Requirement]:
    specs = PROJECT["dependencies"] + PROJECT["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(("lock", "extra"), LOCKS.items())
def test_the_lock_pins_every_requirement_inside_its_range(lock: str, extra: str) -> None:
    pinned = pins(lock)
    for requirement in requirements(extra):
        version = pinned.get(canonicalize_name(requirement.name))
        assert version is not None, f"{requirement.name} is not in {lock}: run `make lock`"
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{lock} pins {requirement.name}=={version}, outside {requirement}: run `make lock`"
        )


def test_every_pin_carries_a_hash() -> None:
    for lock in LOCKS:
        text = (ROOT / "requirements" / lock).read_text()
        blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n\n", 1)[1])
        assert blocks and all("--hash=sha256:" in block for block in blocks if "==" in block)


def test_demo_and_test_locks_agree_where_they_overlap() -> None:
    demo, test = pins("demo.txt"), pins("test.txt")
    assert {name: demo[name] for name in demo} == {name: test[name] for name in demo}
