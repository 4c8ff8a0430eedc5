"""Arrays in a NumPy ``.npz`` file, written whole and read safely (``Arrays.save``/``load``).

The format is NumPy's own (``numpy.lib.format``): a ZIP archive holding one ``NAME.npy``
member per array, in the model's order, stored uncompressed. Any NumPy reads it
(``np.load(path)``, with its default ``allow_pickle=False``), and ``read_npz`` also reads
files that ``np.savez`` or ``np.savez_compressed`` wrote.

A file may come from anyone (a colleague, a download, a hub): ``read_npz`` never unpickles,
checks each member's header (dtype one of those allowed, a shape whose size matches the
member's) before it allocates anything, and bounds the total size and the number of arrays,
so a hostile file is refused with ``ValueError``, not a crash or a memory blow-up. It knows
plain arrays only, so ``records.py`` can build on it.
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import IO, cast

import numpy as np

from pollinate.text import inert, name_problem

MAX_BYTES = 16 << 30
"""The most array bytes ``read_npz`` reads by default (16 GiB); pass ``max_bytes``."""
MAX_ARRAYS = 100_000
"""The most arrays (ZIP members) ``read_npz`` reads from one file."""
_HEADER_BYTES = 64 << 10  # numpy writes headers under 4 KiB; a longer one is not numpy's


def write_npz(arrays: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Write ``arrays`` to ``path`` whole or not at all; returns the path."""
    target = Path(path)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
            for name, array in arrays.items():
                with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


def read_npz(
    path: str | Path,
    dtypes: Collection[str],
    *,
    max_bytes: int = MAX_BYTES,
    max_arrays: int = MAX_ARRAYS,
) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` file at ``path``, in its order; ValueError if the file is
    not one, holds a dtype not named in ``dtypes``, or more than ``max_bytes`` of arrays or
    more than ``max_arrays`` arrays."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = _checked_members(archive, path, max_bytes, max_arrays)
            return {m.filename[: -len(".npy")]: _read(archive, m, path, dtypes) for m in members}
    except zipfile.BadZipFile as exc:
        raise ValueError(_not_npz(path, str(exc))) from None


def _checked_members(
    archive: zipfile.ZipFile, path: str | Path, max_bytes: int, max_arrays: int
) -> list[zipfile.ZipInfo]:
    """The archive's members, refused before any is read if they are too many or too big
    (their sizes as the archive declares them: reading never yields more, ``zipfile``
    stops there)."""
    members = archive.infolist()
    if len(members) > max_arrays:
        raise ValueError(f"{path}: {len(members)} arrays, more than max_arrays={max_arrays}")
    total = sum(m.file_size for m in members)
    if total > max_bytes:
        raise ValueError(
            f"{path}: {total} bytes of arrays, more than max_bytes={max_bytes}.\n"
            f"Hint: Arrays.load(path, max_bytes={total}) if you trust the file"
        )
    for member in members:
        name = member.filename
        problem = name_problem(name[:-4]) if name.endswith(".npy") else "does not end in .npy"
        if problem is not None:
            raise ValueError(_not_npz(path, f"member {inert(repr(name), 80)} {problem}"))
    if len({m.filename for m in members}) != len(members):
        raise ValueError(_not_npz(path, "two arrays have the same name"))
    return members


def _read(
    archive: zipfile.ZipFile, member: zipfile.ZipInfo, path: str | Path, dtypes: Collection[str]
) -> np.ndarray:
    """One ``.npy`` member, its header checked against its size before the data is read."""
    with archive.open(member) as stream:
        shape, fortran, dtype = _header(stream, member.filename, path, dtypes)
        size = math.prod(shape) * dtype.itemsize  # exact: a hostile shape cannot wrap
        held = member.file_size - stream.tell()
        if size != held:
            why = f"{member.filename!r} declares {size} bytes of data and holds {held}"
            raise ValueError(_not_npz(path, why))
        data = bytearray(size)  # writable, unlike the bytes read() returns
        if cast(zipfile.ZipExtFile, stream).readinto(data) != size:
            raise ValueError(_not_npz(path, f"{member.filename!r} ends early"))
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(dtype.newbyteorder("="), copy=False)


def _header(
    stream: IO[bytes], name: str, path: str | Path, dtypes: Collection[str]
) -> tuple[tuple[int, ...], bool, np.dtype[np.generic]]:
    try:
        version = np.lib.format.read_magic(stream)
        read = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }.get(version)
        if read is None:
            raise ValueError(f"npy format version {version}")
        shape, fortran, dtype = read(stream, max_header_size=_HEADER_BYTES)
    except ValueError as exc:
        raise ValueError(_not_npz(path, f"{name!r}: {inert(str(exc), 200)}")) from None
    if dtype.name not in dtypes or dtype.kind not in "biufc" or dtype.hasobject:
        raise ValueError(
            _not_npz(path, f"{name!r} has dtype {dtype}; allowed: {', '.join(dtypes)}")
        )
    return shape, fortran, dtype


def _not_npz(path: str | Path, why: str) -> str:
    return (
        f"{path} is not a model file pollinate reads: {why}.\n"
        "Hint: write one with arrays.save('model.npz') or "
        "np.savez('model.npz', **arrays)"
    )
