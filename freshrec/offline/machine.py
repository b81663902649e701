"""Facts about the machine a benchmark or an evaluation ran on, read in one place: the CPU, memory,
a process's resident set and proportional memory, the OS, the C library, installed versions and the GPU.

Each report keeps its own keys (they are in committed JSON files); the readers are shared.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any


def cpu_name() -> str:
    """The CPU model ("model name" in /proc/cpuinfo; elsewhere what `platform` says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _kib(path: Path, key: str) -> int:
    """The kB figure of the line `key` in a /proc file (meminfo, status); 0 if absent."""
    for line in path.read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return 0


def ram_bytes() -> int:
    """Total memory (MemTotal), 0 where /proc/meminfo cannot be read."""
    try:
        return _kib(Path("/proc/meminfo"), "MemTotal:") * 1024
    except OSError:
        return 0


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (VmRSS); OSError if the process is gone."""
    return _kib(Path(f"/proc/{pid}/status"), "VmRSS:") * 1024


def pss_bytes(pid: int | str = "self") -> int:
    """Proportional memory of a process (Pss in smaps_rollup): its own pages plus its share of
    pages mapped by several processes (a file every instance maps counts once over them, not
    once in each as in the resident set); OSError if the process is gone."""
    return _kib(Path(f"/proc/{pid}/smaps_rollup"), "Pss:") * 1024


def os_name() -> str:
    """The distribution's PRETTY_NAME (/etc/os-release), else `platform.platform()`."""
    name = platform.platform()
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                name = line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return name


def glibc_version() -> tuple[int, int] | None:
    """(major, minor) of the running C library if it is glibc, else None."""
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # e.g. "glibc 2.36"
    except (ValueError, OSError, AttributeError):
        return None
    if name != "glibc":
        return None
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def dist_version(dist: str) -> str | None:
    """The installed version of a distribution (e.g. "nvidia-pytriton"), None if it is not installed."""
    import importlib.metadata as md

    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def gpu_name() -> str | None:
    """The first CUDA device torch sees, None without one."""
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - informational only
        return None


def machine_info() -> dict[str, Any]:
    """The serving benchmark's machine record: hardware, OS, the serving stack's versions and the
    load average now (the start of a run)."""
    info = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "ram_gib": round(ram_bytes() / 2**30, 1),
        "os": os_name(),
        "kernel": platform.release(),
        "glibc": ".".join(map(str, glibc_version() or ())) or None,
        "python": platform.python_version(),
        "nvidia_pytriton": dist_version("nvidia-pytriton"),
        "tritonserver": "2.51.0 (inside nvidia-pytriton 0.7.0)" if dist_version("nvidia-pytriton") == "0.7.0" else None,
        "onnxruntime": dist_version("onnxruntime"),
        "torch": dist_version("torch"),
        "numpy": dist_version("numpy"),
        "load_average_at_start": list(os.getloadavg()),
    }
    info["gpu"] = gpu_name()
    return info
