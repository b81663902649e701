"""`freshrec bench gpu`: the prepared GPU check (freshrec/offline/benchmarks/gpu.py), through the
command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freshrec.cli import main


def test_the_gpu_check_stops_on_a_host_without_a_gpu(tmp_path: Path) -> None:
    """On this CPU machine the prepared GPU script stops at its first step and says why."""
    assert main(["bench", "gpu", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "out")]) == 1
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert report["host"]["gpu_visible"] is False and "unmeasured" in report["verdict"]
    assert list(report["steps"]) == ["host checked", "stopped"]


@pytest.mark.integration
def test_the_gpu_check_rehearsed_on_the_cpu_runs_every_step(tiny_build, tmp_path: Path) -> None:
    """`freshrec bench gpu --device cpu`: export, catalog, path check and sweep all run
    (so a GPU host's scarce minutes are not lost to a broken step), and nothing claims GPU figures."""
    work = tmp_path / "w"
    argv = ["bench", "gpu", "--build", str(tiny_build["build_dir"]), "--work", str(work), "--device", "cpu", "--catalog-items", "3000",
            "--minilm-limit", "100", "--concurrency", "1", "--requests", "40"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((work / "rehearsal" / "gpu_check.json").read_text())
    assert list(report["steps"]) == ["host checked", "CPU repository", "catalog", "path checked", "sweep done"]
    assert "recommend_0_0 (CPU device 0)" in report["gpu_path"]["instances"] and report["gpu_path"]["instances_on_gpu"] == []
    assert len(report["first_recommend_items"]) == 10
    assert 0 < report["targets"]["c1_p99_ms"] < 1000 and report["targets"]["best_throughput_p99_le_60ms"] > 0
    assert report["verdict"].startswith("rehearsed on the CPU")
    summary = json.loads((work / "rehearsal" / "summary.json").read_text())
    assert summary["results"]["recommend"]["1"]["requests"] == 40
    assert summary["device"] == "cpu" and "**GPU**: unmeasured" in (work / "rehearsal" / "serving.md").read_text()
