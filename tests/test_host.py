"""The one host probe (dgf/host.py): cores, memory a container may still use, CPU flags."""
from __future__ import annotations

from pathlib import Path

import pytest

from dgf import host


@pytest.fixture
def machine(tmp_path: Path, monkeypatch) -> Path:
    """/proc/meminfo, /proc/cpuinfo and a cgroup folder the probe reads, under tmp_path."""
    (tmp_path / "meminfo").write_text("MemTotal: 16000000 kB\nMemAvailable: 8000000 kB\n")
    (tmp_path / "cgroup").mkdir()
    monkeypatch.setattr(host, "_MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(host, "_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(host, "_CPUINFO", tmp_path / "cpuinfo")
    return tmp_path


def test_available_memory_is_capped_by_a_cgroup_limit(machine: Path) -> None:
    assert host.available_memory() == 8_000_000 * 1024  # no cgroup files: the machine's
    (machine / "cgroup" / "memory.max").write_text("max\n")
    (machine / "cgroup" / "memory.current").write_text("5000\n")
    assert host.available_memory() == 8_000_000 * 1024  # no limit set
    (machine / "cgroup" / "memory.max").write_text(f"{3 << 30}\n")
    (machine / "cgroup" / "memory.current").write_text(f"{1 << 30}\n")
    assert host.available_memory() == 2 << 30  # the container's room, below the machine's
    (machine / "meminfo").write_text(f"MemAvailable: {1 << 20} kB\n")
    assert host.available_memory() == 1 << 30  # the machine's, below the container's


def test_available_memory_without_meminfo_falls_back_to_free_pages(machine: Path,
                                                                   monkeypatch) -> None:
    (machine / "meminfo").unlink()
    monkeypatch.setattr(host.os, "sysconf",
                        lambda name: {"SC_AVPHYS_PAGES": 1000, "SC_PAGE_SIZE": 4096}[name])
    assert host.available_memory() == 4_096_000

    def unknown(name):
        raise ValueError(name)

    monkeypatch.setattr(host.os, "sysconf", unknown)
    assert host.available_memory() is None


def test_cpu_flags_read_x86_and_arm_lines(machine: Path) -> None:
    assert host.cpu_flags() == set()  # unreadable: no flags
    (machine / "cpuinfo").write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert host.cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
    (machine / "cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert host.cpu_flags() == {"fp", "asimd", "bf16"}


def test_cores_follow_the_affinity_mask(monkeypatch) -> None:
    monkeypatch.setattr(host.os, "sched_getaffinity", lambda pid: {0, 3}, raising=False)
    assert host.cores() == 2
    monkeypatch.delattr(host.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(host.os, "cpu_count", lambda: 6)
    assert host.cores() == 6
