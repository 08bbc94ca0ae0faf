"""What this machine gives a process, probed in one place: the CPU cores it may run
on, the memory it can still allocate (a container's cgroup limit included), the
CPU's feature flags, and the accelerator (:func:`device_description`). No
TensorFlow; every reader of these facts asks here (the GPUs TensorFlow sees are
listed by :func:`dgf.runtime.gpu_models` and passed in).
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

_MEMINFO = Path("/proc/meminfo")
_CGROUP = Path("/sys/fs/cgroup")  # cgroup v2: memory.max and memory.current
_CPUINFO = Path("/proc/cpuinfo")


def size_text(n_bytes: float) -> str:
    """A number of bytes as the messages write it, in the largest binary unit that
    shows it with a digit before the point: ``"1.5 GiB"``, ``"812.0 MiB"``,
    ``"40.0 KiB"``, ``"512 bytes"`` (a small disk is not "0.0 GiB")."""
    for power, unit in ((3, "GiB"), (2, "MiB"), (1, "KiB")):
        if n_bytes >= 1024 ** power:
            return f"{n_bytes / 1024 ** power:.1f} {unit}"
    return f"{int(n_bytes)} bytes"


def cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def device_description(gpu_models: Sequence[str]) -> dict[str, Any]:
    """What a measured speed depends on besides the CPU's model and flags: the
    accelerator (each GPU model with its count, ``"2 x NVIDIA H100 80GB HBM3"``, or
    ``"none"``) and the CPU cores this process may run on. ``gpu_models``: the model
    name of each GPU TensorFlow sees (:func:`dgf.runtime.gpu_models`)."""
    counts = sorted(Counter(gpu_models).items())
    accelerator = " + ".join(f"{n} x {name}" for name, n in counts) or "none"
    return {"accelerator": accelerator, "cpu_cores": cores()}


def _mem_available() -> int | None:
    """MemAvailable of /proc/meminfo, else the free physical pages; None if neither."""
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory limit leaves (limit - current); None without a limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((_CGROUP / "memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_memory() -> int | None:
    """Bytes this process can still allocate: the machine's available memory, capped
    by a cgroup v2 memory limit (containers); None where neither can be read."""
    found = [n for n in (_mem_available(), _cgroup_room()) if n is not None]
    return min(found) if found else None


def _cpuinfo_field(keys: tuple[str, ...], cpuinfo: Path | None = None) -> str | None:
    """The first value of one of ``keys`` in /proc/cpuinfo; None where it cannot be read."""
    try:
        text = (cpuinfo or _CPUINFO).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_flags(cpuinfo: Path | None = None) -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (``flags`` on x86, ``Features`` on Arm);
    empty where it cannot be read."""
    return set((_cpuinfo_field(("flags", "Features"), cpuinfo) or "").split())


def cpu_model(cpuinfo: Path | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (``model name`` on x86, ``CPU part`` on
    Arm); "" where it cannot be read."""
    return _cpuinfo_field(("model name", "Model", "CPU part"), cpuinfo) or ""
