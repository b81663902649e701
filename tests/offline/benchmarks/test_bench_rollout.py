"""`freshrec bench rollout --smoke` through the command (freshrec/offline/benchmarks/rollout.py):
its own server on private copies of the tiny build, the update, a rollout and a failing rollout
under perf_analyzer load, and a report with every figure. What is checked is that it ran and
reported, not how fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from freshrec.cli import main


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


@pytest.mark.integration
def test_bench_rollout_smoke_writes_its_report(tiny_build, tmp_path: Path) -> None:
    repo = Path(tiny_build["repositories"]["embedded"])
    out, work = tmp_path / "docs", tmp_path / "work"
    rc = main(["bench", "rollout", "--smoke", "--build", str(tiny_build["build_dir"]), "--repository", str(repo),
               "--work", str(work), "--out", str(out), "--tolerance", "1"])  # fmt: skip
    assert rc == 0
    r = json.loads((out / "rollout.json").read_text())
    md = (out / "rollout.md").read_text()

    # the shared build is untouched: the versions were written into the private copy
    assert not (repo / "recommend" / "2").exists() and (work / "repo" / "recommend" / "3").is_dir()
    assert r["events_added"]["events"] > 0 and r["update"]["version"] == 2 and r["update"]["gate"]["passed"]
    assert _number(r["update"]["seconds"]) and _number(r["update_to_serving_s"]) and _number(r["first_rollout_s"])

    # every phase measured, with both failure counts
    for phase in ("warmup", "steady", "steady_after", "rollout_phase"):
        p = r[phase]
        assert p["requests"] > 0 and _number(p["p50_ms"]) and _number(p["p99_ms"]) and _number(p["throughput"]), phase
        assert _number(p["triton"]["success"]) and _number(p["triton"]["failures"]) and _number(p["perf_analyzer_failed_requests"]), phase
        assert p["segments"] and all(s["outcome"] for s in p["segments"]), phase

    # the steps: a rollout that serves version 2, a failing one that leaves it serving
    steps = r["rollouts"]
    assert [s["expected"] for s in steps] == ["served", "RolloutError"]
    assert [s["outcome"] for s in steps] == ["served", "RolloutError"] and all(s["as_expected"] for s in steps)
    assert [s["served_after"] for s in steps] == [[2], [2]] and r["final_recommend_versions"] == [2]
    assert "was not served" in steps[1]["error"]
    for s in steps:
        assert s["end_wall_ns"] > s["start_wall_ns"] and s["end_mono"] > s["start_mono"]
        assert s["window_end_mono"] >= s["end_mono"] and _number(s["lost_to_aborts"]) and "during_call" in s
        # latencies are there unless every perf_analyzer run of the window aborted (its latencies are lost; counted)
        assert (s["requests"] > 0 and _number(s["p99_ms"]) and _number(s["p99_ratio"])) or s["lost_to_aborts"] > 0
        assert _number(s["triton"]["failures"]) and _number(s["perf_analyzer_failed_requests"])
        assert s["failed_requests"] == max(s["triton"]["failures"], s["perf_analyzer_failed_requests"])
    aw = r["all_rollout_windows"]
    assert aw["requests"] == sum(s["requests"] for s in steps) > 0 and _number(aw["p99_ratio"]) and _number(aw["triton_failures"])
    assert 0 < r["rollout_phase"]["perf_analyzer_running_share"] <= 1
    assert _number(r["rollout_phase"]["outside_windows"]["failures"]) and _number(aw["triton_success"])

    # targets, machine, the commands that rerun it
    assert len(r["targets"]) == 2 * len(steps) + 2 and all(isinstance(t["met"], bool) for t in r["targets"])
    assert r["machine"]["cores"] and r["perf_analyzer"]["version"].startswith("perf-analyzer==2.60.0")
    assert r["commands"][0].startswith("freshrec bench rollout ") and "--smoke" in r["commands"][0]
    assert any(c.startswith("perf_analyzer -m recommend -i grpc") and "--profile-export-file" in c for c in r["commands"])
    assert any(c.startswith("freshrec rollback ") for c in r["commands"])
    for text in ("## Targets", "## Update", "## Failed requests and latency per phase", "## Rerun", "all rollout windows",
                 "rollout to 2", "failing rollout to 3", "perf_analyzer 2.60 then aborts"):  # fmt: skip
        assert text in md, text
