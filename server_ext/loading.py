"""Model loads that yield the CPU to the models serving beside them.

A rollout loads a new version while the old one serves: on a small machine the new instances'
start (onnxruntime sessions, the catalog, an index) competes with the serving instances for the
same cores, and a request queued behind a starved instance can pass its queue timeout (measured on
2 cores at concurrency 4: one such stall in about half of the rollouts, every queued request of
the moment refused; docs/benchmarks/rollout.md). `load_yielding` runs a model's initialisation on
a thread of the lowest CPU priority (nice 19, per thread on Linux), so the serving instances keep
the cores and the load takes what they leave; alone on the machine (a server's start) it runs at
full speed.

A thread created during the load inherits its priority for good (an unprivileged process cannot
raise it again), so libraries that start threads when imported are imported here, on the calling
thread, first (onnxruntime); tests/server_ext/test_serving.py checks that no stub keeps a thread
at low priority after its load.
"""

from __future__ import annotations

import importlib
import os
import threading
from typing import Callable, TypeVar

T = TypeVar("T")

LOAD_NICE = 19  # the lowest priority: the load runs on the cycles the serving instances leave
PRELOAD = ("numpy", "onnxruntime")  # start threads at import: imported at normal priority, before the load


def load_yielding(make: Callable[[], T], preload: tuple[str, ...] = PRELOAD) -> T:
    """`make()` run on a thread at nice LOAD_NICE; its result, or its exception re-raised here.
    Where the priority cannot be set, `make` runs at the caller's."""
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError:  # not installed where it is not needed (a BLS-only image)
            pass
    out: dict[str, object] = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOAD_NICE)  # this thread only (Linux)
        except OSError:
            pass
        try:
            out["value"] = make()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller as it is
            out["error"] = exc

    t = threading.Thread(target=run, name="freshrec-model-load")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]  # type: ignore[misc]
    return out["value"]  # type: ignore[return-value]
