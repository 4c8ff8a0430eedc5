"""Bytes handed to another process in a sealed memfd: written once, mapped, never copied.

A message for another process (``channel.py``) is written into an anonymous memory file and
sealed: no one, its writer included, can write to it, grow it or shrink it again. The
receiver checks the seals before it maps the file, so a hostile sender can neither change
the bytes once they are checked nor cut the file short under the reader (which would kill it
with SIGBUS on the next read).

The mapping is made through libc, not ``mmap.mmap``, which keeps a duplicate of the file
descriptor for as long as the mapping lives (Python < 3.13): a run that holds a thousand
updates would hold a thousand descriptors. Here the descriptor is closed at once and the
mapping goes when the last view of it does. It is private and copy-on-write, so a stray
write costs a page, not the process, and the view handed out is read-only.

A trusted sender may hand over a plain file instead (``map_file``: the hub gives its run
process each reply as the journal wrote it, so the bytes are not copied again); only a
receiver that trusts its peer maps one, since nothing stops the sender from truncating it.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import stat
import weakref
from collections.abc import Iterable

from pollinate.errors import PollinateError

SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = (
    ctypes.c_void_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_int,
    ctypes.c_long,
)
_libc.munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_MAP_FAILED = ctypes.c_void_p(-1).value


class SealedError(PollinateError, ValueError):
    """A descriptor that is not a sealed memfd of the size it was said to be."""


def write_sealed(pieces: Iterable[memoryview]) -> int:
    """A new memfd holding ``pieces`` one after the other, sealed; the caller closes it."""
    fd = os.memfd_create("pollinate-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        for piece in pieces:
            while piece:
                piece = piece[os.write(fd, piece) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def map_sealed(fd: int, size: int) -> memoryview:
    """A read-only view of the ``size`` bytes in memfd ``fd``, once it is checked to be
    sealed and of that size; else SealedError. The caller still closes ``fd``."""
    try:
        seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
        actual = os.fstat(fd).st_size
    except OSError as exc:  # not a memfd: a file, a pipe, a socket
        raise SealedError(f"not a sealed memory file ({exc.strerror})") from None
    if seals & SEALS != SEALS:
        raise SealedError("a memory file its sender could still change")
    if actual != size or size <= 0:
        raise SealedError(f"a memory file of {actual} bytes, said to be {size}")
    return _map(fd, size)


def map_file(fd: int, size: int) -> memoryview:
    """A read-only view of the ``size`` bytes of the plain file ``fd`` (from a trusted
    sender: see the module's docstring); else SealedError. The caller still closes ``fd``."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_size != size or size <= 0:
        raise SealedError(f"not a file of {size} bytes")
    return _map(fd, size)


def _map(fd: int, size: int) -> memoryview:
    flags = mmap.PROT_READ | mmap.PROT_WRITE
    address = _libc.mmap(None, size, flags, mmap.MAP_PRIVATE, fd, 0)
    if address in (None, _MAP_FAILED):
        raise SealedError(f"cannot map it: {os.strerror(ctypes.get_errno())}")
    memory = (ctypes.c_char * size).from_address(address)
    unmap = weakref.finalize(memory, _libc.munmap, address, size)
    unmap.atexit = False  # at exit, views may still be read: the kernel unmaps it after
    return memoryview(memory).cast("B").toreadonly()
