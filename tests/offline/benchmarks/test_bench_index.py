"""`freshrec bench index` (freshrec/offline/benchmarks/index.py): a seconds-long run on random
vectors, through the command."""

from __future__ import annotations

import json
from pathlib import Path

from freshrec.cli import main


def test_bench_index_tiny(tmp_path: Path) -> None:
    assert main(["bench", "index", "--sizes", "3000", "--queries", "40", "--source", "random", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "index.json").read_text())
    assert report["machine"]["cpus"] >= 1 and report["libraries"]["usearch"]
    rows = report["results"]
    assert {r["method"] for r in rows} >= {"exact_served", "sq8_scan", "usearch_hnsw", "faiss_hnsw", "faiss_ivf"}
    for r in rows:
        assert r["n_items"] == 3000
        assert 0.0 < r["recall_at_200"] <= 1.0
        assert 0.0 < r["p50_ms"] <= r["p99_ms"] < 1000.0
        assert r["build_s"] >= 0.0 and r["memory_bytes"] >= 0
        if r["method"].startswith("exact"):
            assert r["recall_at_200"] == 1.0
    assert max(r["recall_at_200"] for r in rows if r["method"] == "usearch_hnsw") >= 0.9
    assert (tmp_path / "index.md").read_text().startswith("# ") and (tmp_path / "index_latency.png").stat().st_size > 0
    # The report names the command that reruns it; --render rewrites the page from index.json alone.
    assert report["commands"] == ["freshrec bench index --sizes 3000 --queries 40 --source random"]
    (tmp_path / "index.md").unlink()
    assert main(["bench", "index", "--render", "--out", str(tmp_path)]) == 0
    assert "`freshrec bench index --sizes 3000 --queries 40 --source random`" in (tmp_path / "index.md").read_text()
