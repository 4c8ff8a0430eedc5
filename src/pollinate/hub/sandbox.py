"""Landlock: a run process takes away its own access to every file it does not need.

Linux's Landlock (kernel 5.13+) lets an unprivileged process restrict itself, for good and
for its children too: after ``restrict`` the process can read only the paths it was given as
read-only, write only those given as read-write, and (ABI 4+) neither connect nor bind a TCP
socket; (ABI 6+) it cannot signal processes outside its domain nor reach their abstract unix
sockets. The hub calls nothing here: each run process (``run_process.py``) restricts itself
before it imports its app, so the app's code never sees the hub's data dir, CA key, database
or other runs.

Three system calls, over ctypes (the numbers are the same on every Linux architecture)::

    int landlock_create_ruleset(const struct landlock_ruleset_attr *attr, size_t size,
                                __u32 flags);                                    // 444
    int landlock_add_rule(int ruleset_fd, enum landlock_rule_type type,
                          const void *rule_attr, __u32 flags);                   // 445
    int landlock_restrict_self(int ruleset_fd, __u32 flags);                     // 446

    struct landlock_ruleset_attr {      // what the ruleset handles: handled = denied
        __u64 handled_access_fs;        //   unless a rule allows it
        __u64 handled_access_net;       // ABI 4+
        __u64 scoped;                   // ABI 6+
    };
    struct landlock_path_beneath_attr { // rule type 1: access beneath a directory (or to
        __u64 allowed_access;           //   one file), opened O_PATH
        __s32 parent_fd;
    } __attribute__((packed));

``landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`` returns the kernel's ABI
version. ``landlock_restrict_self`` needs ``prctl(PR_SET_NO_NEW_PRIVS, 1)`` first (or
CAP_SYS_ADMIN): a restricted process can never regain privileges through a setuid binary.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable
from pathlib import Path

from pollinate.errors import PollinateError

_CREATE_RULESET, _ADD_RULE, _RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# LANDLOCK_ACCESS_FS_*, by the ABI that introduced them
_EXECUTE, _WRITE_FILE, _READ_FILE, _READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_ABI1_FS = (1 << 13) - 1  # EXECUTE .. MAKE_SYM: the 13 rights of ABI 1
_REFER, _TRUNCATE, _IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15  # ABI 2, 3, 5
_FILE_RIGHTS = _EXECUTE | _WRITE_FILE | _READ_FILE | _TRUNCATE | _IOCTL_DEV  # for a file rule
_NET_BIND_TCP, _NET_CONNECT_TCP = 1 << 0, 1 << 1  # LANDLOCK_ACCESS_NET_*, ABI 4
_SCOPE_ABSTRACT_UNIX_SOCKET, _SCOPE_SIGNAL = 1 << 0, 1 << 1  # LANDLOCK_SCOPE_*, ABI 6

READ_ONLY = _EXECUTE | _READ_FILE | _READ_DIR


class SandboxUnavailable(PollinateError):
    """This kernel (or platform) has no usable Landlock: the process stays unrestricted."""


class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError as exc:  # not a platform with a C library we can call into
        raise SandboxUnavailable(f"no C library to call Landlock through: {exc}") from None


def abi() -> int:
    """The kernel's Landlock ABI version; SandboxUnavailable if it has none."""
    if not os.uname().sysname == "Linux":
        raise SandboxUnavailable(f"Landlock is Linux's; this is {os.uname().sysname}")
    libc = _libc()
    version = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    if version < 1:
        code = ctypes.get_errno()
        raise SandboxUnavailable(
            f"this kernel has no Landlock ({os.strerror(code)}): Linux 5.13+ with "
            "CONFIG_SECURITY_LANDLOCK and landlock in the lsm= boot list"
        )
    return int(version)


def _fs_rights(version: int) -> int:
    rights = _ABI1_FS
    if version >= 2:
        rights |= _REFER
    if version >= 3:
        rights |= _TRUNCATE
    if version >= 5:
        rights |= _IOCTL_DEV
    return rights


def restrict(read_only: Iterable[Path], read_write: Iterable[Path]) -> int:
    """Restrict this process (and its future children) to reading ``read_only`` and reading
    and writing ``read_write`` (directories: everything beneath them), with no TCP and no
    signals out of the domain where the kernel can do that. Paths that do not exist are
    skipped. Returns the ABI used; SandboxUnavailable (nothing restricted) if there is none.
    Irreversible."""
    version = abi()
    libc = _libc()
    handled = _fs_rights(version)
    attr = _RulesetAttr(handled_access_fs=handled)
    if version >= 4:
        attr.handled_access_net = _NET_BIND_TCP | _NET_CONNECT_TCP  # no rule: no TCP at all
    if version >= 6:
        attr.scoped = _SCOPE_ABSTRACT_UNIX_SOCKET | _SCOPE_SIGNAL
    size = ctypes.sizeof(_RulesetAttr) if version >= 6 else (16 if version >= 4 else 8)
    ruleset = libc.syscall(_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise _error("landlock_create_ruleset")
    try:
        for path in read_only:
            _allow(libc, ruleset, path, READ_ONLY)
        for path in read_write:
            _allow(libc, ruleset, path, handled)
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("prctl(PR_SET_NO_NEW_PRIVS)")
        if libc.syscall(_RESTRICT_SELF, ruleset, 0) != 0:
            raise _error("landlock_restrict_self")
    finally:
        os.close(ruleset)
    return version


def _allow(libc: ctypes.CDLL, ruleset: int, path: Path, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    try:
        if not path.is_dir():
            access &= _FILE_RIGHTS  # directory rights on a file rule are EINVAL
        rule = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        if libc.syscall(_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
            raise _error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _error(call: str) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call} failed: {os.strerror(code)}")
