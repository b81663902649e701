"""The issue's targets, the Markdown report and the plots (serving/targets.py, markdown.py,
report.py, plots.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from freshrec.offline.benchmarks.serving.markdown import render_md
from freshrec.offline.benchmarks.serving.report import write_docs
from freshrec.offline.benchmarks.serving.targets import targets


def test_targets_and_report_render(tmp_path: Path) -> None:
    def run(model: str, c: int, p50: float, p99: float, thr: float, server: dict) -> dict[str, Any]:
        return {"model": model, "concurrency": c, "requests": 10, "throughput": thr, "throughput_perf_analyzer": thr, "p50_ms": p50,
                "p90_ms": p99, "p95_ms": p99, "p99_ms": p99, "server": server, "command": f"perf_analyzer -m {model}"}  # fmt: skip

    srv = {"requests": 10, "avg_batch": 1.0, "request_ms": 1.15, "queue_ms": 0.1, "compute_input_ms": 0.0, "compute_infer_ms": 1.0, "compute_output_ms": 0.0,
           "overhead_ms": 0.05, "queue_plus_overhead_ms": 0.15}  # fmt: skip
    summary = {
        "date_utc": "2026-11-28 12:00", "seconds": 1.0, "smoke": True, "repository": "r", "catalog_items_served": 1682, "index": "exact",
        "machine": {"cpu": "x", "cores": 2, "ram_gib": 1.0, "os": "o", "kernel": "k", "glibc": "2.36", "python": "3.11",
                    "tritonserver": "2.51", "onnxruntime": "1", "torch": "2", "load_average_at_start": [0.0, 0.0, 0.0]},
        "perf_analyzer": {"version": "2.60.0"},
        "results": {
            "recommend": {"1": run("recommend", 1, 5.0, 15.0, 150.0, {"recommend": srv, "user_tower": {**srv, "queue_plus_overhead_ms": 0.5}}),
                          "4": run("recommend", 4, 20.0, 70.0, 180.0, {})},
            "ingest_events": {"1": run("ingest_events", 1, 1.0, 6.0, 500.0, {"ingest_events": srv})},
        },
    }  # fmt: skip
    t = {x["target"]: x for x in targets(summary)}
    assert t["recommend concurrency 1 p50 <= 8 ms"]["met"] and t["recommend concurrency 1 p99 <= 20 ms"]["met"]
    assert t[">= 100 recommendations/s with p99 <= 60 ms"]["measured"] == 150.0  # c=4 is over 60 ms p99
    assert not t["ingest_events p99 <= 5 ms (one event)"]["met"]
    assert not t["Triton queue + overhead <= 0.3 ms at concurrency 1: user_tower (inside recommend)"]["met"]
    assert t["Triton queue + overhead <= 0.3 ms at concurrency 1: recommend"]["met"]
    write_docs(summary, tmp_path, log=lambda _m: None)
    md = (tmp_path / "serving.md").read_text()
    assert "perf_analyzer -m recommend" in md and "| recommend | 4 |" in md
    assert (tmp_path / "serving_latency_throughput.png").stat().st_size > 1000
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["recommend"]["1"]["p99_ms"] == 15.0
    assert "**GPU**: unmeasured. No GPU was available" in md
    # The GPU line says what was served: a GPU repository on a GPU, or CPU figures beside an idle GPU.
    gpu = {**summary, "machine": {**summary["machine"], "gpu": "NVIDIA H200"}}
    assert "**GPU**: served on NVIDIA H200 (instance groups KIND_GPU" in render_md({**gpu, "device": "gpu"})
    assert "instance groups are KIND_CPU: CPU figures" in render_md({**gpu, "device": "cpu"})
