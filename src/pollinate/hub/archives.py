"""Apps at the hub: uploaded archives, unpacked safely, checked and loaded in isolation."""

from __future__ import annotations

import importlib
import io
import os
import secrets
import shutil
import sys
import threading
import zipfile
from pathlib import Path

from pollinate.app import App, app_hash, load_app
from pollinate.errors import AppError

MAX_ARCHIVE_BYTES = 64 << 20
MAX_UNPACKED_BYTES = 256 << 20


def load_archive(archive: bytes, apps: Path, digest: str, overrides: dict[str, str]) -> App:
    """Unpack ``archive`` (stored under ``digest``) below ``apps`` and load it; AppError if
    it is unusable."""
    return load_isolated(unpack(archive, apps / digest), apps, overrides)


def check_archive(archive: bytes, declared_hash: str, apps: Path, digest: str) -> str:
    """Unpack the archive and check that it holds the app it claims; returns the app hash."""
    if len(archive) > MAX_ARCHIVE_BYTES:
        raise AppError(f"app archive is {len(archive)} bytes; the limit is {MAX_ARCHIVE_BYTES}")
    actual = app_hash(unpack(archive, apps / digest))
    if actual != declared_hash:
        raise AppError(f"app archive hashes to {actual[:12]}, not {declared_hash[:12]}")
    return actual


def unpack(archive: bytes, target: Path) -> Path:
    """Extract a zip of an app directory; refuses paths that would escape ``target``."""
    try:
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            names = zf.namelist()
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:
                    raise AppError(f"app archive holds an unsafe path {name!r}")
            if "pyproject.toml" not in names:
                raise AppError("app archive has no pyproject.toml at its top")
            unpacked = sum(info.file_size for info in zf.infolist())
            if unpacked > MAX_UNPACKED_BYTES:
                raise AppError(
                    f"app archive unpacks to {unpacked} bytes; the limit is {MAX_UNPACKED_BYTES}"
                )
            root = target / "app"
            if not root.exists():
                partial = target / f"partial-{secrets.token_hex(4)}"
                try:
                    zf.extractall(partial)
                except OSError:
                    shutil.rmtree(partial, ignore_errors=True)  # no half-unpacked app stays
                    raise
                try:
                    partial.rename(root)
                except OSError:
                    if not root.exists():
                        raise
                    shutil.rmtree(partial)  # the same app, unpacked by a concurrent submit
            return root
    except zipfile.BadZipFile as exc:
        raise AppError(f"app archive is not a valid zip file: {exc}") from None


_IMPORTS = threading.Lock()


def load_isolated(root: Path, apps: Path, overrides: dict[str, str]) -> App:
    """``load_app``, after forgetting the modules and import path of every other app here.

    Two versions of one app share module names (``mypkg.server``) and Python caches modules
    by name: without this, a hub that ran version 1 would run version 1's code for version 2.
    A run already going keeps the module objects it holds.
    """
    root, apps = root.resolve(), apps.resolve()
    with _IMPORTS:
        for name, module in list(sys.modules.items()):
            where = _module_paths(module)
            if any(_inside(w, apps) and not _inside(w, root) for w in where):
                del sys.modules[name]
        sys.path[:] = [p for p in sys.path if not _inside(p, apps) or p == str(root)]
        importlib.invalidate_caches()
        return load_app(root, overrides)


def _module_paths(module: object) -> list[object]:
    paths = getattr(module, "__path__", None)
    try:
        return [getattr(module, "__file__", None), *(paths or [])]
    except TypeError:  # a module with an odd __path__ is no app's package
        return []


def _inside(path: object, directory: Path) -> bool:
    # app modules were imported from resolved roots (load_app resolves), so prefixes suffice
    return isinstance(path, str) and path.startswith(f"{directory}{os.sep}")


def pack_app(path: str | Path) -> bytes:
    """Zip an app directory (pyproject.toml and Python files) for submission to a hub."""
    root = Path(path).resolve()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted([root / "pyproject.toml", *root.rglob("*.py")]):
            if file.is_file() and "__pycache__" not in file.parts:
                zf.write(file, str(file.relative_to(root)))
    return buffer.getvalue()
