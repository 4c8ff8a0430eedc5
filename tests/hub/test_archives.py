"""Apps at the hub: an uploaded archive is unpacked safely and hashes to the app it claims."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from pollinate.app import app_hash
from pollinate.errors import AppError
from pollinate.hub import archives as apps_module
from pollinate.hub.archives import pack_app, unpack
from tests.deployment.apps import write_tiny_app

PYPROJECT = b'[tool.pollinate]\nserver = "m:s"\nclient = "m:c"\n'


def zip_of(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


# --- unpacking an uploaded archive ------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil.py", "/tmp/evil.py", "pkg/../../evil.py"])
def test_unpack_refuses_a_path_that_escapes_the_target(tmp_path: Path, name: str) -> None:
    archive = zip_of({"pyproject.toml": PYPROJECT, name: b"print('owned')"})
    with pytest.raises(AppError, match=f"unsafe path '{name}'"):
        unpack(archive, tmp_path / "apps" / "x")
    assert not any(p.name == "evil.py" for p in tmp_path.rglob("*"))


def test_unpack_refuses_an_archive_without_pyproject_at_its_top(tmp_path: Path) -> None:
    archive = zip_of({"app/pyproject.toml": PYPROJECT, "app/m.py": b""})
    with pytest.raises(AppError, match="no pyproject.toml at its top"):
        unpack(archive, tmp_path / "x")


def test_unpack_refuses_what_is_not_a_zip(tmp_path: Path) -> None:
    with pytest.raises(AppError, match="not a valid zip file"):
        unpack(b"PK\x03\x04 but not really", tmp_path / "x")


def test_unpack_refuses_an_archive_that_unpacks_too_large(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(apps_module, "MAX_UNPACKED_BYTES", 1000)
    archive = zip_of({"pyproject.toml": PYPROJECT, "big.py": b"#" * 2000})
    assert len(archive) < 1000  # small on the wire, large on disk
    with pytest.raises(AppError, match=r"unpacks to \d+ bytes; the limit is 1000"):
        unpack(archive, tmp_path / "x")


def test_a_packed_app_unpacks_to_the_same_app_hash(tmp_path: Path) -> None:
    app = write_tiny_app(tmp_path / "app")
    (app / "tiny_app" / "__pycache__").mkdir()
    (app / "tiny_app" / "__pycache__" / "junk.py").write_text("not part of the app")
    root = unpack(pack_app(app), tmp_path / "apps" / "digest")
    assert app_hash(root) == app_hash(app)
    assert not (root / "tiny_app" / "__pycache__").exists()
    assert unpack(pack_app(app), tmp_path / "apps" / "digest") == root  # unpacked once
