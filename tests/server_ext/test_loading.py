"""load_yielding: a model's initialisation on a thread of the lowest CPU priority."""

from __future__ import annotations

import os
import threading

import pytest

from freshrec.server_ext.loading import LOAD_NICE, load_yielding


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_the_load_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() -> None:
    before = _nice()
    inside = load_yielding(lambda: (_nice(), threading.current_thread().name))
    assert inside == (LOAD_NICE, "freshrec-model-load")
    assert _nice() == before


def test_a_failed_load_raises_its_own_exception_in_the_caller() -> None:
    class LoadFailed(RuntimeError):
        pass

    def make():
        raise LoadFailed("model.onnx: Protobuf parsing failed")

    with pytest.raises(LoadFailed, match="Protobuf parsing failed"):
        load_yielding(make)
