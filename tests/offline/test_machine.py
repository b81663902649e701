"""The machine facts the evaluation and the benchmarks record (freshrec/offline/machine.py)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from freshrec.offline import machine


def test_readers_on_this_machine() -> None:
    assert machine.cpu_name().strip()
    if sys.platform.startswith("linux"):
        assert machine.ram_bytes() > 2**28  # more than 256 MiB
        assert 2**20 < machine.rss_bytes() < machine.ram_bytes()
        assert machine.rss_bytes(os.getpid()) > 0
    assert machine.os_name()
    glibc = machine.glibc_version()
    assert glibc is None or glibc >= (2, 17)
    assert machine.dist_version("numpy") == np.__version__
    assert machine.dist_version("no-such-distribution-here") is None


def test_rss_of_a_process_that_is_gone_raises() -> None:
    """server_memory skips processes that exited between listing and reading."""
    with pytest.raises(OSError):
        machine.rss_bytes(2**22 + 12345)  # above Linux's pid_max default


def test_the_serving_record_has_what_the_report_reads() -> None:
    info = machine.machine_info()
    for key in ("cpu", "cores", "ram_gib", "os", "kernel", "glibc", "python", "tritonserver", "onnxruntime", "torch",
                "load_average_at_start", "gpu"):  # fmt: skip
        assert key in info, key
    assert info["cores"] == os.cpu_count() and len(info["load_average_at_start"]) == 3
    assert info["ram_gib"] == round(machine.ram_bytes() / 2**30, 1)
