"""`freshrec bench serving` end to end (serving/orchestrate.py): its own server on the tiny build,
runs/, serving.md, summary.json, inputs kept for reruns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.mark.integration
def test_bench_smoke_end_to_end_writes_docs(tiny_build, tmp_path: Path) -> None:
    """`freshrec bench serving --smoke --only recommend,ingest_events`: its own server, runs/,
    serving.md with the command lines, summary.json with every figure, inputs kept for reruns."""
    from freshrec.offline.benchmarks.serving import BenchOptions, bench

    out = tmp_path / "docs"
    run = bench(BenchOptions(build=tiny_build["build_dir"], out=out, smoke=True, only=("recommend", "ingest_events")), log=lambda _m: None)
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["results"]) == {"recommend", "ingest_events"}
    for label in ("recommend", "ingest_events"):
        r = summary["results"][label]["1"]
        assert r["throughput"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0
    assert run["writes"]["events_stored"] == 40  # every ingest request stored a new event
    assert summary["index_recall"] == 1.0  # read from the server's freshrec_index_recall: the exact scan here
    assert summary["machine"]["cores"] and summary["perf_analyzer"]["version"].startswith("perf-analyzer==2.60.0")
    md = (out / "serving.md").read_text()
    assert "perf_analyzer -m recommend -i grpc" in md and "--bls-composing-models" not in md  # embedded: in-process towers
    assert "Where a recommendation's time goes" in md and "freshrec_stage_latency_seconds" in md
    assert (out / "inputs" / "main" / "recommend.json").exists() and (out / "inputs" / "main" / "ingest_events.c1.json").exists()
    assert any(t["target"].startswith("Triton queue + overhead") for t in summary["targets"])
    mb = summary["results"]["recommend"]["1"]["machine_bursts"]  # the jitter probe watched the run
    assert mb["requests"] == 40 and mb["probe_samples"] >= 10 and 0 <= mb["slowest_1pct_in_bursts"] <= mb["slowest_1pct"] == 1
    assert "## The machine's slow bursts" in md
