"""CPU facts read from /proc/cpuinfo: flags pick kernels, cores set threads."""

from __future__ import annotations

import os

from mtnsails.core.cpu import VECTOR_FLAGS, cpu_flags, cpu_model, physical_cores, vector_flags


def test_facts_come_from_cpuinfo_where_there_is_one():
    if not os.path.exists("/proc/cpuinfo"):
        assert cpu_flags() == set() and cpu_model() == "unknown CPU"
        return
    text = open("/proc/cpuinfo").read()
    assert cpu_model() in text and all(flag in text for flag in cpu_flags())
    assert set(vector_flags()) == cpu_flags() & set(VECTOR_FLAGS)


def test_physical_cores_never_exceed_the_cpus_this_process_may_use():
    assert 1 <= physical_cores() <= len(os.sched_getaffinity(0))
