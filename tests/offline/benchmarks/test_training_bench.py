"""`freshrec bench training`'s arithmetic and page (the builds it times are tested in tests/training)."""

from __future__ import annotations

import json
from pathlib import Path

from freshrec.offline.benchmarks.training import render, seed_spread, targets

ROOT = Path(__file__).resolve().parents[3]


def _run(n: int, retrieval: float, two_stage: float, training_s: float) -> dict:
    return {"processes": n, "threads_per_process": 2 if n == 1 else 1, "wall_s": training_s + 80, "training_s": training_s,
            "build_s": training_s + 75, "command": f"python -m freshrec.cli build  # {n}",
            "test": {"retrieval_10": {"ndcg": retrieval, "hr": 0.19}, "rerank_10": {"ndcg": two_stage, "hr": 0.2}}}  # fmt: skip


def test_targets_say_where_each_run_falls() -> None:
    spread = {"retrieval_10": {"seeds": [0, 1, 2], "values": [0.09, 0.087, 0.092]},
              "rerank_10": {"seeds": [0, 1, 2], "values": [0.10, 0.09, 0.095]}}  # fmt: skip
    result = {"runs": [_run(1, 0.09, 0.1, 400.0), _run(2, 0.093, 0.095, 500.0), _run(4, 0.08, 0.1, 300.0)], "seed_spread_one_process": spread}
    got = [(t["target"][:14], t["target"].split()[2], t["where"], t["met"]) for t in targets(result)]
    assert got == [("2 processes: r", "retrieval_10", "above", False), ("2 processes: r", "rerank_10", "inside", True),
                   ("4 processes: r", "retrieval_10", "below", False), ("4 processes: r", "rerank_10", "inside", True)]  # fmt: skip
    assert targets({**result, "seed_spread_one_process": None}) == []  # tiny or subsampled runs: no committed spread to compare


def test_the_committed_page_is_what_its_figures_give() -> None:
    out = ROOT / "docs" / "benchmarks"
    result = json.loads((out / "training.json").read_text())
    assert result["targets"] == targets(result)
    assert (out / "training.md").read_text() == render(result)
    assert [r["processes"] for r in result["runs"]] == [1, 2] and result["runs"][1]["distributed"] == {"processes": 2, "backend": "gloo"}
    assert seed_spread(ROOT / "docs" / "results" / "parts" / "loo.json") == result["seed_spread_one_process"]  # the committed evaluation's
