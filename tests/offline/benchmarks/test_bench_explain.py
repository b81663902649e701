"""`freshrec bench explain` runs through the command on the tiny build and writes its report
(how fast is not checked here: docs/benchmarks/explain.md holds the measured figures)."""

from __future__ import annotations

import json
from pathlib import Path

from freshrec.cli import main


def test_bench_explain_writes_both_sides_and_the_fit_time(tiny_build, tmp_path):
    repo = Path(tiny_build["repositories"]["embedded"])
    assert main(["bench", "explain", "--build", str(tiny_build["build_dir"]), "--repository", str(repo),
                 "--calls", "4", "--out", str(tmp_path)]) == 0  # fmt: skip
    report = json.loads((tmp_path / "explain.json").read_text())
    assert report["latency"]["with"]["calls"] == report["latency"]["without"]["calls"] == 4
    assert report["ratio_p50"] > 0 and report["explanation_bytes"]["median"] > 0
    assert report["topics"]["n_topics"] == 4 and report["topics"]["fit_seconds"] > 0
    text = (tmp_path / "explain.md").read_text()
    assert "| with explanation |" in text and "| without explanation |" in text
