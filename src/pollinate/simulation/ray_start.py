"""Starting Ray on this machine, bound to loopback, or joining a cluster, for ``RayGrid``.

A Ray that pollinate starts listens on 127.0.0.1 only, with no dashboard and no usage stats
(``LOOPBACK``, set before Ray is imported); nothing is installed at run time. The app's own
package (a directory that is not installed) travels to the cluster's machines through Ray's
object store (``py_modules``), so workers import the app as this process does.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from pollinate.errors import RunError

LOOPBACK = {
    # Ray on Linux swaps 127.0.0.1 for the host's address and listens on every interface;
    # as on macOS, single-node mode keeps its node address, so its servers, loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
"""The environment of a Ray started here (values already set win: told otherwise)."""

LOCAL_START: dict[str, Any] = {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}


def connect(address: str | None, app: list[str]) -> tuple[Any, bool]:
    """Ray, joined to the cluster at ``address`` or started here on loopback, with the
    ``app`` packages for its workers; and whether this call started the connection (``close``
    then ends it). A process already connected keeps its connection, and its workers must
    find the app by themselves (``ray.init(runtime_env={"py_modules": [...]})``)."""
    here = address is None or address.rpartition(":")[0] in ("127.0.0.1", "localhost")
    for name, value in LOOPBACK.items():
        if here or name == "RAY_USAGE_STATS_ENABLED":
            os.environ.setdefault(name, value)  # read by Ray as it is imported
    try:
        ray: Any = importlib.import_module("ray")  # not typed here: its stubs are partial
    except ImportError:
        raise RunError(
            "the Ray engine needs Ray, which is not installed.\nHint: pip install 'pollinate[ray]'"
        ) from None
    if ray.is_initialized():
        return ray, False
    if address is None:
        _check_loopback(ray)
    where = {"address": address} if address else {"address": "local", **LOCAL_START}
    try:
        # the library never prints: Ray's log and its workers' output stay in Ray's logs
        ray.init(
            **where,
            runtime_env={"py_modules": app} if app else None,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise RunError(
            f"could not reach Ray at {address!r}: {exc}\nHint: start a cluster with `ray "
            "start --head --port=6379` and pass the address it prints, or leave --address "
            "out to start Ray on this machine"
        ) from None
    return ray, True


def _check_loopback(ray: Any) -> None:
    """Refuse a local start that Ray would expose on every interface."""
    from ray._private import ray_constants  # where Ray keeps what it read at import

    if ray_constants.ENABLE_RAY_CLUSTER:
        raise RunError(
            "Ray was imported before pollinate could keep it on 127.0.0.1, and would listen "
            "on every interface of this machine.\nHint: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
            "=0 before importing ray, or start a cluster and pass its address"
        )


def app_packages(*functions: Callable[..., Any] | None) -> list[str]:
    """The directories of the packages that define ``functions`` and are not installed
    (an app directory's): Ray copies them to every machine of the cluster (``py_modules``,
    through its own object store), so that workers import the app as this process does."""
    installed = tuple({sys.prefix, sys.base_prefix, sys.exec_prefix})
    found = []
    for function in functions:
        top = (getattr(function, "__module__", None) or "").partition(".")[0]
        package = sys.modules.get(top)
        where = os.path.abspath(getattr(package, "__file__", None) or installed[0])
        if top != "pollinate" and where.endswith("__init__.py") and not where.startswith(installed):
            found.append(os.path.dirname(where))
    return sorted(set(found))
