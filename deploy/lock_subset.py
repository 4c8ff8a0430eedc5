"""Print the part of a pip-compile lock that some of its packages need, hashes included.

    python3 deploy/lock_subset.py requirements/test.txt torch > torch.txt
    pip install --require-hashes --no-deps -r torch.txt

The image installs pollinate's runtime from requirements/demo.txt and a framework extra (torch)
from requirements/test.txt, the lock CI tests with, so it gets exactly the versions and hashes
CI tested. A package belongs to the subset when it is a root or when a package of the subset
needs it, read from the lock's ``# via`` notes (pip-compile writes who needs each package).
Standard library only: it runs in the image's builder stage, before anything is installed.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def blocks(text: str) -> dict[str, tuple[str, set[str]]]:
    """Each package of the lock: its lines, and the packages that need it (``# via``)."""
    found: dict[str, tuple[str, set[str]]] = {}
    name, lines, needed_by = "", [], set()
    for line in [*text.splitlines(), "end=="]:
        match = REQUIREMENT.match(line)
        if match:
            if name:
                found[name] = ("\n".join(lines), needed_by)
            name, lines, needed_by = canonical(match.group(1)), [line], set()
        elif name and line.startswith("    --hash"):
            lines.append(line)
        elif name and line.lstrip().startswith("#"):
            via = line.strip().lstrip("#").strip().removeprefix("via").strip()
            if via and not via.startswith("-r ") and " (" not in via:
                needed_by.add(canonical(via.split("[")[0]))
    return found


def subset(text: str, roots: list[str]) -> str:
    """The lock's lines for ``roots`` and every package they need, in the lock's order."""
    lock = blocks(text)
    missing = [root for root in roots if canonical(root) not in lock]
    if missing:
        raise SystemExit(f"not in the lock: {', '.join(missing)}")
    chosen = {canonical(root) for root in roots}
    while True:
        more = {name for name, (_, by) in lock.items() if by & chosen} - chosen
        if not more:
            break
        chosen |= more
    return "\n".join(lines for name, (lines, _) in lock.items() if name in chosen) + "\n"


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: lock_subset.py LOCK PACKAGE...")
    sys.stdout.write(subset(Path(sys.argv[1]).read_text(), sys.argv[2:]))


if __name__ == "__main__":
    main()
