"""What the CPU offers: feature flags, model name and physical cores, read from /proc/cpuinfo.

Quantization picks its kernels by these flags, onnxruntime's optimised graph is only valid on a
CPU with the same ones, and decoding runs one thread per physical core.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

# The flags that decide which matrix kernels onnxruntime can use (benchmarks print them).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> str:
    """/proc/cpuinfo, read once ("" where there is none)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _first(key: str) -> str | None:
    """The value of the first `key: value` line of /proc/cpuinfo (None when absent)."""
    for line in _cpuinfo().splitlines():
        name, _, value = line.partition(":")
        if name.strip() == key:
            return value.strip()
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags (e.g. "avx512_vnni"); empty where /proc/cpuinfo is missing."""
    return set((_first("flags") or "").split())


def vector_flags() -> list[str]:
    """The `VECTOR_FLAGS` this CPU has, in that order."""
    flags = cpu_flags()
    return [flag for flag in VECTOR_FLAGS if flag in flags]


def cpu_model() -> str:
    """The CPU's model name ("unknown CPU" where /proc/cpuinfo does not say)."""
    return _first("model name") or "unknown CPU"


def usable_cpus() -> int:
    """Logical CPUs this process may run on (its affinity mask where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores available to this process: hyper-threads only slow memory-bound decoding."""
    available = usable_cpus()
    cores, physical = set(), "0"
    for line in _cpuinfo().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            physical = value.strip()
        elif key == "core id":
            cores.add((physical, value.strip()))
    return max(1, min(available, len(cores) or available))
