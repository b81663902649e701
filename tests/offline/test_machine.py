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
    with pytest.raises(OSError):
        machine.pss_bytes(2**22 + 12345)


def test_proportional_memory_counts_a_shared_mapping_once(tmp_path) -> None:
    """A file two processes map counts whole in each resident set and half in each Pss."""
    import mmap
    import subprocess
    import sys

    size = 64 * 2**20
    path = tmp_path / "shared"
    path.write_bytes(b"\1" * size)
    child = subprocess.Popen([sys.executable, "-c", "import mmap,sys\nf=open(sys.argv[1],'rb')\n"
                              "m=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)\nsum(m[i] for i in range(0,len(m),4096))\n"
                              "print('ok',flush=True)\nsys.stdin.read()", str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "ok"
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            before_rss, before_pss = machine.rss_bytes(), machine.pss_bytes()
            sum(m[i] for i in range(0, len(m), 4096))  # touch every page
            grew_rss, grew_pss = machine.rss_bytes() - before_rss, machine.pss_bytes() - before_pss
        assert 0.9 * size <= grew_rss <= 1.1 * size
        assert 0.4 * size <= grew_pss <= 0.6 * size  # half of it: the child maps the same pages
    finally:
        child.communicate("")


def test_the_serving_record_has_what_the_report_reads() -> None:
    info = machine.machine_info()
    for key in ("cpu", "cores", "ram_gib", "os", "kernel", "glibc", "python", "tritonserver", "onnxruntime", "torch",
                "load_average_at_start", "gpu"):  # fmt: skip
        assert key in info, key
    assert info["cores"] == os.cpu_count() and len(info["load_average_at_start"]) == 3
    assert info["ram_gib"] == round(machine.ram_bytes() / 2**30, 1)
