"""What a node has to offer, detected at its start: the resources placement selects on.

``detect_resources()`` reads the machine (CPU cores, memory, OS, architecture, Python,
pollinate and installed ML framework versions, and GPUs through NVIDIA's management library,
``pynvml``, when it is importable: none otherwise). Every value is a name a selector can spell
(``placement.label_problem``): ``gpu_model=NVIDIA-A100-SXM4-40GB``. What cannot be detected
(a GPU behind a library we do not read, a licence, a dataset) is stated by hand with
``pollinate node --resources gpus=2``, which overrides what was detected.

``utilisation()`` is what changes while the node runs, read again for every heartbeat: the
CPU load per core, the memory available, and the first GPU's use and memory in use.

>>> resources = detect_resources()
>>> int(resources["cpus"]) >= 1 and float(resources["memory_gib"]) > 0
True
>>> 0 <= float(utilisation()["cpu_load"])
True
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import os
import platform
import re
from typing import Any

log = logging.getLogger("pollinate.node")

FRAMEWORKS = ("torch", "tensorflow", "jax", "scikit-learn", "xgboost")
"""Distributions whose versions a node reports (as ``torch=2.5.1``) when installed."""

_UNSPELLABLE = re.compile(r"[^A-Za-z0-9_./-]+")


def detect_resources() -> dict[str, str]:
    """The machine's resources as placement sees them; GPUs are ``gpus=0`` unless NVIDIA's
    management library finds some."""
    resources = {
        "cpus": str(_cpus()),
        "memory_gib": f"{_memory_bytes() / 2**30:.1f}",
        "os": platform.system() or "unknown",
        "arch": platform.machine() or "unknown",
        "python": platform.python_version(),
        "pollinate": _version("pollinate") or "unknown",
    }
    for framework in FRAMEWORKS:
        if version := _version(framework):
            resources[framework] = version
    resources.update(_gpus())
    return {key: _spellable(value) for key, value in resources.items()}


def utilisation() -> dict[str, str]:
    """Live use of the node's machine: ``cpu_load`` (the 1-minute load average per core),
    ``memory_available_gib`` and, with NVIDIA's library and a GPU, ``gpu_utilisation``
    (percent) and ``gpu_memory_used_gib``. Each as placement can compare it
    (``memory_available_gib>=4``)."""
    live = {"cpu_load": f"{os.getloadavg()[0] / _cpus():.2f}"}
    if (available := _memory_available_bytes()) is not None:
        live["memory_available_gib"] = f"{available / 2**30:.1f}"
    live.update(_gpu_use())
    return live


def _memory_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux): what new work can use without swapping."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gpu_use() -> dict[str, str]:
    try:
        nvml: Any = importlib.import_module("pynvml")
        nvml.nvmlInit()
    except Exception:  # no library, no driver: no GPU to report on
        return {}
    try:
        if int(nvml.nvmlDeviceGetCount()) == 0:
            return {}
        first = nvml.nvmlDeviceGetHandleByIndex(0)
        use = nvml.nvmlDeviceGetUtilizationRates(first).gpu
        used = nvml.nvmlDeviceGetMemoryInfo(first).used
        return {"gpu_utilisation": str(int(use)), "gpu_memory_used_gib": f"{used / 2**30:.1f}"}
    except Exception as exc:
        log.debug("could not read the GPU's use: %s", exc)
        return {}
    finally:
        nvml.nvmlShutdown()


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this process may use
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _memory_bytes() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _gpus() -> dict[str, str]:
    """``gpus`` (a count) and, if there are any, the first one's model and memory."""
    try:
        nvml: Any = importlib.import_module("pynvml")
    except ImportError:
        return {"gpus": "0"}
    try:
        nvml.nvmlInit()
    except Exception as exc:  # no driver, no device: the library says so in its own way
        log.info("no GPU found through NVIDIA's management library: %s", exc)
        return {"gpus": "0"}
    try:
        count = int(nvml.nvmlDeviceGetCount())
        if count == 0:
            return {"gpus": "0"}
        first = nvml.nvmlDeviceGetHandleByIndex(0)
        name = nvml.nvmlDeviceGetName(first)
        memory = nvml.nvmlDeviceGetMemoryInfo(first).total
        return {
            "gpus": str(count),
            "gpu_model": name.decode() if isinstance(name, bytes) else str(name),
            "gpu_memory_gib": f"{memory / 2**30:.1f}",
        }
    except Exception as exc:
        log.warning("could not read the GPUs through NVIDIA's management library: %s", exc)
        return {"gpus": "0"}
    finally:
        nvml.nvmlShutdown()


def _spellable(value: str) -> str:
    """``value`` with every run of characters a selector cannot spell made one ``-``."""
    return _UNSPELLABLE.sub("-", value).strip("-")[:256] or "unknown"
