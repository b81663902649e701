"""Triton's statistics between two reads (serving/stats.py)."""

from __future__ import annotations

import pytest

from freshrec.offline.benchmarks.serving import stats


def test_stats_delta_overhead_and_models_without_traffic() -> None:
    z = {"requests": 0, "executions": 0, "request_ns": 0, "queue_ns": 0, "compute_input_ns": 0, "compute_infer_ns": 0,
         "compute_output_ns": 0, "failures": 0}  # fmt: skip
    before = {"a": dict(z), "b": dict(z)}
    after = {"a": {**z, "requests": 10, "executions": 5, "request_ns": 10_000_000, "queue_ns": 1_000_000, "compute_input_ns": 500_000,
                   "compute_infer_ns": 7_000_000, "compute_output_ns": 500_000}, "b": dict(z)}  # fmt: skip
    d = stats.stats_delta(before, after)
    assert set(d) == {"a"}
    a = d["a"]
    assert a["avg_batch"] == 2.0 and a["request_ms"] == pytest.approx(1.0) and a["queue_ms"] == pytest.approx(0.1)
    assert a["overhead_ms"] == pytest.approx(0.1) and a["queue_plus_overhead_ms"] == pytest.approx(0.2)
